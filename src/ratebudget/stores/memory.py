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
from dataclasses import replace
from threading import get_ident
from typing import TYPE_CHECKING, Final

from .. import _decide as core
from .. import _path
from .._clock import wall_us
from .._decide import (
    FAILED,
    Crossing,
    Entry,
    Exceeded,
    Inexact,
    Shadowed,
    SlotView,
    State,
    TooLong,
)
from .._path import Climbs, Level, Refused
from .._plan import plan_spec
from .._waiters import Waiter, wake_all
from ._base import Acquired, Binding, Store

if TYPE_CHECKING:
    from .._clock import Clock
    from .._limits import Cap, Rate

__all__ = ("BiasedLock", "MemoryBinding", "MemoryPathBinding", "MemoryStore")

# Biased locking needs the GIL's sequentially consistent attribute access.
_GIL: Final = bool(getattr(sys, "_is_gil_enabled", lambda: True)())

_take_now: Final = core.take_now
_join: Final = core.join

_TAKE_BITS: Final = 96  # a path lease's id: each level's take in 96 bits
_TAKE_MASK: Final = (1 << _TAKE_BITS) - 1

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
    ) -> MemoryBinding | MemoryPathBinding:
        if parent is not None:
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
    ) -> list[Crossing] | Inexact | None:
        with self._lock.guard():
            if self._dropped:
                self._release_dropped()
            got = core.settle(
                self._state,
                self.plan,
                take,
                est,
                actual,
                self._monotonic_ns(),
                self._wall(),
            )
        self._wake()
        return got

    def record(self, req: tuple[int, ...]) -> list[Crossing] | Exceeded | Inexact:
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


def _kid(parent: _Shared, name: str) -> _Shared:
    """The state of child scope ``name`` of ``parent`` (the tree's lock held)."""
    got = parent.kids.get(name)
    if got is None:
        got = parent.kids[name] = _Shared(parent)
    return got


class MemoryPathBinding(Binding):
    """A child scope on a ``MemoryStore``: every operation decided down its
    path (the scope's own state, then each ancestor's) by ``_path``, under
    its tree's one lock.

    Amounts (``req``) run over the path's slots, the scope's own first, then
    its parent's path; so do the slots of refusals, crossings and shadow
    reports. Its take ids are its own level's; it keeps every level's take
    of each lease it granted until the lease is settled.
    """

    _shared: _Shared
    _state: State
    _levels: list[Level]
    _bounds: list[tuple[int, int]]

    def __init__(
        self,
        name: str,
        parent: MemoryBinding | MemoryPathBinding,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        shadow: bool = False,
    ) -> None:
        self.name = name
        self._parent = parent
        up = parent._shared
        self._up = up
        self._lock = up.lock
        self._dropped = up.dropped
        self._climbs = up.climbs
        self._clock = clock
        self._monotonic_ns = clock.monotonic_ns
        self._wall = wall_us(clock)
        self.tick_ns = 1
        self.spec = plan_spec(limits, 1, shadow)
        self.on_shadow: Callable[[list[Shadowed]], None] | None = None
        n = len(self.spec.slots)
        self._bounds = [(0, n)] + [(n + a, n + b) for a, b in parent._bounds]
        with self._lock.guard():
            self._bind()

    def _bind(self) -> None:
        """Find (or make) this scope's state (the lock held)."""
        parent = self._parent
        parent.levels  # noqa: B018 - a parent forgotten finds its state anew
        self._shared = _kid(parent._shared, self.name)
        self._state = self._shared.state
        self.plan = self.spec.bind(self._state, self._monotonic_ns())
        self._levels = [Level(self._state, self.plan), *self._parent.levels]
        self._shadow = any(lv.plan.shadow for lv in self._levels)

    @staticmethod
    def _keep(takes: list[int]) -> int:
        """The take id of a lease granted down the path: every level's take
        in one int (the memory store keeps nothing per lease)."""
        out = 0
        for k, take in enumerate(takes):
            out |= take << (_TAKE_BITS * k)
        return out

    @staticmethod
    def _takes_of(take: int, levels: list[Level]) -> list[int]:
        """Each level's take of lease ``take``; 0 for a level whose state was
        forgotten (an idle key) since: nothing of it counted there, and a
        settle of take 0 refunds no rate (``Bucket.refund``)."""
        out: list[int] = []
        for k, level in enumerate(levels):
            t = (take >> (_TAKE_BITS * k)) & _TAKE_MASK
            out.append(t if t >> 40 == level.st.take >> 40 else 0)
        return out

    @property
    def levels(self) -> list[Level]:
        if self._shared.gone:
            self._bind()
        return self._levels

    def _split(self, req: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [req[a:b] for a, b in self._bounds]

    def _enter(self) -> list[Level]:
        """The path, with the lock held and the tree's dropped leases released."""
        levels = self.levels
        if self._dropped:
            _release_dropped(self._dropped, self._climbs, self._state)
        return levels

    def _leave(self, levels: list[Level]) -> list[Entry]:
        """What to wake, gathered from the path's states (the lock held)."""
        climbs = self._climbs
        if climbs.touched:
            _gather(climbs, self._state)
        woken: list[Entry] = []
        for level in levels:
            if level.st.woken:
                woken.extend(level.st.woken)
                level.st.woken = []
        return woken

    def _shadowed(self, levels: list[Level]) -> list[Shadowed]:
        out: list[Shadowed] = []
        for (a, _b), level in zip(self._bounds, levels, strict=True):
            if level.st.shadowed:
                out.extend(replace(x, slot=x.slot + a) for x in level.st.shadowed)
                level.st.shadowed = []
        return out

    def _report(self, shadowed: list[Shadowed]) -> None:
        if shadowed and self.on_shadow is not None:
            self.on_shadow(shadowed)

    def _error(
        self, error: Exceeded | TooLong | None, level: int
    ) -> Exceeded | TooLong | None:
        if isinstance(error, Exceeded):
            return replace(error, slot=error.slot + self._bounds[level][0])
        return error

    def drop(self, key: str, take: int, est: tuple[int, ...]) -> None:
        self._dropped.append((self._release, take, est))  # atomic: no lock

    def _release(self, take: int, est: tuple[int, ...]) -> None:
        levels = self.levels
        _path.settle(
            levels,
            self._takes_of(take, levels),
            self._split(est),
            None,
            self._monotonic_ns(),
            self._wall(),
            self._climbs,
        )

    def acquire(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> Acquired:
        got: Acquired
        shadowed: list[Shadowed] = []
        with self._lock.guard():
            released = bool(self._dropped)  # it may wake waiters anywhere
            levels = self._enter()
            now = self._monotonic_ns()
            # nobody waits, no calendar to roll, every cap fits: the core's
            # hot path at each level (its take packed into the lease's id);
            # else (or if a rate falls short) the whole decision, once what
            # the fast path took is given back
            got = 0
            k = 0
            for (a, b), level in zip(self._bounds, levels, strict=True):
                st, plan = level.st, level.plan
                r = req[a:b]
                if (
                    st.queue
                    or now < st.clock
                    or (plan.caps and (plan.calendar or plan.shadow))
                    or (plan.hard and not core._caps_fit(plan, r))
                ):
                    break
                st.clock = now
                take = _take_now(st, plan, r, now)
                if not take:
                    break
                got |= take << (_TAKE_BITS * k)
                k += 1
            if k < len(levels):
                taken = [(got >> (_TAKE_BITS * j)) & _TAKE_MASK for j in range(k)]
                got = self._decide(
                    levels, self._split(req), taken, now, timeout_ns, waiter
                )
                if self._shadow:
                    shadowed = self._shadowed(levels)
                woken = self._leave(levels)
            elif released or self._climbs.touched:
                woken = self._leave(levels)
            else:
                woken = []
        if woken:
            wake_all(woken)
        if shadowed:
            self._report(shadowed)
        return got

    def _decide(
        self,
        levels: list[Level],
        reqs: list[tuple[int, ...]],
        takes: list[int],
        now: int,
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> Acquired:
        """An acquisition the whole way (the lock held)."""
        wall = self._wall()
        if takes:
            _path.give_back(self._climbs, levels, reqs, takes, now, wall)
        out = _path.acquire(levels, reqs, now, wall, timeout_ns, waiter, self._climbs)
        if isinstance(out, list):
            return self._keep(out)
        if isinstance(out, Refused):
            return self._error(out.error, out.level)
        assert isinstance(out, Waiter)
        out.arm()
        return out

    def poll(self, w: Waiter) -> int | None:
        with self._lock.guard():
            levels = self._enter()
            climbs = self._climbs
            deadline = _path.poll(climbs, w, self._monotonic_ns(), self._wall())
            if w.state == core.CLAIMED:
                w.take = self._keep(climbs.pop(w).takes)
            elif w.state == FAILED:
                c = climbs.pop(w)
                assert c.failed_at is not None
                w.error = self._error(w.error, c.failed_at)
            else:
                w.arm()
            woken = self._leave(levels)
        wake_all(woken, but=w)
        return deadline

    def abort(self, w: Waiter) -> None:
        with self._lock.guard():
            levels = self._enter()
            _path.abort(self._climbs, w, self._monotonic_ns(), self._wall())
            woken = self._leave(levels)
        wake_all(woken)

    def settle(
        self,
        key: str,
        take: int,
        est: tuple[int, ...],
        actual: tuple[int, ...] | None,
    ) -> list[Crossing] | Inexact:
        # ``_path.settle`` for a store that counts exactly and keeps no
        # records, each level's slice taken in place (the hot path of a commit)
        with self._lock.guard():
            levels = self._enter()
            now, wall = self._monotonic_ns(), self._wall()
            out: list[Crossing] = []
            woke = False
            k = 0
            for (a, b), level in zip(self._bounds, levels, strict=True):
                st = level.st
                t = (take >> (_TAKE_BITS * k)) & _TAKE_MASK
                if t >> 40 != st.take >> 40:
                    t = 0  # a forgotten key's (``_takes_of``)
                e = est[a:b]
                got = core.settle(
                    st,
                    level.plan,
                    t,
                    e,
                    # the estimate itself: its rates skip the refund
                    None if actual is None else e if actual is est else actual[a:b],
                    now,
                    wall,
                    "",
                    a,
                )
                assert isinstance(got, list)  # exact, no records: never else
                out += got
                woke = woke or bool(st.woken)
                k += 1
            if woke:
                _path.climb(self._climbs, [lv.st for lv in levels], now, wall)
            woken = self._leave(levels)
        if woken:
            wake_all(woken)
        return out

    def _crossings(self, per_level: list[list[Crossing]]) -> list[Crossing]:
        """Every level's crossings, numbered over the path's slots."""
        out = per_level[0]
        for (a, _b), got in zip(self._bounds[1:], per_level[1:], strict=True):
            for c in got:
                out.append(Crossing(c.slot + a, c.before, c.after, c.period, c.end))
        return out

    def record(self, req: tuple[int, ...]) -> list[Crossing] | Exceeded | Inexact:
        with self._lock.guard():
            levels = self._enter()
            out = _path.record(
                levels,
                self._split(req),
                self._monotonic_ns(),
                self._wall(),
                self._climbs,
            )
            got: list[Crossing] | Exceeded | Inexact
            if isinstance(out, Refused):
                error = self._error(out.error, out.level)
                assert isinstance(error, Exceeded)
                got = error
            elif isinstance(out, Inexact):  # pragma: no cover - memory is exact
                got = out
            else:
                got = self._crossings(out)
            shadowed = self._shadowed(levels) if self._shadow else []
            woken = self._leave(levels)
        wake_all(woken)
        self._report(shadowed)
        return got

    def snapshot(self) -> tuple[tuple[SlotView, ...], int]:
        """This scope's own slots, and how many callers wait on any of them."""
        with self._lock.guard():
            levels = self._enter()
            got = core.snapshot(
                self._state, self.plan, self._monotonic_ns(), self._wall()
            )
            woken = self._leave(levels)
        wake_all(woken)
        return got

    def reset(self) -> None:
        """Zero this scope's own caps and fill its own rates (its ancestors'
        are theirs to reset)."""
        with self._lock.guard():
            levels = self._enter()
            core.reset(self._state, self.plan, self._monotonic_ns(), self._wall())
            _path.climb(self._climbs, [self._state], self._monotonic_ns(), self._wall())
            woken = self._leave(levels)
        wake_all(woken)

    def lower(self, slot: int, units: int) -> None:
        level = next(k for k, (a, b) in enumerate(self._bounds) if a <= slot < b)
        with self._lock.guard():
            levels = self._enter()
            st, plan = levels[level].st, levels[level].plan
            b = plan.slots[slot - self._bounds[level][0]]
            assert isinstance(b, core.Bucket)
            now = self._monotonic_ns()
            core.lower(st, b, units * b.per, now)
            if st.queue:
                core.service(st, now, self._wall())
                _path.climb(self._climbs, [st], now, self._wall())
            woken = self._leave(levels)
        wake_all(woken)

    def extend(self, key: str, ttl_ns: int | None) -> bool:
        return True  # memory leases never expire

    def peek(self) -> tuple[tuple[SlotView, ...], int]:
        return self.snapshot()

    def forget(self) -> bool:
        """Forget this scope's state if nothing of it still counts: nobody
        waits on it, it has no child scope, every cap is unused and
        unreserved this period, every rate is full. Its bindings find a
        fresh state on their next operation; leases granted before settle
        on the state they were granted on."""
        with self._lock.guard():
            sh = self._shared
            if sh.gone:
                return True
            st = self._state
            if st.queue or sh.kids:
                return False
            now = self._monotonic_ns()
            core._roll(st, self._wall())
            if any(c.used or c.reserved for c in st.counters.values()):
                return False
            if any(b.now(now) < b.cap for b in st.buckets.values()):
                return False
            up = self._parent._shared
            if up.kids.get(self.name) is sh:
                del up.kids[self.name]
            sh.gone = True
            return True
