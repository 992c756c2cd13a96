#!/usr/bin/env python3
"""A procfleet worker whose one command takes a while and reports progress.

Command ``slow`` takes ``{"ms": N, "steps": K}`` (K defaults to 1), sleeps N
milliseconds in K equal steps, sends ``{"step": i, "steps": K, "elapsed_ms": …}``
as progress after each step, and returns ``{"slept_ms": N}``. Useful for
exercising job timeouts, in-progress keep-alives, progress forwarding and
cancellation: a canceled job stops at once, even mid-sleep (the SDK raises
``pw.Canceled`` in the handler), and the worker keeps serving.
"""

import os
import sys
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "python")
)

import procfleet_worker as pw  # noqa: E402  (needs the path above)

MAX_STEPS = 10000


def _number(payload, key, default=None):
    value = payload.get(key, default)
    if value is None:
        raise ValueError("payload field %r is required" % key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("payload field %r must be a non-negative number, got %r" % (key, value))
    return value


@pw.handler("slow")
def slow(payload, session):
    if not isinstance(payload, dict):
        raise TypeError("payload must be an object like {\"ms\": 500, \"steps\": 5}")
    ms = _number(payload, "ms")
    steps = _number(payload, "steps", 1)
    if int(steps) != steps or not 1 <= steps <= MAX_STEPS:
        raise ValueError("payload field 'steps' must be an integer in 1..%d" % MAX_STEPS)
    steps = int(steps)
    start = time.monotonic()
    for step in range(1, steps + 1):
        # Sleep to an absolute target so that per-step overhead does not
        # add up over many steps.
        delay = start + ms / 1000.0 * step / steps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        session.progress(
            {
                "step": step,
                "steps": steps,
                "elapsed_ms": round((time.monotonic() - start) * 1000.0, 3),
            }
        )
    return {"slept_ms": ms}


if __name__ == "__main__":
    pw.run()
