"""The clock the limiter reads and sleeps on; injectable for tests."""

from __future__ import annotations

import threading
import time
from asyncio import _get_running_loop as _running_loop
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = ("Clock", "Schedule", "Sleeper", "SystemClock", "wall_us")


class Sleeper(Protocol):
    """What ``Clock.wait`` sleeps on: an event of the running event loop."""

    def set(self) -> None:
        """End the sleep (called in the sleeper's own thread)."""
        ...

    def wait(self) -> Awaitable[object]:
        """An awaitable that completes once ``set()`` was called."""
        ...


Schedule = Callable[[int, Callable[[], None]], Callable[[], object] | None]
"""``clock.schedule(deadline_ns, callback)``: a cancel function, or ``None``."""


@runtime_checkable
class Clock(Protocol):
    """Time source of a limiter.

    ``monotonic_ns`` stamps rate state and waits; ``time`` (seconds since the
    epoch) places caps in their calendar period. Both sleeps return early
    without error when woken another way (a cancel scope, an event).
    """

    def monotonic_ns(self) -> int:
        """Monotonic time in integer nanoseconds, shared by every thread."""
        ...

    def time(self) -> float:
        """Wall-clock time in seconds since the epoch."""
        ...

    # optional: ``time_ns()``, the wall clock in exact integer nanoseconds
    # (stores and calendar periods use it when the clock has it)

    async def sleep_until(self, deadline_ns: int | None) -> None:
        """Sleep until ``monotonic_ns() >= deadline_ns`` (``None``: forever)."""
        ...

    async def wait(self, event: Sleeper, deadline_ns: int | None) -> None:
        """Wait until ``event`` is set or the deadline passes (``None``: no deadline).

        ``event`` may be an ``anyio.Event``.
        """
        ...

    def wait_until(self, event: threading.Event, deadline_ns: int | None) -> None:
        """Block the thread until ``event`` is set or the deadline passes."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic_ns()``, ``time.time()``, anyio sleeps."""

    __slots__ = ()

    # the builtins themselves, not wrappers: the hot path reads the clock once
    monotonic_ns = staticmethod(time.monotonic_ns)
    time_ns = staticmethod(time.time_ns)
    time = staticmethod(time.time)

    async def sleep_until(self, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await anyio.sleep_forever()
        else:
            await anyio.sleep(max(0, deadline_ns - time.monotonic_ns()) / 1e9)

    async def wait(self, event: Sleeper, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await event.wait()
            return
        delay = (deadline_ns - time.monotonic_ns()) / 1e9
        if delay <= 0:
            await anyio.lowlevel.checkpoint()
            return
        cancel = self.schedule(deadline_ns, event.set)
        if cancel is not None:  # a timer that sets the event: no cancel scope
            try:
                await event.wait()
            finally:
                cancel()
            return
        with anyio.move_on_after(delay):
            await event.wait()

    def schedule(
        self, deadline_ns: int, callback: Callable[[], None]
    ) -> Callable[[], object] | None:
        """Call ``callback`` in this thread's event loop at the deadline.

        Returns a function that cancels the call, or ``None`` where that is
        not possible (outside asyncio): the caller then wakes the sleeper,
        which sets its own deadline. Optional for custom clocks.
        """
        loop = _running_loop()
        if loop is None:
            return None
        delay = (deadline_ns - time.monotonic_ns()) / 1e9
        return loop.call_at(loop.time() + delay, callback).cancel

    def wait_until(self, event: threading.Event, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            event.wait()
        else:
            event.wait(max(0, deadline_ns - time.monotonic_ns()) / 1e9)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


def wall_us(clock: Clock) -> Callable[[], int]:
    """A function reading ``clock``'s wall time in integer microseconds."""
    time_ns = getattr(clock, "time_ns", None)
    if callable(time_ns):
        return lambda: int(time_ns()) // 1000
    return lambda: round(clock.time() * 1e6)
