"""Callers waiting in a limiter's queue: async tasks and plain threads.

A waiter is the queue entry the decision core keeps (``_decide.Entry``) plus
how its caller sleeps and is woken. Any thread may wake any waiter; a
waiter sleeps in its own event loop (``TaskWaiter``) or thread
(``ThreadWaiter``).
"""

from __future__ import annotations

import sys
import threading
from asyncio import _get_running_loop as _running_loop
from collections.abc import Awaitable, Callable, Iterable
from threading import get_ident
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ._clock import Schedule, Sleeper
from ._decide import WAITING, Entry

if TYPE_CHECKING:
    from asyncio import Future

__all__ = ("TaskWaiter", "ThreadWaiter", "Waiter", "wake_all")


class Waiter(Entry):
    """A queue entry with a caller behind it."""

    __slots__ = ("__weakref__", "backoff")

    def __init__(self) -> None:
        super().__init__()
        self.backoff = 0.005  # s: a shared store's look-again, when it has no time

    def arm(self) -> None:
        """Prepare to sleep (while the state is held): later wakes must land."""

    def wake(self) -> None:
        """Wake the sleeper (from any thread)."""


def wake_all(woken: Iterable[Entry], but: Entry | None = None) -> None:
    for w in woken:
        if w is not but and isinstance(w, Waiter):
            w.wake()


class TaskWaiter(Waiter):
    """A waiter that is an async task; it is also the event it sleeps on.

    On asyncio it sleeps on a bare future (no ``asyncio.Event``, no cancel
    scope: a waiter allocates little, which keeps the garbage collector
    quiet with thousands queued); elsewhere on the backend's own event.
    """

    __slots__ = ("event", "fut", "loop", "native", "schedule", "thread", "timer")

    def __init__(self, schedule: Schedule | None = None) -> None:
        Entry.__init__(self)  # and ``Waiter``'s, inlined: one is made per wait
        self.backoff = 0.005
        self.schedule = schedule
        self.timer: Callable[[], object] | None = None
        self.thread = get_ident()
        self.fut: Future[None] | None = None
        self.event: Sleeper | None = None
        # how another thread wakes this one: asyncio's loop, found cheaply,
        # else the backend's token (trio's ``run_sync_soon``) and its event
        loop = self.loop = _running_loop()
        self.native = None if loop is not None else _native()

    def arm(self) -> None:
        self.disarm()
        if self.loop is not None:
            self.fut = self.loop.create_future()
        else:
            assert self.native is not None
            self.event = self.native[1]()

    def disarm(self) -> None:
        """Cancel the timer ``wake`` may have set (the waiter looks anyway)."""
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer()

    def set(self) -> None:
        """End the current sleep (in the waiter's own thread)."""
        fut = self.fut
        if fut is not None:
            if not fut.done():
                fut.set_result(None)
        elif self.event is not None:
            self.event.set()

    def wait(self) -> Awaitable[object]:
        """The current sleep, to await (see ``Clock.wait``)."""
        if self.fut is not None:
            return self.fut
        assert self.event is not None
        return self.event.wait()

    def wake(self) -> None:
        if get_ident() == self.thread:
            deadline = self.deadline
            if (
                self.state == WAITING
                and deadline is not None
                and self.schedule is not None
            ):
                # woken only to learn its turn (it became the head): rather
                # than wake it now to set its own timer, set the timer for
                # it, so it wakes once, when its turn comes
                timer = self.schedule(deadline, self.set)
                if timer is not None:
                    self.disarm()
                    self.timer = timer
                    return
            self.set()
        else:
            loop, native = self.loop, self.native
            try:
                if loop is not None:
                    loop.call_soon_threadsafe(self.set)
                else:
                    assert native is not None
                    native[0](self.set)
            except RuntimeError:  # its event loop has closed: nobody to wake
                pass


def _native() -> tuple[Callable[[Callable[[], object]], object], Callable[[], Sleeper]]:
    """Off asyncio: how another thread runs a callback in this thread's event
    loop, and the event to sleep on there."""
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_run():
        # trio's own token and event, without anyio's backend dispatch
        return trio.lowlevel.current_trio_token().run_sync_soon, trio.Event
    native = anyio.lowlevel.current_token().native_token
    call_soon = getattr(native, "call_soon_threadsafe", None)
    return (
        call_soon if call_soon is not None else native.run_sync_soon,  # type: ignore[attr-defined]
        anyio.Event,
    )


class ThreadWaiter(Waiter):
    """A waiter that is a plain thread: it blocks on a ``threading.Event``."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def arm(self) -> None:
        self.event.clear()

    def wake(self) -> None:
        self.event.set()
