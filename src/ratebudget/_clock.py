"""The clock the limiter reads and sleeps on; injectable for tests."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ("Clock", "SystemClock")


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

    async def sleep_until(self, deadline_ns: int | None) -> None:
        """Sleep until ``monotonic_ns() >= deadline_ns`` (``None``: forever)."""
        ...

    def wait_until(self, event: threading.Event, deadline_ns: int | None) -> None:
        """Block the thread until ``event`` is set or the deadline passes."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic_ns()``, ``time.time()``, anyio sleeps."""

    __slots__ = ()

    # the builtins themselves, not wrappers: the hot path reads the clock once
    monotonic_ns = staticmethod(time.monotonic_ns)
    time = staticmethod(time.time)

    async def sleep_until(self, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await anyio.sleep_forever()
        else:
            await anyio.sleep(max(0, deadline_ns - time.monotonic_ns()) / 1e9)

    def wait_until(self, event: threading.Event, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            event.wait()
        else:
            event.wait(max(0, deadline_ns - time.monotonic_ns()) / 1e9)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
