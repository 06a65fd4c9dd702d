"""``FakeClock``: a clock that moves only when told, for tests that never sleep.

``clock.advance(seconds)`` moves both the monotonic and the wall clock and
wakes every sleeper whose deadline came. Use it as
``Limiter(..., clock=FakeClock())``; it works on asyncio and trio (sleepers
must belong to the event loop that calls ``advance``) and with plain threads
blocked in ``limiter.sync``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from .._clock import Sleeper

if TYPE_CHECKING:
    from .._limiter import Limiter

__all__ = ("FakeClock",)

_NS = 1_000_000_000


class FakeClock:
    """A manual clock for tests (like ``trio.testing.MockClock``)."""

    def __init__(
        self, start: datetime | float = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ) -> None:
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValueError("FakeClock(start=...) needs an aware datetime")
            start = start.timestamp()
        self._wall0 = float(start)
        self._wall0_ns = round(Decimal(repr(self._wall0)) * _NS)
        self._now = 0
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._sleepers: list[tuple[int, int, Callable[[], None]]] = []

    def monotonic_ns(self) -> int:
        return self._now

    def time(self) -> float:
        return self._wall0 + self._now / _NS

    def time_ns(self) -> int:
        """Wall-clock time in integer nanoseconds: exact, unlike ``time()``."""
        return self._wall0_ns + self._now

    @property
    def seconds(self) -> float:
        """Monotonic seconds elapsed since the clock was made."""
        return self._now / _NS

    def _register(
        self, deadline_ns: int, callback: Callable[[], None], due: bool = False
    ) -> tuple[int, int, Callable[[], None]] | None:
        """Note a sleeper (``None``: due already, noted nowhere, unless
        ``due``: then the next ``advance`` calls it). The time is read under
        the lock that ``advance`` holds: an advance from another thread
        lands wholly before (the sleeper is due) or after (it pops the
        sleeper), never between the look and the note."""
        with self._lock:
            if deadline_ns <= self._now and not due:
                return None
            entry = (deadline_ns, next(self._seq), callback)
            heapq.heappush(self._sleepers, entry)
        return entry

    def _unregister(self, entry: tuple[int, int, Callable[[], None]]) -> None:
        with self._lock:
            try:
                self._sleepers.remove(entry)
            except ValueError:
                return
            heapq.heapify(self._sleepers)

    async def sleep_until(self, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await anyio.sleep_forever()
            return
        await self.wait(anyio.Event(), deadline_ns)

    async def wait(self, event: Sleeper, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await event.wait()
            return
        entry = self._register(deadline_ns, event.set)
        if entry is None:
            await anyio.lowlevel.checkpoint()
            return
        try:
            await event.wait()
        finally:
            self._unregister(entry)

    def schedule(
        self, deadline_ns: int, callback: Callable[[], None]
    ) -> Callable[[], object]:
        """Call ``callback`` when fake time reaches the deadline (in ``advance``)."""
        entry = self._register(deadline_ns, callback, due=True)
        assert entry is not None
        return lambda: self._unregister(entry)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of fake time."""
        await self.sleep_until(self._now + math.ceil(seconds * _NS))

    def wait_until(self, event: threading.Event, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            event.wait()
            return
        entry = self._register(deadline_ns, event.set)
        if entry is None:
            return
        try:
            event.wait()
        finally:
            self._unregister(entry)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake the sleepers now due."""
        if not seconds >= 0:
            raise ValueError(f"advance({seconds!r}): time only moves forward")
        self.advance_ns(math.ceil(seconds * _NS))

    def advance_ns(self, ns: int) -> None:
        """Move time forward by exactly ``ns`` nanoseconds (no float rounding)."""
        if ns < 0:
            raise ValueError(f"advance_ns({ns!r}): time only moves forward")
        due: list[Callable[[], None]] = []
        with self._lock:
            self._now += ns
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
        for callback in due:
            callback()

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return len(self._sleepers)

    def next_deadline(self) -> float | None:
        """Seconds until the earliest pending sleep ends, or ``None``."""
        deadline = self.next_deadline_ns()
        return None if deadline is None else max(0, deadline - self._now) / _NS

    def next_deadline_ns(self) -> int | None:
        """The earliest pending sleep's deadline (monotonic ns), or ``None``.

        ``clock.advance_ns(clock.next_deadline_ns() - clock.monotonic_ns())``
        lands exactly on it.
        """
        with self._lock:
            return self._sleepers[0][0] if self._sleepers else None

    def __repr__(self) -> str:
        return f"<FakeClock at {self._now / _NS:.6f}s, {len(self._sleepers)} sleeping>"


def store_busy(*limiters: Limiter) -> bool:
    """Whether a store call of any of ``limiters`` (none given: of any
    limiter of this process) is under way.

    For tests on a ``FakeClock``: fake time may only move on once every
    answer a shared store owes has arrived (a memory store is never busy).
    """
    if not limiters:
        from ..stores._calls import busy

        return busy()
    return any(limiter._b.busy() for limiter in limiters)
