"""A process of its own for test_live_limits: builds a limiter, then after
``go`` on stdin looks (a store call each time) until its limits are no
longer the code's, and prints what it then sees and decides (JSON)."""

from __future__ import annotations

import json
import sys
import time

from ratebudget import BudgetExceeded, Cap, Limiter


def main() -> None:
    url, name = sys.argv[1:3]
    limiter = Limiter(Cap(usd="10"), store=url, name=name)
    limiter.sync.snapshot()
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 10
    while limiter.limits == limiter.code_limits and time.monotonic() < deadline:
        limiter.sync.snapshot()
        time.sleep(0.01)
    snap = limiter.sync.snapshot()
    try:
        with limiter.sync.acquire(usd="2"):
            refused = False
    except BudgetExceeded:
        refused = True
    out = {
        "limits": [{x.axis: str(x.limit)} for x in limiter.limits],
        "used": str(snap.limits[0].used),
        "refused": refused,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
