"""Tests of procfleet_client against a REAL dispatcher and fleet.

They need a running ``dispatcher serve --http`` with agents running the
helper worker (commands echo, sleep, fail): the Go test
``TestPythonClient`` (dispatcher/pyclient_test.go) starts an embedded NATS
server, agents and the HTTP API with tokens, and runs this module with

    PROCFLEET_TEST_URL          the API's base URL
    PROCFLEET_TEST_TOKEN        a token with every right
    PROCFLEET_TEST_READ_TOKEN   a token with the read right only
    PROCFLEET_TEST_MAX_PAYLOAD  the NATS server's max payload

    go test -count=1 -run TestPythonClient ./dispatcher

Run without those variables, the module fails (it is never skipped).
"""

import asyncio
import math
import os
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procfleet_client as pc  # noqa: E402

URL = os.environ.get("PROCFLEET_TEST_URL", "")
TOKEN = os.environ.get("PROCFLEET_TEST_TOKEN", "")
READ_TOKEN = os.environ.get("PROCFLEET_TEST_READ_TOKEN", "")
MAX_PAYLOAD = int(os.environ.get("PROCFLEET_TEST_MAX_PAYLOAD", "0"))


def setUpModule():
    if not (URL and TOKEN and READ_TOKEN and MAX_PAYLOAD):
        raise RuntimeError(
            "PROCFLEET_TEST_URL, _TOKEN, _READ_TOKEN and _MAX_PAYLOAD are not set: "
            "these tests need a real fleet; run them with `go test -count=1 -run TestPythonClient ./dispatcher`"
        )


def uid(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.c = pc.Client(URL, token=TOKEN)

    def test_without_token_every_route_is_401(self):
        anon = pc.Client(URL)
        calls = [
            lambda: anon.submit("echo", 1),
            lambda: anon.result("x"),
            lambda: anon.status(),
            lambda: anon.agents(),
            lambda: anon.queues(),
            lambda: anon.dead_letters(),
            lambda: anon.progress("x"),
            lambda: anon.submit_batch([{"command": "echo"}]),
        ]
        for call in calls:
            with self.assertRaises(pc.Unauthorized) as cm:
                call()
            self.assertEqual(cm.exception.status, 401)
        bad = pc.Client(URL, token="not-a-known-token-000")
        with self.assertRaises(pc.Unauthorized):
            bad.status()

    def test_token_without_the_right_is_403(self):
        reader = pc.Client(URL, token=READ_TOKEN)
        with self.assertRaises(pc.Forbidden):
            reader.submit("echo", 1)
        with self.assertRaises(pc.Forbidden):
            reader.dead_letters()
        self.assertIsInstance(reader.status(), dict)

    def test_hundred_jobs_over_ten_sessions(self):
        sessions = [uid("s%d" % i) for i in range(10)]
        jobs = []
        for i in range(100):
            s = sessions[i % 10]
            sub = self.c.submit("echo", {"i": i, "session": s}, session=s, timeout_ms=30000)
            self.assertIsInstance(sub, pc.Submitted)
            self.assertGreater(sub.seq, 0)
            self.assertFalse(sub.duplicate)
            jobs.append((i, s, sub))
        self.assertEqual(len({sub.id for _, _, sub in jobs}), 100)
        for i, s, sub in jobs:
            res = self.c.result(sub.id, wait=60, seq=sub.seq)
            self.assertTrue(res["ok"], res)
            self.assertEqual(res["result"], {"i": i, "session": s})
            self.assertEqual(res["session"], s)
            self.assertEqual(res["job_seq"], sub.seq)

    def test_submit_wait_returns_the_result(self):
        res = self.c.submit("echo", [1, 2, 3], wait=True)
        self.assertTrue(res["ok"])
        self.assertEqual(res["result"], [1, 2, 3])
        self.assertEqual(self.c.run("echo", "hi", session=uid("run")), "hi")
        with self.assertRaises(pc.JobFailed) as cm:
            self.c.run("fail", None)
        self.assertEqual(cm.exception.kind, "app")

    def test_progress_stream(self):
        job_id = uid("prog")
        # Opened first: from the moment progress() returns, nothing is missed.
        with self.c.progress(job_id) as events:
            self.c.submit("sleep", {"ms": 600}, job_id=job_id)
            got = list(events)
        self.assertEqual([e.event for e in got], ["progress", "result"], got)
        self.assertEqual(got[0].data, {"pct": 50})
        self.assertEqual(got[1].data["id"], job_id)
        self.assertTrue(got[1].data["ok"])
        # A finished job's stream is just its result.
        again = list(self.c.progress(job_id))
        self.assertEqual([e.event for e in again], ["result"])

    def test_long_poll(self):
        t0 = time.monotonic()
        with self.assertRaises(pc.NotFound) as cm:
            self.c.result(uid("never"), wait=1)
        self.assertNotIsInstance(cm.exception, pc.Unsupported)
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        sub = self.c.submit("sleep", {"ms": 300})
        res = self.c.result(sub.id, wait=60)
        self.assertTrue(res["ok"])
        self.assertEqual(res["result"], {"slept": 300})
        with self.assertRaises(ValueError):
            self.c.result(sub.id, wait=-1)

    def test_result_by_seq(self):
        sub = self.c.submit("echo", "first", job_id=uid("seq"))
        self.assertEqual(self.c.result(sub.id, wait=60, seq=sub.seq)["result"], "first")
        with self.assertRaises(pc.NotFound):
            self.c.result(sub.id, seq=sub.seq + 1000000)

    def test_named_queue(self):
        # Jobs of queue q2 (served by the second agent) are found by their
        # own sequence in q2's stream, and submit(wait=...) finds them.
        sub = self.c.submit("echo", "q2's", queue="q2", job_id=uid("queued"))
        self.assertEqual(sub.queue, "q2")
        res = self.c.result(sub.id, wait=60, seq=sub.seq, queue="q2")
        self.assertEqual((res["result"], res["queue"], res["job_seq"]), ("q2's", "q2", sub.seq))
        events = list(self.c.progress(sub.id, seq=sub.seq, queue="q2"))
        self.assertEqual([e.event for e in events], ["result"])
        res = self.c.submit("echo", "waited", queue="q2", job_id=uid("queued"), wait=60)
        self.assertEqual((res["result"], res["queue"]), ("waited", "q2"))
        self.assertIsNone(self.c.submit("echo", 1).queue)

    def test_duplicate_and_conflict(self):
        job_id = uid("dup")
        # The conflict needs the first job still waiting or running: 10 s
        # leave a loaded machine (the Go tests run beside this) ample time
        # for the three submits.
        first = self.c.submit("sleep", {"ms": 10000}, job_id=job_id)
        again = self.c.submit("sleep", {"ms": 10000}, job_id=job_id)
        self.assertTrue(again.duplicate)
        self.assertEqual(again.seq, first.seq)
        with self.assertRaises(pc.Conflict) as cm:
            self.c.submit("sleep", {"ms": 1}, job_id=job_id)
        self.assertEqual(cm.exception.status, 409)
        self.assertIn(job_id, str(cm.exception))
        self.assertTrue(self.c.result(job_id, wait=60, seq=first.seq)["ok"])

    def test_batch_with_partial_failures(self):
        s = uid("batch")
        jobs = [{"command": "echo", "payload": i, "session": s} for i in range(20)]
        jobs[5] = {"command": "echo", "job_id": "bad.id"}
        jobs[9] = {"command": "echo", "session": "bad session"}
        out = self.c.submit_batch(jobs)
        self.assertEqual(len(out), 20)
        self.assertIsInstance(out[5], pc.BadRequest)
        self.assertIsInstance(out[9], pc.BadRequest)
        for i, sub in enumerate(out):
            if i in (5, 9):
                continue
            self.assertIsInstance(sub, pc.Submitted, sub)
            self.assertEqual(self.c.result(sub.id, wait=60, seq=sub.seq)["result"], i)

    def test_typed_errors(self):
        with self.assertRaises(pc.BadRequest):
            self.c.submit("echo", 1, job_id="has.a.dot")
        with self.assertRaises(pc.BadRequest):
            self.c.submit("echo", 1, session="not valid")
        # Just over the body limit (max payload + 4 KiB of slack).
        with self.assertRaises(pc.TooLarge):
            self.c.submit("echo", "x" * (MAX_PAYLOAD + 8192))
        with self.assertRaises(pc.NotFound):
            self.c.result(uid("unknown"))
        with self.assertRaises(pc.NotFound):
            self.c.dead_letter(999999)
        with self.assertRaises(ValueError):
            self.c.submit("", 1)
        down = pc.Client("http://127.0.0.1:9", token=TOKEN, timeout=5)
        with self.assertRaises(pc.Unavailable):
            down.status()

    def test_fleet_views(self):
        agents = self.c.agents()
        self.assertGreaterEqual(len(agents), 1)
        self.assertTrue(all(a["name"] for a in agents))
        queues = self.c.queues()
        self.assertEqual(queues[0]["name"], "default")
        self.assertEqual(queues[0]["agents"], len(agents))
        self.assertIn("agents", self.c.status())

    def test_dead_letters(self):
        # A retryable failure with one attempt is exhausted: dead-lettered.
        sub = self.c.submit("retry", None, job_id=uid("dead"), max_attempts=1)
        res = self.c.result(sub.id, wait=60, seq=sub.seq)
        self.assertEqual(res["error"]["kind"], "exhausted")
        letters = [d for d in self.c.dead_letters(limit=1000) if d["job_id"] == sub.id]
        self.assertEqual(len(letters), 1, letters)
        seq = letters[0]["seq"]
        self.assertEqual(self.c.dead_letter(seq)["job_id"], sub.id)
        self.assertEqual(self.c.replay(seq), {"replayed": seq})
        with self.assertRaises(pc.NotFound):
            self.c.dead_letter(seq)
        # The replay runs again and dies again: a new letter.
        deadline = time.monotonic() + 60
        while True:
            again = [d for d in self.c.dead_letters(limit=1000) if d["job_id"] == sub.id]
            if again:
                break
            self.assertLess(time.monotonic(), deadline, "the replayed job was not dead-lettered again")
            time.sleep(0.05)  # poll interval
        many = self.c.replay(again[0]["seq"], 999999)
        self.assertEqual((many["replayed"], many["failed"]), (1, 1))
        self.assertEqual([i["status"] for i in many["items"]], [200, 404])
        purged = self.c.purge_dead_letters()
        self.assertGreaterEqual(purged["purged"], 0)
        self.assertIn("through", purged)

    def test_cancel(self):
        # Cancellation is DELETE /v1/jobs/{id}. A dispatcher without it
        # answers with the mux's 404, raised as Unsupported (a NotFound).
        try:
            self.c.cancel(uid("probe"))
            supported = True
        except pc.Unsupported as e:
            self.assertIsInstance(e, pc.NotFound)
            self.assertIn("no such route", str(e))
            supported = False
        except pc.NotFound:
            supported = True
        if not supported:
            return
        sub = self.c.submit("sleep", {"ms": 20000}, timeout_ms=30000)
        self.c.cancel(sub.id)
        res = self.c.result(sub.id, wait=60, seq=sub.seq)
        self.assertFalse(res["ok"])
        self.assertEqual(res["error"]["kind"], "canceled")


class AsyncClientTest(unittest.TestCase):
    def test_async_calls_and_progress(self):
        async def main():
            c = pc.AsyncClient(URL, token=TOKEN)
            subs = await asyncio.gather(*(c.submit("echo", i, session=uid("a")) for i in range(10)))
            results = await asyncio.gather(*(c.result(s.id, wait=60, seq=s.seq) for s in subs))
            self.assertEqual([r["result"] for r in results], list(range(10)))
            job_id = uid("aprog")
            events = c.progress(job_id)
            first = asyncio.ensure_future(events.__anext__())
            # The stream opens in a thread and may go live after the job's
            # one progress report; the result event is never missed (the
            # server looks for the stored result once subscribed).
            sub = await c.submit("sleep", {"ms": 800}, job_id=job_id)
            ev = await asyncio.wait_for(first, 60)
            seen = [ev]
            async for e in events:
                seen.append(e)
            self.assertEqual(seen[-1].event, "result")
            self.assertEqual(seen[-1].data["id"], sub.id)
            with self.assertRaises(pc.Unauthorized):
                await pc.AsyncClient(URL).status()

        asyncio.run(main())


if __name__ == "__main__":
    unittest.main()
