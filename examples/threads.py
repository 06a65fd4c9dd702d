"""The blocking facade, ``limiter.sync``, shared by a pool of threads.

Forty documents are summarised by eight worker threads with a blocking,
simulated client (no network). All threads draw from one limiter: they wait
their turn for the provider's rate, in arrival order, and stop when the
budget is spent. A call that fails gives its budget reservation back. Runs in
well under a second::

    python examples/threads.py
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from ratebudget import AcquireTimeout, BudgetExceeded, Cap, Limiter, Rate

limiter = Limiter(
    Rate(requests=3_000, per="minute", burst=8),  # 50 per second, 8 at once
    Cap(usd="0.045"),  # a lifetime budget for this batch
)

_random = random.Random(3)
_random_lock = threading.Lock()


class ProviderError(Exception):
    pass


def summarise(doc_id: int) -> Decimal:
    """A blocking stand-in for an LLM client: returns the call's cost."""
    with _random_lock:
        latency = _random.uniform(0.005, 0.02)
        cost = Decimal(_random.randint(1_000, 2_000)) / 1_000_000
    time.sleep(latency)
    if doc_id % 13 == 5:
        raise ProviderError(f"document {doc_id}: the provider returned 500")
    return cost


def work(doc_id: int) -> str:
    try:
        with limiter.sync.acquire(usd="0.002", timeout=2) as lease:
            cost = summarise(doc_id)  # an exception here releases the reservation
            lease.commit(usd=cost)
            return "done"
    except ProviderError:
        return "failed (budget given back)"
    except BudgetExceeded:
        return "skipped: budget spent"
    except AcquireTimeout as exc:
        return f"skipped: busy, retry in {exc.retry_after}s"


def main() -> None:
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(40)))
    elapsed = time.monotonic() - start

    for outcome in sorted(set(results)):
        print(f"{results.count(outcome):3} {outcome}")
    snap = limiter.sync.snapshot()
    budget = snap.limits[1]
    print(f"spent ${budget.used} of ${budget.limit_amount} in {elapsed:.2f}s")
    assert budget.reserved == 0, "every lease was settled"
    assert budget.used <= budget.limit_amount


if __name__ == "__main__":
    main()
