"""A child scope on a ``MemoryStore``: every operation decided down its
path (the scope's own state, then each ancestor's) under its tree's one
lock, by ``_path`` (its hot paths call the one-state core directly)."""

from __future__ import annotations

from collections.abc import Callable
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
)
from .._path import Level, Refused
from .._plan import plan_spec
from .._waiters import Waiter, wake_all
from ._base import Acquired, Binding
from .memory import MemoryBinding, _gather, _release_dropped, _Shared, _take_now

if TYPE_CHECKING:
    from .._clock import Clock
    from .._limits import Cap, Rate
    from ._ops import Book

__all__ = ("MemoryPathBinding",)

_TAKE_BITS: Final = 96  # a path lease's id: each level's take in 96 bits
_TAKE_MASK: Final = (1 << _TAKE_BITS) - 1


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

    def _report(self, shadowed: list[Shadowed]) -> None:
        if shadowed and self.on_shadow is not None:
            self.on_shadow(shadowed)

    def drop(self, key: str, take: int, est: tuple[int, ...]) -> None:
        self._dropped.append((self._release, take, est))  # atomic: no lock

    def _release(self, take: int, est: tuple[int, ...]) -> None:
        self._settle(self.levels, take, est, None)

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
                    shadowed = _path.shadowed(levels, self._bounds)
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
            return _path.refusal_at(out.error, self._bounds, out.level)
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
                w.error = _path.refusal_at(w.error, self._bounds, c.failed_at)
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
        book: Book | None = None,
    ) -> list[Crossing] | Inexact:
        with self._lock.guard():
            levels = self._enter()
            out = self._settle(levels, take, est, actual)
            woken = self._leave(levels)
        if woken:
            wake_all(woken)
        return out

    def _settle(
        self,
        levels: list[Level],
        take: int,
        est: tuple[int, ...],
        actual: tuple[int, ...] | None,
    ) -> list[Crossing]:
        """``_path.settle`` for a store that counts exactly and keeps no
        records (the lock held), each level's slice taken in place: the hot
        path of a commit. A level whose state was forgotten since the grant
        (an idle key) settles take 0, which refunds no rate."""
        now, wall = self._monotonic_ns(), self._wall()
        out: list[Crossing] = []
        woke = False
        # the estimate committed as it is, or released: each level nobody
        # waits on settles in place (``core.settle_now``)
        commit = actual is est
        quick = actual is None or commit
        for k, ((a, b), level) in enumerate(zip(self._bounds, levels, strict=True)):
            st = level.st
            e = est[a:b]
            if quick and core.settle_now(st, level.plan, e, commit, now, wall, a, out):
                continue
            t = (take >> (_TAKE_BITS * k)) & _TAKE_MASK
            if t >> 40 != st.take >> 40:
                t = 0  # not this state's take: the key was forgotten since
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
        if woke:
            _path.climb(self._climbs, [lv.st for lv in levels], now, wall)
        return out

    def record(
        self, req: tuple[int, ...], book: Book | None = None
    ) -> list[Crossing] | Exceeded | Inexact:
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
                error = _path.refusal_at(out.error, self._bounds, out.level)
                assert isinstance(error, Exceeded)
                got = error
            elif isinstance(out, Inexact):  # pragma: no cover - memory is exact
                got = out
            else:
                got = _path.numbered(out, self._bounds)
            shadowed = _path.shadowed(levels, self._bounds) if self._shadow else []
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
