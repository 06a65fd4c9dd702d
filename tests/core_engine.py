"""The decision core (``ratebudget._decide``) driven directly, as the memory
store drives it, for the property tests of the algorithm itself.

``Engine`` is one private state and plan on a ``FakeClock``: synchronous
operations, waiters that are plain queue entries. The simulators in the
tests play the part of ``Limiter._wait``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from ratebudget import _decide as core
from ratebudget._decide import Crossing, Entry, Exceeded, Inexact, TooLong
from ratebudget._exceptions import AcquireTimeout, BudgetExceeded
from ratebudget._limits import Cap, Rate
from ratebudget._plan import plan_spec
from ratebudget._snapshot import Snapshot, exceeded, snapshot_of, timed_out
from ratebudget._waiters import Waiter
from ratebudget.testing import FakeClock

__all__ = ("Engine", "Waiter")


class Engine:
    """One limiter's state and plan (nanosecond ticks), with the old engine's
    calling conventions: wake lists returned, refusals raised."""

    def __init__(self, limits: Sequence[Rate | Cap], clock: FakeClock) -> None:
        self.limits = tuple(limits)
        self.clock = clock
        self.state = core.State()
        self.spec = plan_spec(self.limits, 1)
        self.plan = self.spec.bind(self.state, clock.monotonic_ns())
        self.pers = tuple(getattr(s, "per", 1) for s in self.spec.slots)

    @property
    def queue(self) -> dict[Entry, None]:
        return self.state.queue

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        yield

    def _times(self) -> tuple[int, int]:
        return self.clock.monotonic_ns(), self.clock.time_ns() // 1000

    def _woken(self) -> list[Entry]:
        woken, self.state.woken = self.state.woken, []
        return woken

    def begin(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> int | Waiter | None:
        now, wall = self._times()
        got = core.acquire(self.state, self.plan, req, now, wall, timeout_ns, waiter)
        woken = self._woken()
        for w in woken:
            if isinstance(w, Waiter):
                w.wake()
        if isinstance(got, Exceeded):
            raise exceeded(self.limits, got, req, "acquiring")
        if isinstance(got, TooLong):
            raise timed_out(got, 1, timeout_ns)
        if isinstance(got, Waiter):
            got.arm()
        return got  # type: ignore[return-value]

    def poll(self, w: Waiter) -> tuple[list[Entry], int | None]:
        now, wall = self._times()
        deadline = core.poll(self.state, w, now, wall)
        if w.state == core.WAITING:
            w.arm()
        return self._woken(), deadline

    def error(self, w: Waiter) -> BaseException:
        assert w.error is not None
        if isinstance(w.error, Exceeded):
            return exceeded(self.limits, w.error, w.req, "acquiring")
        return timed_out(w.error, 1, None)

    def abort(self, w: Waiter) -> list[Entry]:
        now, wall = self._times()
        core.abort(self.state, w, now, wall)
        return self._woken()

    def settle(
        self, take: int, est: tuple[int, ...], actual: tuple[int, ...] | None
    ) -> tuple[list[Entry], list[Crossing] | Inexact | None]:
        now, wall = self._times()
        got = core.settle(self.state, self.plan, take, est, actual, now, wall)
        return self._woken(), got

    def record(self, req: tuple[int, ...]) -> tuple[list[Entry], list[Crossing]]:
        now, wall = self._times()
        got = core.record(self.state, self.plan, req, now, wall)
        if isinstance(got, Exceeded):
            raise BudgetExceeded("recording", axis="", limit=0, used=0, requested=0)
        assert isinstance(got, list)
        return self._woken(), got

    def foresee(self, req: tuple[int, ...]) -> int:
        """The wait (ns) ``req`` would be told now, behind the queue."""
        now = self.clock.monotonic_ns()
        at, levels = core._tail(self.state, now)
        return core._step(at, dict(levels), self.plan, req) - now

    def snapshot(self) -> Snapshot:
        now, wall = self._times()
        views, waiting = core.snapshot(self.state, self.plan, now, wall)
        return snapshot_of(self.limits, views, self.pers, waiting)


_ = AcquireTimeout  # the refusal the old engine raised on a timeout
