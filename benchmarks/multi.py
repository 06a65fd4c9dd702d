"""Workload 7: several limits in one acquisition, uncontended.

ratebudget takes an RPM rate, a TPM rate and a USD cap in one atomic
acquisition. The nearest a peer comes is one limiter per limit, acquired in
sequence (two ``aiolimiter``s): not atomic (the first is spent while the
second is awaited) and with no way to express a spend cap at all.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

__all__ = ("candidates",)

Run = Callable[[int], Awaitable[float]]


def _ratebudget(with_cap: bool) -> Run:
    async def run(n: int) -> float:
        from ratebudget import Cap, Limiter, Rate

        limits: list[Rate | Cap] = [
            Rate(requests=10**9, per=1),
            Rate(tokens=10**12, per=1),
        ]
        if with_cap:
            limits.append(Cap(usd=10**9))
        limiter = Limiter(*limits)
        for _ in range(min(n, 1000)):
            async with limiter.acquire(100, usd="0.0001"):
                pass
        start = time.perf_counter()
        for _ in range(n):
            async with limiter.acquire(100, usd="0.0001"):
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
