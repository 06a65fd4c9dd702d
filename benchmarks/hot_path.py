"""Uncontended acquisition cost: ratebudget against its floor and its peers.

Run: ``python benchmarks/hot_path.py [--backend asyncio|trio] [--n 100000]``.
Prints the median ns per ``async with`` over several rounds, measured in
one process, and each as a ratio to ratebudget. Absolute times drift on a
shared machine; quote the ratios. (The full peer suite is issue #3's.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ratebudget import Limiter, Rate

Factory = Callable[[], Any]


class InlineBucket:
    """The floor: a token bucket computed inline, with no lease and no lock."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.level, self.last = burst, time.monotonic()

    async def __aenter__(self) -> None:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.last) * self.rate)
        self.last = now
        self.level -= 1

    async def __aexit__(self, *exc: object) -> None:
        return None


async def _per_op(factory: Factory, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        async with factory():
            pass
    return (time.perf_counter() - start) / n * 1e9


def _candidates() -> dict[str, Callable[[], Awaitable[Factory]]]:
    async def ratebudget() -> Factory:
        limiter = Limiter(Rate(tokens=10**12, per=1))
        return lambda: limiter.acquire(1)

    async def anyio_lock() -> Factory:
        lock = anyio.Lock()
        return lambda: lock

    async def inline() -> Factory:
        bucket = InlineBucket(1e12, 1e12)
        return lambda: bucket

    found: dict[str, Callable[[], Awaitable[Factory]]] = {
        "ratebudget": ratebudget,
        "anyio.Lock": anyio_lock,
        "inline bucket (floor)": inline,
    }
    try:
        from aiolimiter import AsyncLimiter
    except ImportError:
        pass
    else:

        async def aiolimiter() -> Factory:
            limiter = AsyncLimiter(1e12, 1)
            return lambda: limiter

        found["aiolimiter (asyncio only)"] = aiolimiter
    return found


async def run(n: int, rounds: int, backend: str) -> dict[str, float]:
    results: dict[str, list[float]] = {}
    candidates = _candidates()
    for _ in range(rounds):
        for name, make in candidates.items():
            if "asyncio only" in name and backend != "asyncio":
                continue
            factory = await make()
            results.setdefault(name, []).append(await _per_op(factory, n))
    return {name: statistics.median(times) for name, times in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    medians = anyio.run(run, args.n, args.rounds, args.backend, backend=args.backend)
    ours = medians["ratebudget"]
    print(
        f"uncontended `async with`, {args.backend}, median of {args.rounds} x {args.n}"
    )
    for name, ns in medians.items():
        print(f"  {name:28} {ns:8.0f} ns   {ns / ours:5.2f}x ratebudget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
