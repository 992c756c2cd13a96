"""Cancellation in the Python SDK: cancel frames, pw.Canceled, SIGUSR1.

Like test_procfleet_worker, every test runs a real worker subprocess and
speaks protocol v1 over its pipes. Run from the repository root:

    python3 -m unittest discover -s worker/python -v
"""

import os
import signal
import tempfile
import textwrap
import time
import unittest

from test_procfleet_worker import TIMEOUT, WorkerTestCase

CANCEL_WORKER = textwrap.dedent(
    r'''
    import os, sys, time
    sys.path.insert(0, os.environ["SDK_DIR"])
    import procfleet_worker as pw

    @pw.handler("loop")
    def loop(payload, session):
        # Reports progress until canceled; keeps a count in the session.
        session.state["loops"] = session.state.get("loops", 0) + 1
        i = 0
        while True:
            pw.progress({"i": i})
            i += 1
            time.sleep(0.01)

    @pw.handler("state")
    def state(payload, session):
        return {"loops": session.state.get("loops", 0), "pid": os.getpid()}

    @pw.handler("sleep")
    def sleep(payload, session):
        try:
            time.sleep(payload)
        finally:
            session.state["cleaned"] = True
        return "slept"

    @pw.handler("nap")
    def nap(payload, session):
        # sleep, once it has said it started.
        pw.progress("started")
        time.sleep(payload)
        return "slept"

    @pw.handler("read")
    def read(payload, session):
        pw.progress("started")
        r, w = os.pipe()
        try:
            return os.read(r, 1).decode()  # nobody ever writes
        finally:
            os.close(r)
            os.close(w)

    @pw.handler("spin")
    def spin(payload, session):
        pw.progress("started")
        # Never sleeps nor reports progress again: only polls.
        while True:
            pw.check_canceled()

    @pw.handler("stubborn")
    def stubborn(payload, session):
        pw.progress("started")
        try:
            time.sleep(payload)
        except pw.Canceled:
            return "finished anyway"
        return "slept"

    @pw.handler("swallow")
    def swallow(payload, session):
        pw.progress("started")
        # A broad except Exception must not swallow a cancel.
        try:
            time.sleep(payload)
        except Exception:
            return "swallowed"
        return "slept"

    @pw.handler("deaf_cleanup")
    def deaf_cleanup(payload, session):
        # Drops SIGUSR1 while it reports progress, so that the cancel is
        # raised by progress() itself; then cleans up for 0.3 s with the
        # SDK's handler back, while the agent goes on signaling.
        import signal
        sdk = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            pw.progress("started")
            while True:
                time.sleep(0.005)
                pw.progress("again")
        finally:
            signal.signal(signal.SIGUSR1, sdk)
            time.sleep(0.3)
            session.state["cleaned"] = True

    @pw.handler("deaf_sleep")
    def deaf_sleep(payload, session):
        # Drops SIGUSR1 while it says it started and a little after, then
        # blocks with the SDK's handler back: only a signal sent again
        # interrupts it.
        import signal
        sdk = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            pw.progress("started")
            time.sleep(0.3)
        finally:
            signal.signal(signal.SIGUSR1, sdk)
        time.sleep(payload)
        return "slept"

    @pw.handler("cleaned")
    def cleaned(payload, session):
        return session.state.get("cleaned", False)

    @pw.handler("poll_once")
    def poll_once(payload, session):
        # A thread of the handler polls for a cancel once, and its read of
        # the pipe is slow (see slow_pump): the handler ends meanwhile, and
        # the next call, sent at once, is what that thread reads.
        import threading
        if pw.default_worker._io:
            slow_pumps.set()
            t = threading.Thread(target=pw.check_canceled)
            t.start()
            if not pumping.wait(5):
                return "the thread never read"
        return "ok"

    import threading
    pumping = threading.Event()
    slow_pumps = threading.Event()  # set by poll_once only
    fast_pump = pw._Frames.pump

    def slow_pump(self, block):
        # Only a handler's thread's read, not a reader thread's.
        if slow_pumps.is_set() and pw.default_worker._io and threading.current_thread() is not threading.main_thread():
            pumping.set()
            time.sleep(0.3)
        return fast_pump(self, block)

    pw._Frames.pump = slow_pump

    @pw.handler("helper_progress")
    def helper_progress(payload, session):
        # A thread of the handler reports progress while the main thread's
        # own progress() is writing its frame, and returns after it; then
        # the main thread blocks until canceled.
        import threading
        w = pw.default_worker
        real = w._write
        helper_writing = threading.Event()
        main_done = threading.Event()

        def write(body, *key):
            if threading.current_thread() is threading.main_thread():
                if not helper_writing.is_set():
                    helper.start()
                    helper_writing.wait(5)
            else:
                helper_writing.set()
                main_done.wait(5)
            return real(body, *key)

        helper = threading.Thread(target=pw.progress, args=("helper",))
        w._write = write
        try:
            pw.progress("main")
            main_done.set()
            helper.join()
        finally:
            del w._write
        pw.progress("started")
        time.sleep(payload)
        return "slept"

    @pw.handler("threads_progress")
    def threads_progress(payload, session):
        # Two threads of the handler report progress at once, each frame
        # larger than the pipe holds.
        import threading

        def report(tag):
            for i in range(payload["n"]):
                pw.progress({"t": tag, "i": i, "blob": tag * payload["size"]})

        ts = [threading.Thread(target=report, args=(tag,)) for tag in "ab"]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return "done"

    @pw.handler("fork_check")
    def fork_check(payload, session):
        # A forked child of the handler polls for a cancel for a while;
        # the frames the agent sends meanwhile are still this process's.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.write(w, b"x")
                end = time.monotonic() + payload
                while time.monotonic() < end:
                    pw.check_canceled()
                    time.sleep(0.005)
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
        pw.progress("forked")
        os.waitpid(pid, 0)
        return "ok"

    @pw.handler("echo")
    def echo(payload, session):
        return payload

    if __name__ == "__main__":
        pw.run()
    '''
)


class CancelTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls._dir = tempfile.TemporaryDirectory()
        cls.script = os.path.join(cls._dir.name, "cancel_worker.py")
        with open(cls.script, "w") as f:
            f.write(CANCEL_WORKER)

    @classmethod
    def tearDownClass(cls):
        cls._dir.cleanup()

    def call_then_cancel(self, w, cid, command, payload, session="s", after=0.3):
        """Start call cid, wait until it runs, cancel it; return the result
        frame and the seconds from the cancel to it. A handler that says it
        started (a first progress frame) is running, and after more time
        to block; a cancel before it started would end the call before the
        handler, whatever it does, on a machine slow to start it."""
        w.send({"type": "call", "id": cid, "command": command, "payload": payload, "session": session})
        if command in ("loop", "read", "spin", "stubborn", "swallow", "nap", "deaf_cleanup", "deaf_sleep"):
            first = w.recv()
            self.assertEqual(first["type"], "progress", first)
        if command != "loop":
            time.sleep(after)  # let the handler block; the result is what is checked
        start = time.monotonic()
        answered = self.send_cancel(w, cid)
        while True:
            msg = w.recv()
            if msg["type"] != "progress":
                answered()
                return msg, time.monotonic() - start

    def assertCanceled(self, msg, cid):
        self.assertEqual(msg["type"], "result", msg)
        self.assertEqual(msg["id"], cid, msg)
        self.assertIs(msg["ok"], False, msg)
        self.assertEqual(msg["error"]["type"], "Canceled", msg)
        self.assertIs(msg["error"]["retryable"], False, msg)

    def test_ready_lists_cancel_feature(self):
        self.start()
        self.assertEqual(self.ready_msg["features"], self.features)

    def test_progress_loop_ends_cleanly_and_session_survives(self):
        w = self.start()
        msg, took = self.call_then_cancel(w, 1, "loop", None)
        self.assertCanceled(msg, 1)
        self.assertLess(took, 2.0)
        # The same process, with the session's state, serves on.
        w._next_id = 1
        st = w.call("state", None, session="s")
        self.assertEqual(st["result"], {"loops": 1, "pid": w.proc.pid})
        self.shutdown(w)

    def test_blocked_sleep_is_interrupted(self):
        w = self.start()
        msg, took = self.call_then_cancel(w, 1, "nap", 60)
        self.assertCanceled(msg, 1)
        self.assertLess(took, 2.0)
        self.shutdown(w)

    def test_blocked_read_is_interrupted(self):
        w = self.start()
        msg, took = self.call_then_cancel(w, 1, "read", None)
        self.assertCanceled(msg, 1)
        self.assertLess(took, 2.0)
        self.shutdown(w)

    def test_busy_loop_is_interrupted(self):
        w = self.start()
        msg, _ = self.call_then_cancel(w, 1, "spin", None)
        self.assertCanceled(msg, 1)
        self.shutdown(w)

    def test_except_exception_does_not_swallow_cancel(self):
        w = self.start()
        msg, _ = self.call_then_cancel(w, 1, "swallow", 60)
        self.assertCanceled(msg, 1)
        self.shutdown(w)

    def test_handler_may_catch_cancel_and_answer(self):
        w = self.start()
        msg, _ = self.call_then_cancel(w, 1, "stubborn", 60)
        self.assertEqual(msg, {"type": "result", "id": 1, "ok": True, "result": "finished anyway"})
        self.shutdown(w)

    def test_cancel_raised_once(self):
        # Canceled raised by progress() is raised once: the signals that
        # follow (an agent repeats them until the answer) leave the
        # handler's clean-up alone.
        w = self.start()
        msg, _ = self.call_then_cancel(w, 1, "deaf_cleanup", None)
        self.assertCanceled(msg, 1)
        w._next_id = 1
        self.assertIs(w.call("cleaned", None, session="s")["result"], True)
        self.shutdown(w)

    def test_frames_a_handler_thread_read_are_served(self):
        # A thread of the last handler read the next call off the pipe:
        # the main thread serves it rather than wait for more.
        w = self.start()
        self.assertEqual(w.call("poll_once", None)["result"], "ok")
        self.assertEqual(w.call("echo", "next")["result"], "next")
        self.shutdown(w)

    def test_progress_from_a_thread_keeps_the_handler_cancelable(self):
        # The helper's progress() ran while the main thread's was writing,
        # and ended after it: it must not leave the main thread disarmed.
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "helper_progress", "payload": 30, "session": "s"})
        got = [w.recv() for _ in range(3)]
        self.assertEqual([m.get("data") for m in got], ["main", "helper", "started"], got)
        start = time.monotonic()
        answered = self.send_cancel(w, 1)
        msg = w.recv()
        answered()
        self.assertCanceled(msg, 1)
        self.assertLess(time.monotonic() - start, 2.0)
        self.shutdown(w)

    def test_progress_from_two_threads_keeps_frames_whole(self):
        w = self.start()
        n, size = 16, 100_000
        w.send({"type": "call", "id": 1, "command": "threads_progress", "payload": {"n": n, "size": size}})
        seen = {"a": [], "b": []}
        while True:
            msg = w.recv()
            if msg["type"] != "progress":
                break
            data = msg["data"]
            self.assertEqual(msg["id"], 1, msg["type"])
            self.assertEqual(data["blob"], data["t"] * size)
            seen[data["t"]].append(data["i"])
        self.assertEqual(msg, {"type": "result", "id": 1, "ok": True, "result": "done"})
        self.assertEqual(seen, {"a": list(range(n)), "b": list(range(n))})
        self.shutdown(w)

    def test_a_forked_child_does_not_read_the_frames(self):
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "fork_check", "payload": 0.5})
        msg = w.recv()
        self.assertEqual(msg.get("data"), "forked", msg)
        # Sent while the child polls: the parent answers it after the call.
        w.send({"type": "ping", "id": 7})
        self.assertEqual(w.recv(), {"type": "result", "id": 1, "ok": True, "result": "ok"})
        self.assertEqual(w.recv(), {"type": "pong", "id": 7})
        self.shutdown(w)

    def test_a_signal_dropped_by_the_handler_is_sent_again(self):
        w = self.start()
        msg, took = self.call_then_cancel(w, 1, "deaf_sleep", 10, after=0)
        self.assertCanceled(msg, 1)
        self.assertLess(took, 2.0)
        self.shutdown(w)

    def test_cancel_for_finished_call_is_ignored(self):
        w = self.start()
        self.assertEqual(w.call("echo", "a")["result"], "a")
        self.send_cancel(w, 1)()  # call 1 has answered
        # The next calls run normally, including one that blocks a while.
        w._next_id = 1
        w.send({"type": "call", "id": 2, "command": "sleep", "payload": 0.5, "session": "s"})
        self.assertEqual(w.recv(), {"type": "result", "id": 2, "ok": True, "result": "slept"})
        w._next_id = 2
        self.assertEqual(w.call("echo", "c")["result"], "c")
        self.shutdown(w)

    def test_cancel_for_another_id_is_ignored(self):
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "sleep", "payload": 0.5})
        self.send_cancel(w, 99)()
        self.assertEqual(w.recv(), {"type": "result", "id": 1, "ok": True, "result": "slept"})
        self.shutdown(w)

    def test_cancel_races_keep_the_stream_sound(self):
        # A cancel right behind each call lands before the handler starts,
        # while it runs, or after it answered: every call gets exactly one
        # answer, success or Canceled, and the worker serves on.
        w = self.start()
        outcomes = {"ok": 0, "Canceled": 0}
        for cid in range(1, 301):
            w.send({"type": "call", "id": cid, "command": "sleep", "payload": (cid % 3) * 0.001})
            answered = self.send_cancel(w, cid)
            msg = w.recv()
            answered()
            self.assertEqual((msg["type"], msg["id"]), ("result", cid), msg)
            if msg["ok"]:
                outcomes["ok"] += 1
            else:
                self.assertEqual(msg["error"]["type"], "Canceled", msg)
                outcomes["Canceled"] += 1
        # Stray signals after all that do nothing either.
        os.kill(w.proc.pid, signal.SIGUSR1)
        w._next_id = 300
        self.assertEqual(w.call("echo", "alive")["result"], "alive")
        self.assertGreater(outcomes["Canceled"], 0, outcomes)
        self.shutdown(w)

    def test_sigusr1_outside_a_call_does_nothing(self):
        # The SDK owns SIGUSR1 while serving: a stray one (no cancel) must
        # neither kill the worker nor fail the next call.
        w = self.start()
        os.kill(w.proc.pid, signal.SIGUSR1)
        w.send({"type": "call", "id": 1, "command": "sleep", "payload": 0.3})
        os.kill(w.proc.pid, signal.SIGUSR1)
        self.assertEqual(w.recv(), {"type": "result", "id": 1, "ok": True, "result": "slept"})
        self.shutdown(w)

    def test_slow_worker_example_is_cancelable(self):
        here = os.path.dirname(os.path.abspath(__file__))
        script = os.path.join(here, "..", "..", "examples", "slow_worker.py")
        w = self.start(argv=[__import__("sys").executable, script])
        self.assertEqual(self.ready_msg["features"], self.features)
        w.send({"type": "call", "id": 1, "command": "slow", "payload": {"ms": 60000}})
        time.sleep(0.3)
        start = time.monotonic()
        answered = self.send_cancel(w, 1)
        msg = w.recv(timeout=TIMEOUT)
        answered()
        self.assertCanceled(msg, 1)
        self.assertLess(time.monotonic() - start, 2.0)
        self.shutdown(w)


class SignaledCancelTest(CancelTest):
    """CancelTest again, with the worker reading its frames on its main
    thread and signaled after each cancel frame, as under an agent."""

    mode_env = {"PROCFLEET_AGENT_PID": str(os.getpid())}
    features = ["cancel", "cancel_signal"]
    signaled = True


if __name__ == "__main__":
    unittest.main()
