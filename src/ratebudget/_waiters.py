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
from typing import TYPE_CHECKING, Any

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
    spare: Alarm | None = None  # a granted head's timer, for the next head
    thread = get_ident()
    for w in woken:
        if w is not but and isinstance(w, Waiter):
            if isinstance(w, TaskWaiter):
                fut = w.fut
                if (
                    fut is not None
                    and w.state != WAITING
                    and w.timer is None
                    and w.thread == thread
                ):
                    # ``wake_passing``'s common case, inlined: a grant made
                    # on its behalf in its own asyncio thread
                    if not fut.done():
                        fut.set_result(None)
                else:
                    spare = w.wake_passing(spare)
            else:
                w.wake()
    if spare is not None:
        spare.stop()


class Alarm:
    """A head's timer, handed on to the next head of its thread.

    In a storm of arrivals every arrival serves the queue, granting head
    after head on their behalf long before their timers ring: the next head
    takes over the timer of the one just granted (it rings first, then
    again at the new head's deadline) instead of setting one per grant.
    """

    __slots__ = ("at", "cancel", "schedule", "target")

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.cancel: Callable[[], object] | None = None
        self.at = 0  # when it rings, if ``cancel`` is set
        self.target: TaskWaiter | None = None

    def ring_for(self, w: TaskWaiter, deadline: int) -> bool:
        """Wake ``w`` at ``deadline``; ``False``: the clock cannot here."""
        if self.cancel is None or self.at > deadline:
            cancel = self.schedule(deadline, self.ring)
            if cancel is None:
                return False
            if self.cancel is not None:
                self.cancel()
            self.cancel, self.at = cancel, deadline
        self.target = w
        return True

    def ring(self) -> None:
        self.cancel = None
        w = self.target
        if w is None or w.state != WAITING:
            return
        deadline = w.deadline
        if deadline is None or deadline <= self.at or not self.ring_for(w, deadline):
            w.set()  # else: a head that took it over, due later

    def stop(self) -> None:
        self.target = None
        cancel = self.cancel
        if cancel is not None:
            self.cancel = None
            cancel()


class TaskWaiter(Waiter):
    """A waiter that is an async task; it is also the event it sleeps on.

    It allocates little, which keeps the garbage collector quiet with
    thousands queued: on asyncio it sleeps on a bare future (no
    ``asyncio.Event``, no cancel scope), on trio it parks its task itself
    (no ``trio.Event``), elsewhere it sleeps on an ``anyio.Event``.
    """

    __slots__ = (
        "due",
        "event",
        "fut",
        "loop",
        "native",
        "schedule",
        "task",
        "thread",
        "timer",
    )

    def __init__(self, schedule: Schedule | None = None) -> None:
        Entry.__init__(self)  # and ``Waiter``'s, inlined: one is made per wait
        self.backoff = 0.005
        self.schedule = schedule
        self.timer: Alarm | None = None
        self.thread = get_ident()
        self.fut: Future[None] | None = None
        self.event: Sleeper | None = None
        self.task: object = None  # trio: the task parked until ``set``
        self.due = False  # trio: ``set`` since ``arm``
        # how another thread wakes this one: asyncio's loop, found cheaply,
        # else the backend's (trio's run_sync_soon, or anyio's token's)
        loop = self.loop = _running_loop()
        self.native = None if loop is not None else _native()

    def arm(self) -> None:
        if self.timer is not None:
            self.disarm()
        if self.loop is not None:
            self.fut = self.loop.create_future()
        elif self.native is not None and self.native[1]:
            self.due = False
        else:
            self.event = anyio.Event()

    def disarm(self) -> None:
        """Cancel the timer ``wake`` may have set (the waiter looks anyway)."""
        alarm = self.timer
        if alarm is not None:
            self.timer = None
            if alarm.target is self:
                alarm.stop()

    def set(self) -> None:
        """End the current sleep (in the waiter's own thread)."""
        fut = self.fut
        if fut is not None:
            if not fut.done():
                fut.set_result(None)
        elif self.event is not None:
            self.event.set()
        else:
            self.due = True
            task = self.task
            if task is not None:
                self.task = None
                _trio.reschedule(task)

    def wait(self) -> Awaitable[object]:
        """The current sleep, to await (see ``Clock.wait``)."""
        if self.fut is not None:
            return self.fut
        if self.event is not None:
            return self.event.wait()
        return self._park()

    async def _park(self) -> None:
        """trio: sleep until ``set`` (a checkpoint, like ``trio.Event.wait``)."""
        if self.due:
            await _trio.checkpoint()
            return
        self.task = _trio.current_task()
        await _trio.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> object:
        self.task = None  # cancelled: ``set`` must not reschedule it now
        return _trio.Abort.SUCCEEDED

    def wake(self) -> None:
        spare = self.wake_passing(None)
        if spare is not None:
            spare.stop()

    def wake_passing(self, spare: Alarm | None) -> Alarm | None:
        """``wake``, taking over ``spare`` (a granted head's timer) if it
        needs a timer; returns the timer the next head may take over."""
        if get_ident() != self.thread:
            loop, native = self.loop, self.native
            try:
                if loop is not None:
                    loop.call_soon_threadsafe(self.set)
                else:
                    assert native is not None
                    native[0](self.set)
            except RuntimeError:  # its event loop has closed: nobody to wake
                pass
            return spare
        deadline = self.deadline
        if self.state == WAITING:
            if deadline is not None and self.schedule is not None:
                # woken only to learn its turn (it became the head): rather
                # than wake it now to set its own timer, set the timer for
                # it, so it wakes once, when its turn comes
                alarm = self.timer
                if alarm is None:
                    if spare is not None and spare.schedule == self.schedule:
                        alarm, spare = spare, None
                    else:
                        alarm = Alarm(self.schedule)
                if alarm.ring_for(self, deadline):
                    self.timer = alarm
                    return spare
        else:
            alarm = self.timer
            if alarm is not None and alarm.target is self and spare is None:
                self.timer = None  # it will not ring for this one: pass it on
                spare = alarm
        self.set()
        return spare


CallSoon = Callable[[Callable[[], object]], object]
Native = tuple[CallSoon, bool]
"""How another thread runs a callback in a waiter's loop; whether it parks
its trio task itself."""

_trio: Any = None  # ``trio.lowlevel``, once a waiter has met trio
_trio_native: Any = None  # a ``trio.lowlevel.RunVar``: each trio run's ``Native``


def _native() -> Native:
    """Off asyncio: how this thread's event loop is reached from another."""
    global _trio, _trio_native
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_run():
        # trio's own token, without anyio's backend dispatch; kept for the
        # run, as thousands of waiters may queue in it
        if _trio_native is None:
            _trio = trio.lowlevel
            _trio_native = _trio.RunVar("ratebudget_native")
        native: Native | None = _trio_native.get(None)
        if native is None:
            native = (_trio.current_trio_token().run_sync_soon, True)
            _trio_native.set(native)
        return native
    native_token = anyio.lowlevel.current_token().native_token
    call_soon = getattr(native_token, "call_soon_threadsafe", None)
    if call_soon is None:
        call_soon = native_token.run_sync_soon  # type: ignore[attr-defined]
    return call_soon, False


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
