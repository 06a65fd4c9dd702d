"""A worker process for the ledger's many-process test.

``python tests/ledger_worker.py STORE LEDGER NAME SEED COUNT [KILL_AT]``:
random commits, releases and records on a tree of scopes (``NAME``,
``NAME/a``, ``NAME/b``), each on its own event loop task in turn; it prints
``settled <lease id>`` (and ``recorded``) once each call returned, and, with
``KILL_AT``, kills itself (SIGKILL) right after its ``KILL_AT``-th commit
returned. ``LEDGER`` is a ledger URL, or ``True``: the store's own file.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from decimal import Decimal

import anyio

from ratebudget import Cap, Limiter


async def main(
    store: str, ledger: str, name: str, seed: int, count: int, kill_at: int
) -> None:
    rnd = random.Random(seed)
    book: str | bool = True if ledger == "True" else ledger
    org = Limiter(
        Cap(usd="1000"), Cap(tokens=10**9), store=store, name=name, ledger=book
    )
    scopes = [org, org.child("a", Cap(usd="500")), org.child("b")]
    commits = 0
    for _ in range(count):
        scope = rnd.choice(scopes)
        est = Decimal(rnd.randrange(1, 10**6)).scaleb(-9)
        what = rnd.random()
        if what < 0.15:
            await scope.record(usd=est, tokens=rnd.randrange(1, 100))
            print("recorded", flush=True)
            continue
        lease = await scope.acquire(rnd.randrange(1, 100), usd=est)
        if what < 0.3:
            await lease.release()
        else:
            await lease.commit(
                usd=est * rnd.randrange(0, 3), tokens=rnd.randrange(1, 200)
            )
            commits += 1
        print("settled", lease.id, flush=True)
        if commits == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if org._ledger is not None:
        await org._ledger.flush()


if __name__ == "__main__":
    store, ledger, name, seed, count = sys.argv[1:6]
    kill_at = int(sys.argv[6]) if len(sys.argv) > 6 else -1
    anyio.run(main, store, ledger, name, int(seed), int(count), kill_at)
