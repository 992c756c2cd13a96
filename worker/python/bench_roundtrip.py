"""Measure sequential call round trips per second against a worker over pipes.

    python3 worker/python/bench_roundtrip.py [-n 20000] [--payload-bytes 100]

Runs examples/echo_worker.py (the SDK) and, for comparison, a hand-written
framed echo loop with no SDK (the same per-frame JSON decode and encode, the
least any worker must do). The client side is this Python process, so the
numbers include its own framing cost; they are for orientation, not a target.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_WORKER = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "echo_worker.py")

RAW_WORKER = r"""
import json, os, sys
out = os.dup(1); os.dup2(2, 1)
read = open(os.dup(0), "rb", buffering=1 << 16).read
def send(obj):
    b = json.dumps(obj, separators=(",", ":")).encode()
    os.write(out, len(b).to_bytes(4, "big") + b)
send({"type": "ready", "protocol": 1, "pid": os.getpid(), "commands": ["echo"]})
while True:
    h = read(4)
    if len(h) < 4:
        break
    m = json.loads(read(int.from_bytes(h, "big")))
    if m["type"] == "shutdown":
        break
    send({"type": "result", "id": m["id"], "ok": True, "result": m.get("payload")})
"""


def bench(argv, n, payload):
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    read = open(p.stdout.fileno(), "rb", buffering=1 << 16, closefd=False).read
    wfd = p.stdin.fileno()

    def recv():
        h = read(4)
        if len(h) < 4:
            raise EOFError("worker exited")
        return json.loads(read(int.from_bytes(h, "big")))

    try:
        assert recv()["type"] == "ready"
        msg = {"type": "call", "id": 0, "command": "echo", "session": "bench", "payload": payload}
        start = time.perf_counter()
        for i in range(1, n + 1):
            msg["id"] = i
            b = json.dumps(msg, separators=(",", ":")).encode()
            os.write(wfd, len(b).to_bytes(4, "big") + b)
            r = recv()
            if r.get("id") != i or r.get("ok") is not True:
                raise RuntimeError("bad reply %r" % r)
        elapsed = time.perf_counter() - start
        b = json.dumps({"type": "shutdown"}).encode()
        os.write(wfd, len(b).to_bytes(4, "big") + b)
        p.wait(timeout=10)
        return n / elapsed
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="round trips per run")
    ap.add_argument("--payload-bytes", type=int, default=100, help="size of the echoed string")
    args = ap.parse_args()
    payload = {"data": "x" * args.payload_bytes}
    for name, argv in (
        ("raw framed echo (no SDK)", [sys.executable, "-c", RAW_WORKER]),
        ("examples/echo_worker.py (SDK)", [sys.executable, ECHO_WORKER]),
    ):
        rate = bench(argv, args.n, payload)
        print("%-32s %9.0f round trips/s  %7.1f us/call" % (name, rate, 1e6 / rate))


if __name__ == "__main__":
    main()
