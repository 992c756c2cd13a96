"""Round-trip tests for procfleet_worker and the example workers.

Every test starts a real worker subprocess with sys.executable and speaks
protocol v1 frames over its pipes, the way the agent does. The frame code
here is written independently of the SDK, so that the tests check the wire
format rather than the SDK against itself. Every read has a deadline, so a
broken worker fails a test instead of hanging it.

Run from the repository root:

    python3 -m unittest discover -s worker/python -v
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(REPO, "examples")

# Generous: the test machine is small and shared.
TIMEOUT = 15.0

TEST_WORKER = textwrap.dedent(
    r'''
    import os, subprocess, sys, time
    sys.path.insert(0, os.environ["SDK_DIR"])
    import procfleet_worker as pw

    print("module-level print after import")

    ended = []

    class Flaky(pw.RetryableError):
        pass

    @pw.handler("echo")
    def echo(payload, session):
        return payload

    @pw.handler
    def counter(payload, session):
        session.state["n"] = session.state.get("n", 0) + 1
        return {"session": session.id, "n": session.state["n"],
                "is_new": session.is_new, "calls": session.calls}

    @pw.on_session_end
    def on_end(session):
        ended.append([session.id, session.state.get("n")])
        if session.state.get("slow_end"):
            print("slow session end", flush=True)
            time.sleep(0.5)

    @pw.handler("ended")
    def get_ended(payload, session):
        return ended

    @pw.handler("boom")
    def boom(payload, session):
        raise ValueError("bad input: %s" % payload)

    @pw.handler("retry")
    def retry(payload, session):
        raise pw.RetryableError("try later")

    @pw.handler("flaky")
    def flaky(payload, session):
        raise Flaky("flaky backend")

    @pw.handler("progress")
    def progress(payload, session):
        for i in range(payload["n"]):
            if i % 2:
                pw.progress({"i": i})
            else:
                session.progress({"i": i})
        return "done"

    @pw.handler("ctx")
    def ctx(payload, session):
        call = pw.current_call()
        return {"id": call.id, "command": call.command, "session": call.session,
                "new_session": call.new_session, "job_id": call.job_id,
                "attempt": call.attempt, "deadline_ms": call.deadline_ms,
                "remaining": call.remaining(), "same": session.call is call}

    @pw.handler("noisy")
    def noisy(payload, session):
        print("hello from print")
        sys.stdout.write("hello from sys.stdout\n")
        os.write(1, b"hello from fd 1\n")
        subprocess.run([sys.executable, "-c", "print('hello from a child')"], check=True)
        return {"stdin": sys.stdin.read()}

    @pw.handler("big")
    def big(payload, session):
        return "x" * payload

    @pw.handler("unserialisable")
    def unserialisable(payload, session):
        return {"s": {1, 2}}

    @pw.handler("nan")
    def nan(payload, session):
        return float("nan")

    @pw.handler("hugeint")
    def hugeint(payload, session):
        return 10 ** 5000

    @pw.handler("deep")
    def deep(payload, session):
        v = []
        for _ in range(100000):
            v = [v]
        return v

    @pw.handler("circular")
    def circular(payload, session):
        v = []
        v.append(v)
        return v

    @pw.handler("sleep")
    def sleep(payload, session):
        session.progress("sleeping")
        import time
        time.sleep(payload)
        return "slept"

    @pw.handler("stuck")
    def stuck(payload, session):
        # The main thread waits in system(), which retries its wait after
        # a signal without running Python's handlers; a thread of the
        # handler watches for the cancel and ends the wait.
        import threading
        def watch():
            while True:
                try:
                    pw.check_canceled()
                except pw.Canceled:
                    subprocess.run(["pkill", "-P", str(os.getpid()), "sleep"])
                    return
                time.sleep(0.01)
        threading.Thread(target=watch, daemon=True).start()
        session.progress("stuck")
        os.system("exec sleep %d" % payload)
        return "woke"

    @pw.handler("outlive")
    def outlive(payload, session):
        # Starts a thread that reports progress every millisecond for
        # payload seconds, and returns once it has reported once, without
        # joining it: its later reports are neither this call's (answered)
        # nor the next call's.
        import threading
        job = pw.current_call().job_id
        reported = threading.Event()
        def report():
            end = time.monotonic() + payload
            while time.monotonic() < end:
                try:
                    pw.progress({"from_job": job})
                except RuntimeError:
                    pass  # no call running
                reported.set()
                time.sleep(0.001)
        threading.Thread(target=report, daemon=True).start()
        reported.wait(5)
        return "left"

    @pw.handler("slow_end")
    def slow_end(payload, session):
        session.state["slow_end"] = True
        return "ok"

    @pw.handler("progress_outside")
    def progress_outside(payload, session):
        return pw.current_call() is not None

    try:
        pw.progress("too early")
    except RuntimeError as e:
        print("progress outside a call:", e)

    if __name__ == "__main__":
        pw.run()
    '''
)

# A Worker instance of the user's own, with the module-level progress() and
# current_call() still working inside its handlers.
CUSTOM_WORKER = textwrap.dedent(
    r'''
    import os, sys
    sys.path.insert(0, os.environ["SDK_DIR"])
    import procfleet_worker as pw

    worker = pw.Worker(max_frame=4096)

    @worker.handler("job")
    def job(payload, session):
        pw.progress({"job_id": pw.current_call().job_id})
        return {"bare_default": pw.default_worker.commands}

    worker.run()
    '''
)

COMMANDS = [
    "echo",
    "counter",
    "ended",
    "boom",
    "retry",
    "flaky",
    "progress",
    "ctx",
    "noisy",
    "big",
    "unserialisable",
    "nan",
    "hugeint",
    "deep",
    "circular",
    "sleep",
    "stuck",
    "outlive",
    "slow_end",
    "progress_outside",
]


def frame(obj):
    body = json.dumps(obj).encode("utf-8")
    return len(body).to_bytes(4, "big") + body


class WorkerProcess:
    """A worker subprocess and the agent's end of its pipes."""

    def __init__(self, argv, env=None):
        self._stderr = tempfile.TemporaryFile()
        full_env = dict(os.environ)
        full_env.pop("PROCFLEET_MAX_FRAME", None)
        # The way frames are read is the test class's choice (mode_env).
        full_env.pop("PROCFLEET_AGENT_PID", None)
        full_env.pop("PROCFLEET_READER_THREAD", None)
        # Buffered stdio, as under an agent, so a missed flush shows.
        full_env.pop("PYTHONUNBUFFERED", None)
        full_env["SDK_DIR"] = HERE
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
            bufsize=0,
        )
        self._out = self.proc.stdout.fileno()
        self._buf = bytearray()
        self._next_id = 0

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj):
        self.send_raw(frame(obj))

    def _read_exact(self, n, deadline):
        while len(self._buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from worker within %.0fs" % TIMEOUT)
            ready, _, _ = select.select([self._out], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise EOFError("worker closed stdout (%d buffered bytes)" % len(self._buf))
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def recv(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        n = int.from_bytes(self._read_exact(4, deadline), "big")
        body = self._read_exact(n, deadline)
        obj = json.loads(body.decode("utf-8"))  # strict UTF-8 JSON, as the agent reads it
        assert isinstance(obj, dict), obj
        return obj

    def ready(self):
        msg = self.recv()
        assert msg["type"] == "ready", msg
        return msg

    def call(self, command, payload=None, **fields):
        """Send one call and return its result frame (progress frames must not occur)."""
        self._next_id += 1
        msg = {"type": "call", "id": self._next_id, "command": command, "payload": payload}
        msg.update(fields)
        self.send(msg)
        reply = self.recv()
        assert reply["type"] == "result" and reply["id"] == self._next_id, reply
        return reply

    def expect_eof(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        try:
            extra = self._read_exact(1, deadline)
        except EOFError:
            return
        raise AssertionError("expected EOF, got more output: %r" % extra)

    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout=timeout)

    def stderr(self):
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._stderr.close()


class WorkerTestCase(unittest.TestCase):
    script = None  # set by subclasses
    # The environment that picks how the SDK reads frames: by default as
    # under a wrapper process (a reader thread); SignaledSDKTest sets the
    # agent's pid to ours, as an agent does for its child.
    mode_env = {}
    features = ["cancel"]
    signaled = False

    def start(self, argv=None, env=None, wait_ready=True):
        env = dict(self.mode_env, **(env or {}))
        w = WorkerProcess(argv or [sys.executable, self.script], env=env)
        self.addCleanup(w.cleanup)
        if wait_ready:
            self.ready_msg = w.ready()
        return w

    def send_cancel(self, w, cid, repeat=True):
        """Send the cancel frame for call cid. To a worker that asked for
        cancel_signal, send SIGUSR1 then, and again every 50 ms until the
        returned function is called, as an agent does until the answer
        (once only, without repeat)."""
        w.send({"type": "cancel", "id": cid})
        if not self.signaled:
            return lambda: None
        if not repeat:
            os.kill(w.proc.pid, signal.SIGUSR1)
            return lambda: None
        stop = threading.Event()

        def resignal():
            while True:
                try:
                    os.kill(w.proc.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    return
                if stop.wait(0.05):
                    return

        t = threading.Thread(target=resignal, daemon=True)
        t.start()

        def done():
            stop.set()
            t.join()

        self.addCleanup(done)
        return done

    def shutdown(self, w):
        w.send({"type": "shutdown"})
        self.assertEqual(w.wait(), 0, w.stderr())


class SDKTest(WorkerTestCase):
    @classmethod
    def setUpClass(cls):
        cls._dir = tempfile.TemporaryDirectory()
        cls.script = os.path.join(cls._dir.name, "test_worker.py")
        with open(cls.script, "w") as f:
            f.write(TEST_WORKER)
        cls.custom_script = os.path.join(cls._dir.name, "custom_worker.py")
        with open(cls.custom_script, "w") as f:
            f.write(CUSTOM_WORKER)

    @classmethod
    def tearDownClass(cls):
        cls._dir.cleanup()

    def test_ready_frame(self):
        w = self.start()
        self.assertEqual(
            self.ready_msg,
            {"type": "ready", "protocol": 1, "pid": w.proc.pid, "commands": COMMANDS,
             "features": self.features},
        )

    def test_echo(self):
        w = self.start()
        payloads = [
            {"a": [1, 2.5, None, True], "b": {"c": "d"}},
            "unicode: é ✓ 😀",
            None,
            0,
            [],
            {"lone surrogate": "\ud800"},
        ]
        for p in payloads:
            r = w.call("echo", p)
            self.assertIs(r["ok"], True)
            # A lone surrogate survives as a \ud800 escape: the frame stays valid UTF-8.
            self.assertEqual(r["result"], p)
        self.shutdown(w)

    def test_many_calls_keep_order(self):
        w = self.start()
        for i in range(300):
            r = w.call("echo", {"i": i})
            self.assertEqual(r["result"], {"i": i})

    def test_large_payload_round_trip(self):
        w = self.start()
        # Far bigger than a pipe buffer, so both sides must handle partial
        # reads and writes.
        p = {"blob": "y" * (3 << 20)}
        self.assertEqual(w.call("echo", p)["result"], p)

    def test_session_state_kept_and_reset_on_new_session(self):
        w = self.start()

        def n(session, **kw):
            r = w.call("counter", session=session, **kw)
            self.assertIs(r["ok"], True, r)
            return r["result"]

        self.assertEqual(n("s1", new_session=True), {"session": "s1", "n": 1, "is_new": True, "calls": 1})
        self.assertEqual(n("s1"), {"session": "s1", "n": 2, "is_new": False, "calls": 2})
        self.assertEqual(n("s2", new_session=True)["n"], 1)
        self.assertEqual(n("s1", new_session=False)["n"], 3)
        # new_session drops the stale state of s1 and runs the hook on it.
        self.assertEqual(n("s1", new_session=True), {"session": "s1", "n": 1, "is_new": True, "calls": 1})
        self.assertEqual(n("s1")["n"], 2)
        self.assertEqual(n("s2")["n"], 2)
        self.assertEqual(w.call("ended")["result"], [["s1", 3]])

    def test_unseen_session_without_flag_starts_fresh(self):
        w = self.start()
        r = w.call("counter", session="never-seen")["result"]
        self.assertEqual(r, {"session": "never-seen", "n": 1, "is_new": True, "calls": 1})

    def test_anonymous_jobs_get_throwaway_sessions(self):
        w = self.start()
        for fields in ({}, {"session": None}, {"session": ""}):
            r = w.call("counter", **fields)["result"]
            self.assertEqual(r, {"session": None, "n": 1, "is_new": True, "calls": 1})

    def test_session_end_drops_state(self):
        w = self.start()
        w.call("counter", session="s1", new_session=True)
        w.call("counter", session="s1")
        w.call("counter", session="s2", new_session=True)
        w.send({"type": "session_end", "session": "s1"})
        w.send({"type": "session_end", "session": "unknown"})
        # session_end has no reply: the next frame must be the pong.
        w.send({"type": "ping", "id": 99})
        self.assertEqual(w.recv(), {"type": "pong", "id": 99})
        self.assertEqual(w.call("ended")["result"], [["s1", 2]])
        r = w.call("counter", session="s1")["result"]
        self.assertEqual((r["n"], r["is_new"]), (1, True))
        self.assertEqual(w.call("counter", session="s2")["result"]["n"], 2)

    def test_exception_is_a_failed_result(self):
        w = self.start()
        r = w.call("boom", 42)
        self.assertEqual(
            r,
            {
                "type": "result",
                "id": r["id"],
                "ok": False,
                "error": {"type": "ValueError", "message": "bad input: 42", "retryable": False},
            },
        )
        # The worker carries on.
        self.assertEqual(w.call("echo", "still here")["result"], "still here")
        self.shutdown(w)
        self.assertIn("Traceback", w.stderr())
        self.assertIn("ValueError: bad input: 42", w.stderr())

    def test_retryable_error(self):
        w = self.start()
        self.assertEqual(
            w.call("retry")["error"],
            {"type": "RetryableError", "message": "try later", "retryable": True},
        )
        self.assertEqual(
            w.call("flaky")["error"],
            {"type": "Flaky", "message": "flaky backend", "retryable": True},
        )

    def test_unknown_command(self):
        w = self.start()
        r = w.call("nope", {"x": 1})
        self.assertIs(r["ok"], False)
        self.assertEqual(r["error"]["type"], "UnknownCommand")
        self.assertIs(r["error"]["retryable"], False)
        self.assertIn("nope", r["error"]["message"])

    def test_progress_frames_come_before_result(self):
        w = self.start()
        w.send({"type": "call", "id": 5, "command": "progress", "payload": {"n": 4}, "session": "s"})
        frames = [w.recv() for _ in range(5)]
        self.assertEqual(
            frames[:4],
            [{"type": "progress", "id": 5, "data": {"i": i}} for i in range(4)],
        )
        self.assertEqual(frames[4], {"type": "result", "id": 5, "ok": True, "result": "done"})
        self.shutdown(w)
        self.assertIn("progress outside a call: progress() called outside a running call", w.stderr())

    def test_progress_of_a_thread_that_outlives_its_call(self):
        # The thread of call 1 reports for 1 s; call 2, of another session,
        # runs meanwhile. Its reports went out as call 2's progress, or as
        # call 1's after call 1's result; they are dropped instead.
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "outlive", "payload": 1.0,
                "session": "s1", "job_id": "job-1"})
        frames = []
        while not frames or frames[-1]["type"] != "result":
            frames.append(w.recv())
        self.assertEqual(frames[-1], {"type": "result", "id": 1, "ok": True, "result": "left"})
        self.assertGreaterEqual(len(frames), 2, frames)
        for f in frames[:-1]:
            self.assertEqual(f, {"type": "progress", "id": 1, "data": {"from_job": "job-1"}})
        w.send({"type": "call", "id": 2, "command": "sleep", "payload": 0.3,
                "session": "s2", "job_id": "job-2"})
        frames = []
        while not frames or frames[-1]["type"] != "result":
            frames.append(w.recv())
        self.assertEqual(
            frames,
            [{"type": "progress", "id": 2, "data": "sleeping"},
             {"type": "result", "id": 2, "ok": True, "result": "slept"}],
        )
        time.sleep(0.8)  # the thread's last reports, with no call running
        self.assertEqual(w.call("echo", "after")["result"], "after")
        self.shutdown(w)
        self.assertIn("progress for call 1 dropped", w.stderr())

    def test_call_context(self):
        w = self.start()
        deadline = int(time.time() * 1000) + 60000
        r = w.call("ctx", session="s9", new_session=True, job_id="job-1", attempt=3, deadline_ms=deadline)
        res = r["result"]
        self.assertEqual(res["id"], r["id"])
        self.assertEqual(
            {k: res[k] for k in ("command", "session", "new_session", "job_id", "attempt", "deadline_ms", "same")},
            {"command": "ctx", "session": "s9", "new_session": True, "job_id": "job-1",
             "attempt": 3, "deadline_ms": deadline, "same": True},
        )
        self.assertTrue(0 < res["remaining"] <= 60, res["remaining"])
        bare = w.call("ctx")["result"]
        self.assertEqual((bare["job_id"], bare["deadline_ms"], bare["remaining"]), (None, None, None))
        self.assertIs(w.call("progress_outside")["result"], True)

    def test_custom_worker_instance(self):
        w = self.start([sys.executable, self.custom_script])
        self.assertEqual(self.ready_msg["commands"], ["job"])
        w.send({"type": "call", "id": 3, "command": "job", "job_id": "j-3"})
        self.assertEqual(w.recv(), {"type": "progress", "id": 3, "data": {"job_id": "j-3"}})
        self.assertEqual(w.recv(), {"type": "result", "id": 3, "ok": True, "result": {"bare_default": []}})
        # max_frame=4096 given in code wins over the (unset) environment.
        w.send_raw((4097).to_bytes(4, "big"))
        self.assertProtocolExit(w, "exceeds max frame 4096")

    def test_print_goes_to_stderr_not_stdout(self):
        w = self.start()
        r = w.call("noisy")
        self.assertEqual(r["result"], {"stdin": ""})  # stdin no longer reaches the frames
        # The log lines were written before the result frame, not left in a
        # buffer until exit.
        self.assertIn("hello from print", w.stderr())
        self.assertEqual(w.call("echo", [1])["result"], [1])
        self.shutdown(w)
        w.expect_eof()
        err = w.stderr()
        for line in (
            "module-level print after import",
            "hello from print",
            "hello from sys.stdout",
            "hello from fd 1",
            "hello from a child",
        ):
            self.assertIn(line, err)

    def test_ping_pong(self):
        w = self.start()
        for i in (1, 2, 1 << 40):
            w.send({"type": "ping", "id": i})
            self.assertEqual(w.recv(), {"type": "pong", "id": i})

    def test_cancel_interrupts_a_sleeping_handler(self):
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "sleep", "payload": 300})
        self.assertEqual(w.recv(), {"type": "progress", "id": 1, "data": "sleeping"})
        start = time.monotonic()
        self.send_cancel(w, 1, repeat=False)
        res = w.recv()
        self.assertEqual((res["id"], res["ok"], res["error"]["type"]), (1, False, "Canceled"), res)
        self.assertLess(time.monotonic() - start, TIMEOUT)
        w._next_id = 1
        self.assertEqual(w.call("echo", "after")["result"], "after")
        self.shutdown(w)

    def test_cancel_sent_with_its_call(self):
        # Call and cancel in one write: the handler never starts.
        w = self.start()
        w.send_raw(frame({"type": "call", "id": 1, "command": "sleep", "payload": 300})
                   + frame({"type": "cancel", "id": 1}))
        if self.signaled:
            os.kill(w.proc.pid, signal.SIGUSR1)
        res = w.recv()
        self.assertEqual((res["id"], res["ok"], res["error"]["type"]), (1, False, "Canceled"), res)
        w._next_id = 1
        self.assertEqual(w.call("echo", 2)["result"], 2)
        self.shutdown(w)

    def test_cancel_seen_by_a_thread_while_the_main_thread_is_stuck(self):
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "stuck", "payload": 60})
        self.assertEqual(w.recv(), {"type": "progress", "id": 1, "data": "stuck"})
        start = time.monotonic()
        self.send_cancel(w, 1, repeat=False)
        res = w.recv()
        self.assertEqual(res["id"], 1, res)
        self.assertTrue(res.get("result") == "woke" or res["error"]["type"] == "Canceled", res)
        self.assertLess(time.monotonic() - start, TIMEOUT)
        self.shutdown(w)

    def test_cancel_that_comes_before_its_handler_starts(self):
        # The session's end hook runs before the handler of a call that
        # replaces it: the cancel (and its signal) come meanwhile.
        w = self.start()
        self.assertEqual(w.call("slow_end", None, session="s")["result"], "ok")
        w.send({"type": "call", "id": 2, "command": "sleep", "payload": 300,
                "session": "s", "new_session": True})
        deadline = time.monotonic() + TIMEOUT
        while "slow session end" not in w.stderr():
            self.assertLess(time.monotonic(), deadline, "the session end hook did not run")
            time.sleep(0.01)
        self.send_cancel(w, 2, repeat=False)
        res = w.recv()
        self.assertEqual((res["id"], res["ok"], res["error"]["type"]), (2, False, "Canceled"), res)
        self.shutdown(w)

    def test_cancel_after_the_answer_is_ignored(self):
        w = self.start()
        self.assertEqual(w.call("echo", 1)["result"], 1)
        self.send_cancel(w, 1, repeat=False)
        for i in range(2, 6):
            self.assertEqual(w.call("echo", i)["result"], i)
        self.shutdown(w)

    def test_stray_signal_and_ping_during_a_handler(self):
        # A signal with no cancel frame does not stop the handler; a ping
        # sent meanwhile is answered after the result.
        w = self.start()
        w.send({"type": "call", "id": 1, "command": "sleep", "payload": 0.3})
        self.assertEqual(w.recv(), {"type": "progress", "id": 1, "data": "sleeping"})
        os.kill(w.proc.pid, signal.SIGUSR1)
        w.send({"type": "ping", "id": 7})
        self.assertEqual(w.recv(), {"type": "result", "id": 1, "ok": True, "result": "slept"})
        self.assertEqual(w.recv(), {"type": "pong", "id": 7})
        self.shutdown(w)

    def test_shutdown_exits_zero(self):
        w = self.start()
        w.call("echo", 1)
        self.shutdown(w)
        w.expect_eof()

    def test_eof_exits_zero(self):
        w = self.start()
        w.call("echo", 1)
        w.close_stdin()
        self.assertEqual(w.wait(), 0, w.stderr())

    def test_unknown_message_type_is_ignored(self):
        w = self.start()
        w.send({"type": "from_the_future", "id": 1})
        self.assertEqual(w.call("echo", "ok")["result"], "ok")
        self.shutdown(w)
        self.assertIn("from_the_future", w.stderr())

    def test_frame_at_max_size_is_accepted(self):
        limit = 1024
        w = self.start(env={"PROCFLEET_MAX_FRAME": str(limit)})
        msg = {"type": "call", "id": 1, "command": "echo", "payload": ""}
        msg["payload"] = "z" * (limit - len(json.dumps(msg).encode()))
        self.assertEqual(len(json.dumps(msg).encode()), limit)
        w.send(msg)
        r = w.recv()
        self.assertIs(r["ok"], True, r)
        self.assertEqual(r["result"], msg["payload"])
        # One byte more is a protocol error.
        msg["payload"] += "z"
        w.send(msg)
        self.assertProtocolExit(w, "exceeds max frame 1024")

    def test_oversized_result_fails_the_job_only(self):
        w = self.start(env={"PROCFLEET_MAX_FRAME": "1024"})
        self.assertIs(w.call("big", 900)["ok"], True)
        r = w.call("big", 5000)
        self.assertEqual(r["error"]["type"], "FrameTooLarge")
        self.assertIs(r["error"]["retryable"], False)
        self.assertEqual(w.call("echo", "alive")["result"], "alive")

    def test_unserialisable_result_fails_the_job_only(self):
        w = self.start()
        r = w.call("unserialisable")
        self.assertEqual(r["error"]["type"], "TypeError")
        self.assertIn("not JSON-serialisable", r["error"]["message"])
        self.assertEqual(w.call("nan")["error"]["type"], "ValueError")
        self.assertEqual(w.call("echo", "alive")["result"], "alive")

    def test_unencodable_results_fail_the_job_only(self):
        w = self.start()
        pid = self.ready_msg["pid"]
        for command, etype in (
            ("hugeint", "ValueError"),
            ("deep", "RecursionError"),
            ("circular", "ValueError"),
            ("nan", "ValueError"),
        ):
            with self.subTest(command):
                r = w.call(command)
                self.assertIs(r["ok"], False, r)
                self.assertEqual(r["error"]["type"], etype, r)
                self.assertIn("not JSON-serialisable", r["error"]["message"])
                self.assertIs(r["error"]["retryable"], False)
        self.assertEqual(w.call("ctx")["result"]["id"], w._next_id)
        self.assertIsNone(w.proc.poll())
        self.assertEqual(self.ready_msg["pid"], pid)

    # Valid JSON that Python's json refuses: more digits than
    # sys.get_int_max_str_digits() (4300), nesting deeper than the recursion
    # limit (1000).
    UNDECODABLE = {
        "5000-digit integer": "9" * 5000,
        "negative 5000-digit integer": "-" + "1" * 5000,
        "arrays 3000 deep": "[" * 3000 + "]" * 3000,
        "objects 3000 deep": '{"a":' * 3000 + "1" + "}" * 3000,
        "mixed 3000 deep": '[{"k\\u00e9": ' * 3000 + "null" + "}]" * 3000,
        "huge integer nested": '{"x":[1,2,{"y":' + "7" * 5000 + "}]}",
    }

    def call_raw(self, w, cid, payload_json, **fields):
        head = {"type": "call", "id": cid, "command": "counter"}
        head.update(fields)
        body = json.dumps(head)[:-1] + ',"payload":' + payload_json + "}"
        data = body.encode()
        w.send_raw(len(data).to_bytes(4, "big") + data)
        return w.recv()

    def test_undecodable_payload_fails_the_call_only(self):
        w = self.start()
        cid = 100
        for name, payload in self.UNDECODABLE.items():
            with self.subTest(name):
                cid += 1
                r = self.call_raw(w, cid, payload, session="s1")
                self.assertEqual(r["type"], "result")
                self.assertEqual(r["id"], cid)
                self.assertIs(r["ok"], False, r)
                self.assertEqual(r["error"]["type"], "UndecodablePayload", r)
                self.assertIs(r["error"]["retryable"], False)
                self.assertIn("valid JSON", r["error"]["message"])
        self.assertIn("maximum recursion depth", w.stderr())
        self.assertIn("4300", w.stderr())
        # The same process keeps serving, and the session it was bound to.
        self.assertIsNone(w.proc.poll())
        r = w.call("counter", session="s1")
        self.assertEqual(r["result"]["calls"], len(self.UNDECODABLE) + 1, r)
        self.assertEqual(w.call("echo", {"x": 1})["result"], {"x": 1})
        # Other messages with undecodable members are still understood.
        data = ('{"type":"ping","id":77,"junk":' + "[" * 3000 + "]" * 3000 + "}").encode()
        w.send_raw(len(data).to_bytes(4, "big") + data)
        self.assertEqual(w.recv(), {"type": "pong", "id": 77})
        self.shutdown(w)

    def test_new_session_with_undecodable_payload_resets_state(self):
        w = self.start()
        self.assertEqual(w.call("counter", session="s1")["result"]["n"], 1)
        r = self.call_raw(w, 50, "9" * 5000, session="s1", new_session=True)
        self.assertEqual(r["error"]["type"], "UndecodablePayload", r)
        res = w.call("counter", session="s1")["result"]
        self.assertEqual((res["n"], res["calls"]), (1, 2), res)

    def test_broken_frame_with_deep_nesting_still_exits(self):
        # json fails on the depth first; the scanner must still see that the
        # frame is not JSON at all and treat the stream as broken.
        cases = {
            "unclosed": '{"type":"call","id":1,"command":"echo","payload":' + "[" * 3000 + "}",
            "garbage after": '{"type":"call","id":1,"payload":' + "[" * 3000 + "]" * 3000 + "}x",
            "big int then garbage": '{"type":"call","id":1,"payload":' + "9" * 5000 + ",}",
            "top-level array": "[" * 3000 + "]" * 3000,
            "id undecodable": '{"type":"call","id":' + "9" * 5000 + ',"payload":1}',
        }
        for name, body in cases.items():
            with self.subTest(name):
                w = self.start()
                data = body.encode()
                w.send_raw(len(data).to_bytes(4, "big") + data)
                self.assertProtocolExit(w)
        w = self.start()
        data = b'{"type":"call","id":1,"payload":' + b"[" * 3000 + b'"\xff"' + b"]" * 3000 + b"}"
        w.send_raw(len(data).to_bytes(4, "big") + data)
        self.assertProtocolExit(w, "not JSON")

    def assertProtocolExit(self, w, *stderr_fragments):
        rc = w.wait()
        self.assertEqual(rc, 2, w.stderr())
        for fragment in stderr_fragments:
            self.assertIn(fragment, w.stderr())

    def test_oversized_frame_exits_nonzero(self):
        w = self.start(env={"PROCFLEET_MAX_FRAME": "1024"})
        # Only the header: the worker must not wait for a body it refuses.
        w.send_raw((2048).to_bytes(4, "big"))
        self.assertProtocolExit(w, "incoming frame of 2048 bytes exceeds max frame 1024")

    def test_oversized_frame_default_limit(self):
        w = self.start()
        w.send_raw(((16 << 20) + 1).to_bytes(4, "big"))
        self.assertProtocolExit(w, "exceeds max frame 16777216")

    def test_malformed_frames_exit_nonzero(self):
        cases = {
            "zero length": ((0).to_bytes(4, "big"), "zero-length frame"),
            "not json": ((5).to_bytes(4, "big") + b"hello", "not JSON"),
            "bad utf-8": ((3).to_bytes(4, "big") + b'"\xff"', "not JSON"),
            "json array": ((2).to_bytes(4, "big") + b"[]", "not a JSON object"),
            "no type": (frame({"id": 1}), "no type"),
            "call without id": (frame({"type": "call", "command": "echo"}), "integer id"),
        }
        for name, (data, fragment) in cases.items():
            with self.subTest(name):
                w = self.start()
                w.send_raw(data)
                self.assertProtocolExit(w, fragment)

    def test_truncated_frame_exits_nonzero(self):
        w = self.start()
        w.send_raw((100).to_bytes(4, "big") + b'{"type":')
        w.close_stdin()
        self.assertProtocolExit(w, "stdin ended inside a frame")

    def test_bad_max_frame_env_exits_nonzero(self):
        w = self.start(env={"PROCFLEET_MAX_FRAME": "lots"}, wait_ready=False)
        self.assertProtocolExit(w, "PROCFLEET_MAX_FRAME")
        w.expect_eof()


class ExamplesTest(WorkerTestCase):
    def example(self, name):
        return self.start([sys.executable, os.path.join(EXAMPLES, name)])

    def test_echo_worker(self):
        w = self.example("echo_worker.py")
        self.assertEqual(self.ready_msg["commands"], ["echo"])
        self.assertEqual(w.call("echo", {"hello": "world"})["result"], {"hello": "world"})
        self.shutdown(w)

    def test_programs_worker(self):
        w = self.example("programs_worker.py")
        self.assertEqual(
            self.ready_msg["commands"],
            ["create_program", "execute_program", "list_programs", "echo", "session_info"],
        )
        s = {"session": "alice", "new_session": True}

        r = w.call("create_program", {"name": "poly", "source": "3 * x ** 2 + max(x, 10) // 4"}, **s)
        self.assertEqual(r["result"], {"name": "poly", "replaced": False, "total_count": 1})
        s = {"session": "alice"}
        w.call("create_program", {"name": "double", "code": "x * 2"}, **s)
        self.assertEqual(
            w.call("execute_program", {"name": "poly", "input": 2}, **s)["result"],
            {"name": "poly", "input": 2, "output": 14, "runs": 1},
        )
        self.assertEqual(w.call("execute_program", {"name": "double", "input": 1.5}, **s)["result"]["output"], 3.0)
        self.assertEqual(
            w.call("list_programs", {}, **s)["result"],
            {"programs": ["poly", "double"], "total_count": 2},
        )
        # Another session sees none of alice's programs.
        self.assertEqual(
            w.call("list_programs", None, session="bob", new_session=True)["result"],
            {"programs": [], "total_count": 0},
        )
        missing = w.call("execute_program", {"name": "poly"}, session="bob")
        self.assertEqual(missing["error"]["type"], "ProgramNotFound")

        for source in ("__import__('os').system('true')", "x.__class__", "'a' * 10", "x ** 99 ** 99", "lambda: 1"):
            with self.subTest(source=source):
                r = w.call("create_program", {"name": "evil", "source": source}, **s)
                if r["ok"]:
                    # Compiles (pure arithmetic) but must fail when run.
                    r = w.call("execute_program", {"name": "evil", "input": 7}, **s)
                self.assertIs(r["ok"], False, r)

        self.assertEqual(w.call("echo", [1, "two"], **s)["result"], [1, "two"])
        info = w.call("session_info", None, **s)["result"]
        # 2 creates, 2 executes, 1 list, 5 evil creates (+1 execute of the
        # one that compiles), 1 echo and this call.
        self.assertEqual(info, {"pid": w.proc.pid, "session": "alice", "new_session": False,
                                "is_new": False, "count": info["count"]})
        self.assertGreaterEqual(info["count"], 12)
        fresh = w.call("session_info", None, session="carol", new_session=True)["result"]
        self.assertEqual(fresh, {"pid": w.proc.pid, "session": "carol", "new_session": True,
                                 "is_new": True, "count": 1})
        self.shutdown(w)

    def test_slow_worker(self):
        w = self.example("slow_worker.py")
        self.assertEqual(self.ready_msg["commands"], ["slow"])
        w.send({"type": "call", "id": 1, "command": "slow", "payload": {"ms": 40, "steps": 4}})
        frames = [w.recv() for _ in range(5)]
        self.assertEqual([f["type"] for f in frames], ["progress"] * 4 + ["result"])
        self.assertEqual([f["data"]["step"] for f in frames[:4]], [1, 2, 3, 4])
        self.assertGreaterEqual(frames[3]["data"]["elapsed_ms"], 40)
        self.assertEqual(frames[4], {"type": "result", "id": 1, "ok": True, "result": {"slept_ms": 40}})
        bad = w.call("slow", {"ms": -1})
        self.assertEqual(bad["error"]["type"], "ValueError")
        self.shutdown(w)


CODEC_CHECK = textwrap.dedent(
    r'''
    import json, os, sys
    sys.path.insert(0, os.environ["SDK_DIR"])
    import procfleet_worker as pw

    # The SDK's own encode and decode give what json's do, errors included.
    ref = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode
    circular = []
    circular.append(circular)
    values = [
        {"type": "result", "id": 1, "ok": True,
         "result": {"x": "\u00e9\u2028\ud800", "n": [1, 2.5, None, True, 10**30, -0.0, 1e300]}},
        "str", 5, [], {}, {1: 2, 2.5: "x", None: 1, True: 0},
        float("nan"), [float("inf")], {"s": {1, 2}}, {(1, 2): 1}, circular,
    ]

    def outcome(f, v):
        try:
            return f(v)
        except Exception as e:
            return (type(e).__name__, str(e))

    for v in values:
        assert outcome(pw._encode, v) == outcome(ref, v), (v, outcome(pw._encode, v), outcome(ref, v))
    for b in [b'{"a":1}', b'{"a":"\\ud800"}', b'{"a":"\xed\xa0\x80"}', b'{ }', b'[1]',
              b'{\x00"\x00', b'{"a":1} x', b'{"a":\xff}', b'\xef\xbb\xbf{"a":1}']:
        assert outcome(pw._decode, b) == outcome(json.loads, b), (b, outcome(pw._decode, b), outcome(json.loads, b))
    print("same")
    '''
)


class CodecTest(unittest.TestCase):
    def test_encode_and_decode_are_jsons(self):
        env = dict(os.environ, SDK_DIR=HERE)
        out = subprocess.run([sys.executable, "-c", CODEC_CHECK], env=env,
                             capture_output=True, text=True, timeout=TIMEOUT)
        # The SDK moves print() to stderr at import.
        self.assertEqual((out.returncode, out.stderr.strip()), (0, "same"), out.stderr)


class SignaledSDKTest(SDKTest):
    """SDKTest again, with the worker reading its frames on its main thread:
    its parent (this process) is the agent named in its environment, and
    the cancel tests signal it after each cancel frame as an agent does."""

    mode_env = {"PROCFLEET_AGENT_PID": str(os.getpid())}
    features = ["cancel", "cancel_signal"]
    signaled = True


if __name__ == "__main__":
    unittest.main()
