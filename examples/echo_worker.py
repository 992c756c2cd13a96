#!/usr/bin/env python3
"""The smallest procfleet worker: command ``echo`` returns its payload unchanged.

Run it under an agent with ``--worker-cmd "python3 examples/echo_worker.py"``.
"""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "worker", "python")
)

import procfleet_worker as pw  # noqa: E402  (needs the path above)


@pw.handler("echo")
def echo(payload, session):
    return payload


if __name__ == "__main__":
    pw.run()
