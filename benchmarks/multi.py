"""Workload 7: several limits in one acquisition, uncontended.

It also compares an acquisition on a scope three levels deep (each level
with its own rate and cap, charged down the path in one decision) with one
limiter holding the same six limits: the cost of the path itself.

ratebudget takes an RPM rate, a TPM rate and a USD cap in one atomic
acquisition. The nearest a peer comes is one limiter per limit, acquired in
sequence (two ``aiolimiter``s): not atomic (the first is spent while the
second is awaited) and with no way to express a spend cap at all.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable

__all__ = ("candidates",)

Run = Callable[[int], Awaitable[float]]


def _ratebudget(with_cap: bool, ledger: bool = False) -> Run:
    """RPM + TPM (+ a USD cap); with ``ledger``, a SQLite ledger that gets
    a row per commit (written by its own thread, which runs beside the
    timed loop: what it takes from the caller's thread counts)."""

    async def run(n: int) -> float:
        from ratebudget import Cap, Ledger, Limiter, Rate

        limits: list[Rate | Cap] = [
            Rate(requests=10**9, per=1),
            Rate(tokens=10**12, per=1),
        ]
        if with_cap:
            limits.append(Cap(usd=10**9))
        with tempfile.TemporaryDirectory() as scratch:
            book = Ledger(f"sqlite:///{scratch}/usage.db") if ledger else None
            limiter = Limiter(*limits, ledger=book)
            for _ in range(min(n, 1000)):
                async with limiter.acquire(100, usd="0.0001"):
                    pass
            if book is not None:
                await book.flush()
            start = time.perf_counter()
            for _ in range(n):
                async with limiter.acquire(100, usd="0.0001"):
                    pass
            elapsed = time.perf_counter() - start
            if book is not None:
                book.close()
        return elapsed / n * 1e9

    return run


def _sqlite(ledger: bool) -> Run:
    """RPM + USD cap on a SQLite store (each acquisition and each commit a
    transaction); with ``ledger``, the ledger in the store's file, a row
    written in the commit's transaction. At most 2,000 acquisitions a
    round: a transaction takes a quarter of a millisecond."""

    async def run(n: int) -> float:
        from ratebudget import Cap, Limiter, Rate

        n = min(n, 2_000)
        with tempfile.TemporaryDirectory() as scratch:
            limiter = Limiter(
                Rate(requests=10**9, per=1),
                Cap(usd=10**9),
                store=f"sqlite:///{scratch}/budgets.db",
                name="bench",
                ledger=ledger,
            )
            for _ in range(min(n, 200)):
                async with limiter.acquire(100, usd="0.0001"):
                    pass
            start = time.perf_counter()
            for _ in range(n):
                async with limiter.acquire(100, usd="0.0001"):
                    pass
            elapsed = time.perf_counter() - start
            limiter.store.close()
        return elapsed / n * 1e9

    return run


def _scopes(depth: int) -> Run:
    """An RPM rate and a USD cap at each of ``depth`` levels: as scopes
    (org > team > user) charged down the path, or (``depth`` negative) as
    one flat limiter holding all of them (the same work in one state)."""

    async def run(n: int) -> float:
        from ratebudget import Cap, Limiter, Rate

        def level(k: int) -> list[Rate | Cap]:
            # distinct limits: one flat limiter keeps each its own counter
            return [Rate(requests=10**9 + k, per=1), Cap(usd=10**9 + k)]

        if depth > 0:
            limiter = Limiter(*level(0))
            for k in range(1, depth):
                limiter = limiter.child(f"s{k}", *level(k))
        else:
            limiter = Limiter(*[x for k in range(-depth) for x in level(k)])
        for _ in range(min(n, 1000)):
            async with limiter.acquire(usd="0.0001"):
                pass
        start = time.perf_counter()
        for _ in range(n):
            async with limiter.acquire(usd="0.0001"):
                pass
        return (time.perf_counter() - start) / n * 1e9

    return run


async def _two_aiolimiters(n: int) -> float:
    from aiolimiter import AsyncLimiter

    rpm = AsyncLimiter(10**9, 1)
    tpm = AsyncLimiter(10**12, 1)
    for _ in range(min(n, 1000)):
        async with rpm:
            await tpm.acquire(100)
    start = time.perf_counter()
    for _ in range(n):
        async with rpm:
            await tpm.acquire(100)
    return (time.perf_counter() - start) / n * 1e9


def candidates() -> dict[str, tuple[tuple[str, ...], Run]]:
    """name -> (backends, run(n) -> ns per acquisition)."""
    out: dict[str, tuple[tuple[str, ...], Run]] = {
        "ratebudget: RPM + TPM + USD cap": (("asyncio", "trio"), _ratebudget(True)),
        "ratebudget: RPM + TPM": (("asyncio", "trio"), _ratebudget(False)),
        "ratebudget: RPM + TPM + USD cap, a row per commit in a SQLite ledger": (
            ("asyncio", "trio"),
            _ratebudget(True, ledger=True),
        ),
        "ratebudget on a SQLite store: RPM + USD cap": (("asyncio",), _sqlite(False)),
        "ratebudget on a SQLite store: RPM + USD cap, ledger in its file": (
            ("asyncio",),
            _sqlite(True),
        ),
        "ratebudget: 3 scopes down a path, RPM + USD cap at each": (
            ("asyncio", "trio"),
            _scopes(3),
        ),
        "ratebudget: one limiter with the same 3 RPM rates + 3 USD caps": (
            ("asyncio", "trio"),
            _scopes(-3),
        ),
    }
    try:
        import aiolimiter  # noqa: F401
    except ImportError:
        pass
    else:
        out["two aiolimiters in sequence: RPM, TPM (no USD cap)"] = (
            ("asyncio",),
            _two_aiolimiters,
        )
    return out
