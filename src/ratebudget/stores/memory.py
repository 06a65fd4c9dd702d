"""``MemoryStore``: the decision core run inline, in this process.

Each name's state is guarded by one lock held only for short, non-blocking
critical sections, so one limiter can be shared by tasks of one event loop,
by several threads each running its own loop, and by plain threads. Nothing
awaits on the way: an uncontended acquisition never yields to the loop.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Final

from .. import _decide as core
from .._clock import wall_us
from .._decide import (
    Crossing,
    Exceeded,
    Inexact,
    Shadowed,
    SlotView,
    State,
)
from .._grab import grabber
from .._path import Climbs, Level
from .._plan import plan_spec
from .._waiters import Waiter, wake_all
from ._base import Acquired, Binding, Store

if TYPE_CHECKING:
    from .._clock import Clock
    from .._limits import Cap, Rate
    from ._ops import Book

__all__ = ("BiasedLock", "MemoryBinding", "MemoryStore")

# Biased locking needs the GIL's sequentially consistent attribute access.
_GIL: Final = bool(getattr(sys, "_is_gil_enabled", lambda: True)())

_take_now: Final = core.take_now
_join: Final = core.join


# take ids of different states never meet: lease ids stay unique in the process
_bases = itertools.count(1)


class BiasedLock:
    """A lock that the thread that made it skips until another thread comes.

    A ``threading.Lock`` costs as much as the rest of an acquisition on
    CPython 3.11. The owner raises ``busy`` and then checks it still owns
    the bias; another thread drops the bias (``owner = None``), then waits
    for ``busy`` to fall, then locks, and from then on everyone locks. Under
    the GIL one of the two always sees the other's write (Dekker's
    handshake), so they never overlap.
    """

    __slots__ = ("busy", "lock", "owner")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: int | None = get_ident() if _GIL else None
        self.busy = False

    def enter(self) -> bool:
        """Hold the state; returns whether by the bias (pass it to ``leave``)."""
        if self.owner == get_ident():
            self.busy = True
            if self.owner is not None:
                return True
            self.busy = False  # dropped meanwhile
            self.lock.acquire()
            return False
        self.guard().acquire()
        return False

    def leave(self, biased: bool) -> None:
        if biased:
            self.busy = False
        else:
            self.lock.release()

    def guard(self) -> threading.Lock:
        """The lock to hold, once the bias is dropped if this thread lacks it."""
        owner = self.owner
        if owner is not None and owner != get_ident():
            self.owner = None
        # Whoever dropped the bias, the owner may still be in its last
        # lock-free section (it raised ``busy`` before it could see
        # ``owner`` change): let it finish. It cannot start another.
        while self.busy:
            time.sleep(0)
        return self.lock


class _Shared:
    """One scope's state, and what its tree shares: one lock, the leases
    dropped unsettled (released by the next operation that holds the lock),
    the waiters on their way up (``_path``) and the child scopes' states."""

    __slots__ = ("climbs", "dropped", "gone", "kids", "lock", "state")

    def __init__(self, root: _Shared | None = None) -> None:
        self.state = State()
        self.state.take = next(_bases) << 40
        self.kids: dict[str, _Shared] = {}
        self.gone = False  # forgotten (an idle key): its bindings look anew
        if root is None:
            self.lock = BiasedLock()
            self.dropped: deque[Dropped] = deque()
            self.climbs = Climbs()
        else:
            self.lock, self.dropped, self.climbs = root.lock, root.dropped, root.climbs


Dropped = tuple[Callable[[int, tuple[int, ...]], None], int, tuple[int, ...]]
"""A lease dropped unsettled: its binding's release, its take and estimate."""


class MemoryStore(Store):
    """State in this process: limiters of one name on one ``MemoryStore`` share it."""

    url = "memory://"
    persistent = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _Shared] = {}
        # read by every acquisition: an instance's own attribute is read
        # faster than its class's
        self.live_rev = 0

    def bind(
        self,
        name: str | None,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        lease_ttl: float,
        on_store_error: str,
        shadow: bool = False,
        parent: Binding | None = None,
        keyed: bool = False,
    ) -> Binding:
        if parent is not None:
            from ._memory_path import MemoryPathBinding

            if not isinstance(parent, (MemoryBinding, MemoryPathBinding)):
                raise TypeError(f"{parent!r} is not a binding of a MemoryStore")
            assert name is not None
            return MemoryPathBinding(name, parent, limits, clock, shadow)
        if name is None:
            shared = _Shared()
        else:
            with self._lock:
                shared = self._states.get(name) or self._states.setdefault(
                    name, _Shared()
                )
        return MemoryBinding(shared, limits, clock, shadow)

    def __repr__(self) -> str:
        return "MemoryStore()"


def _release_dropped(dropped: deque[Dropped], climbs: Climbs, st: State) -> None:
    """Release the leases dropped unsettled in a tree (its lock held); the
    waiters that woke anywhere in it are moved to ``st``'s to wake."""
    while dropped:
        try:
            release, take, est = dropped.popleft()
        except IndexError:  # pragma: no cover - another thread took it
            return
        release(take, est)
    if climbs.touched:
        _gather(climbs, st)


def _gather(climbs: Climbs, st: State) -> None:
    """Move the waiters to wake in the states ``climbs`` touched into
    ``st.woken`` (the lock held), for one wake-up pass. Safe: ``climb``
    leaves none in a ``woken`` list that it would still take on up."""
    for other in climbs.touched:
        if other is not st and other.woken:
            st.woken.extend(other.woken)
            other.woken = []
    climbs.touched.clear()


class MemoryBinding(Binding):
    """One limiter on a ``MemoryStore``: every operation decided inline."""

    __slots__ = (
        "_climbs",
        "_clock",
        "_dropped",
        "_lock",
        "_monotonic_ns",
        "_shared",
        "_state",
        "_wall",
        "grab",
        "on_shadow",
        "plan",
        "spec",
        "tick_ns",
    )

    def __init__(
        self,
        shared: _Shared,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        shadow: bool = False,
    ) -> None:
        self._state = shared.state
        self._lock = shared.lock
        self._dropped = shared.dropped
        self._climbs = shared.climbs
        self._shared = shared
        self._clock = clock
        self._monotonic_ns = clock.monotonic_ns
        self._wall = wall_us(clock)
        self.tick_ns = 1
        self.spec = plan_spec(limits, 1, shadow)
        self.on_shadow: Callable[[list[Shadowed]], None] | None = None
        biased = self._lock.enter()
        try:
            self.plan = self.spec.bind(self._state, clock.monotonic_ns())
        finally:
            self._lock.leave(biased)
        self.grab = grabber(shared.lock, shared.state, self.plan, self._monotonic_ns)

    def rebound(self, limits: tuple[Rate | Cap, ...], shadow: bool) -> Binding:
        """A binding of this one's state with other limits (an unnamed
        limiter's live limits: its state is its own)."""
        return MemoryBinding(self._shared, limits, self._clock, shadow)

    @property
    def levels(self) -> list[Level]:
        """The path of this scope: its own level only (a root)."""
        return [Level(self._state, self.plan)]

    @property
    def _bounds(self) -> list[tuple[int, int]]:
        return [(0, len(self.plan.slots))]

    def drop(self, key: str, take: int, est: tuple[int, ...]) -> None:
        self._dropped.append((self._release, take, est))  # atomic: no lock

    def _release(self, take: int, est: tuple[int, ...]) -> None:
        core.settle(
            self._state, self.plan, take, est, None, self._monotonic_ns(), self._wall()
        )

    def _release_dropped(self) -> None:
        """Release the leases dropped unsettled in this tree (the lock held)."""
        _release_dropped(self._dropped, self._climbs, self._state)

    def _wake(self, but: Waiter | None = None) -> None:
        st = self._state
        if st.woken:
            woken, st.woken = st.woken, []
            wake_all(woken, but)

    def acquire(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> Acquired:
        lock = self._lock
        # ``BiasedLock.enter``, inlined: this is the hot path
        if lock.owner == get_ident():
            lock.busy = True
            biased = lock.owner is not None
            if not biased:
                lock.busy = False
                lock.lock.acquire()
        else:
            biased = False
            lock.guard().acquire()
        st = self._state
        try:
            plan = self.plan
            if not st.queue:
                if not plan.caps:
                    # nobody waits, no cap to check: the core's hot path at once
                    now = self._monotonic_ns()
                    if now >= st.clock:
                        st.clock = now
                        take = _take_now(st, plan, req, now)
                        if take:
                            return take
            elif waiter is not None and timeout_ns is None and not st.counters:
                # a storm of arrivals: while the head is not due, serving the
                # queue first would change nothing, so join it at once
                now = self._monotonic_ns()
                w = _join(st, plan, req, now, waiter)
                if w is not None:
                    w.arm()
                    return w
            if self._dropped:
                self._release_dropped()
            got = core.acquire(
                st,
                plan,
                req,
                self._monotonic_ns(),
                self._wall() if plan.calendar or st.queue else 0,
                timeout_ns,
                waiter,
            )
            if type(got) is not int and isinstance(got, Waiter):
                got.arm()  # ready to sleep until its deadline: no first poll
            shadowed = self._shadowed() if plan.shadow else None
        finally:
            if biased:
                lock.busy = False
            else:
                lock.lock.release()
            if st.woken:
                self._wake()
        if shadowed and self.on_shadow is not None:
            self.on_shadow(shadowed)
        return got  # type: ignore[return-value]  # the core's Entry is our Waiter

    def _shadowed(self) -> list[Shadowed]:
        """What the shadow caps would have refused in this call (lock held)."""
        st = self._state
        got, st.shadowed = st.shadowed, []
        return got

    def poll(self, w: Waiter) -> int | None:
        if w.state == core.GRANTED:
            w.state = core.CLAIMED
            return None
        with self._lock.guard():
            if self._dropped:
                self._release_dropped()
            deadline = core.poll(self._state, w, self._monotonic_ns(), self._wall())
            if w.state == core.WAITING:
                w.arm()
        self._wake(but=w)
        return deadline

    def abort(self, w: Waiter) -> None:
        with self._lock.guard():
            core.abort(self._state, w, self._monotonic_ns(), self._wall())
        self._wake()

    def settle(
        self,
        key: str,
        take: int,
        est: tuple[int, ...],
        actual: tuple[int, ...] | None,
        book: Book | None = None,
    ) -> list[Crossing] | Inexact | None:
        with self._lock.guard():
            if self._dropped:
                self._release_dropped()
            now, wall = self._monotonic_ns(), self._wall()
            out: list[Crossing] = []
            got: list[Crossing] | Inexact | None = out
            if not (
                (actual is None or actual is est)
                and core.settle_now(
                    self._state, self.plan, est, actual is est, now, wall, 0, out
                )
            ):
                got = core.settle(self._state, self.plan, take, est, actual, now, wall)
        self._wake()
        return got

    def record(
        self, req: tuple[int, ...], book: Book | None = None
    ) -> list[Crossing] | Exceeded | Inexact:
        with self._lock.guard():
            if self._dropped:
                self._release_dropped()
            got = core.record(
                self._state, self.plan, req, self._monotonic_ns(), self._wall()
            )
            shadowed = self._shadowed() if self.plan.shadow else None
        self._wake()
        if shadowed and self.on_shadow is not None:
            self.on_shadow(shadowed)
        return got

    def snapshot(self) -> tuple[tuple[SlotView, ...], int]:
        with self._lock.guard():
            if self._dropped:
                self._release_dropped()
            got = core.snapshot(
                self._state, self.plan, self._monotonic_ns(), self._wall()
            )
        self._wake()
        return got

    def reset(self) -> None:
        with self._lock.guard():
            if self._dropped:
                self._release_dropped()
            core.reset(self._state, self.plan, self._monotonic_ns(), self._wall())
        self._wake()

    def lower(self, slot: int, units: int) -> None:
        b = self.plan.slots[slot]
        assert isinstance(b, core.Bucket)
        with self._lock.guard():
            core.lower(self._state, b, units * b.per, self._monotonic_ns())
            if self._state.queue:
                core.service(self._state, self._monotonic_ns(), self._wall())
        self._wake()

    def extend(self, key: str, ttl_ns: int | None) -> bool:
        return True  # memory leases never expire

    def peek(self) -> tuple[tuple[SlotView, ...], int]:
        return self.snapshot()
