"""Helpers shared by the tests: exact fake time, a fast settle, short test
ids, the real CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import trio.lowlevel
import trio.testing

from ratebudget import Limiter
from ratebudget.testing import FakeClock, store_busy

NS = 1_000_000_000


def short_id(value: object) -> str:
    """A test id that stays readable for a number of hundreds of digits."""
    try:
        text = str(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return type(value).__name__
    return text if len(text) <= 24 else f"{text[:8]}..{len(text)}chars"


async def settle() -> None:
    """Wait until every other task is blocked and no store call is under way.

    ``anyio.wait_all_tasks_blocked`` sleeps 0.1 s per call on asyncio; this
    spins on ``sleep(0)`` and looks at each task's pending future instead.
    """
    for _ in range(100_000):
        await _blocked()
        if not store_busy():
            await _blocked()
            if not store_busy():
                return
        await anyio.sleep(0.0005)
    raise AssertionError("store calls never finished")


async def _blocked() -> None:
    if trio.lowlevel.in_trio_run():
        await trio.testing.wait_all_tasks_blocked()
        return
    me = asyncio.current_task()
    for _ in range(100_000):
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not me and (waiter is None or waiter.done()):
                break
        else:
            return
    raise AssertionError("tasks never settled")


def advance_to_ns(clock: FakeClock, target_ns: int) -> None:
    """Move ``clock`` to exactly ``target_ns``."""
    clock.advance_ns(target_ns - clock.monotonic_ns())


async def run_until(clock: FakeClock, target_ns: int) -> None:
    """Let fake time pass to ``target_ns``, stopping at every wake-up on the way."""
    await settle()
    while (at := clock.next_deadline_ns()) is not None and at <= target_ns:
        advance_to_ns(clock, max(at, clock.monotonic_ns()))
        await settle()
    advance_to_ns(clock, max(target_ns, clock.monotonic_ns()))
    await settle()


async def run_out(clock: FakeClock) -> None:
    """Let fake time pass, wake-up by wake-up, until nobody sleeps."""
    await settle()
    while (at := clock.next_deadline_ns()) is not None:
        advance_to_ns(clock, max(at, clock.monotonic_ns()))
        await settle()


class Grants:
    """Acquire from tasks; note the order and the fake time of each grant."""

    def __init__(self, limiter: Limiter, clock: FakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.order: list[str] = []
        self.at: dict[str, int] = {}

    def acquirer(
        self, name: str, tokens: int = 0, **amounts: int
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            await self.limiter.acquire(tokens, **amounts)
            self.order.append(name)
            self.at[name] = self.clock.monotonic_ns()

        return run


def ratebudget(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a subprocess (piped: plain text)."""
    return subprocess.run(
        [sys.executable, "-m", "ratebudget", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
