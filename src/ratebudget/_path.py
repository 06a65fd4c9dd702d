"""The decision down a path of scopes, chained from the one-state core.

A scope's acquisition is charged to it and to every ancestor (DESIGN §6,
docs/design.md "Planned: scopes charged down a path"). Each scope has a
state of its own; a *path* is the levels of a scope and of its ancestors,
nearest first (the scope's own at 0, the root's last), each a ``Level``: a
state and the plan of that scope's own limits.

An acquisition takes from the levels in that order, each by ``_decide``: at
the first level that cannot serve it at once (or has a queue) it joins that
level's queue, keeping what it took below. Waiters of one level are served
in the order they started waiting there, whatever scope they come from (a
team's rate is shared FIFO by its users' callers), and a caller waiting on
its own scope's limits never holds back another scope's callers. When a
level grants a waiter on its behalf (``service``), ``climb`` takes it on up,
and a refusal at any level gives back what was taken below: nothing is
charged anywhere. Every decision is ``_decide``'s; this module only chains
them, and needs every level of the paths it touches at hand (the memory
store has them all; a shared store loads a path and its ancestors, and
defers a give-back below the loaded levels to the waiter's owner).

Not yet used by ``Limiter`` (the stores and ``Limiter.child`` come next).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import _decide as core
from ._decide import (
    FAILED,
    GRANTED,
    WAITING,
    Crossing,
    Entry,
    Exceeded,
    Inexact,
    Plan,
    Shadowed,
    State,
    TooLong,
)

__all__ = (
    "Climb",
    "Climbs",
    "Level",
    "Refused",
    "abort",
    "acquire",
    "climb",
    "give_back",
    "numbered",
    "poll",
    "record",
    "refusal_at",
    "settle",
    "shadowed",
)


@dataclass(frozen=True, slots=True)
class Level:
    """One scope of a path: its state and the plan of its own limits."""

    st: State
    plan: Plan


@dataclass(frozen=True, slots=True)
class Refused:
    """Level ``level`` refused (``error``), or would make a ``try`` wait
    (``error`` is ``None``); nothing was taken anywhere."""

    level: int
    error: Exceeded | TooLong | None


@dataclass(slots=True)
class Climb:
    """A waiter on its way up its path: the levels, what it asks of each,
    the take of each level below ``at``, and the level whose queue holds it
    (``at == len(levels)``: granted at every level, ``takes`` complete)."""

    levels: list[Level]
    reqs: list[tuple[int, ...]]
    takes: list[int] = field(default_factory=list)
    at: int = 0
    timeout_at: int | None = None
    lease_id: str = ""
    failed_at: int | None = None  # the level that refused it, once one did

    @property
    def granted(self) -> bool:
        return self.at == len(self.levels)


class Climbs(dict[Entry, Climb]):
    """The waiters on their way up, by entry (kept by whoever holds the
    states); the owner of a waiter takes its ``Climb`` out once it is
    granted or failed. ``touched``: the states ``climb`` left entries to
    wake in (whoever holds the states wakes them and clears it)."""

    __slots__ = ("touched",)

    def __init__(self) -> None:
        super().__init__()
        self.touched: list[State] = []


Bounds = list[tuple[int, int]]
"""Each level's slots in a path's slots, nearest first: ``(first, end)``."""


def numbered(per_level: Sequence[Sequence[Any]], bounds: Bounds) -> list[Any]:
    """Each level's crossings (or shadow reports), their slots numbered over
    the path's, in one list."""
    out: list[Any] = []
    for (a, _b), got in zip(bounds, per_level, strict=True):
        out.extend(replace(x, slot=x.slot + a) if a else x for x in got)
    return out


def refusal_at(
    error: Exceeded | TooLong | None, bounds: Bounds, level: int
) -> Exceeded | TooLong | None:
    """Level ``level``'s refusal, its slot numbered over the path's."""
    if isinstance(error, Exceeded) and bounds[level][0]:
        return replace(error, slot=error.slot + bounds[level][0])
    return error


def shadowed(levels: list[Level], bounds: Bounds) -> list[Shadowed]:
    """What the levels' shadow caps would have refused (taken from them),
    numbered over the path's slots."""
    got = [lv.st.shadowed for lv in levels]
    for lv in levels:
        if lv.st.shadowed:
            lv.st.shadowed = []
    return numbered(got, bounds)


def give_back(
    climbs: Climbs,
    levels: list[Level],
    reqs: list[tuple[int, ...]],
    takes: list[int],
    now: int,
    wall: int,
) -> None:
    """Give back the ``takes`` of the first ``len(takes)`` levels (granted
    there, not yet further up: a caller's fast path that fell short)."""
    below = len(takes)
    _give_back(climbs, Climb(levels, reqs, takes, below), below, now, wall)


def _give_back(climbs: Climbs, c: Climb, below: int, now: int, wall: int) -> None:
    """Give back the takes of levels ``0 .. below - 1`` (rates refunded,
    cap reservations released), serving each level's queue anew."""
    for k in range(below - 1, -1, -1):
        level = c.levels[k]
        e = Entry()
        e.id, e.plan, e.req, e.take, e.state = (
            c.lease_id,
            level.plan,
            c.reqs[k],
            c.takes[k],
            GRANTED,
        )
        core.abort(level.st, e, now, wall)
    c.takes.clear()  # nothing is held any more
    climb(climbs, [lv.st for lv in c.levels[:below]], now, wall)


def acquire(
    levels: list[Level],
    reqs: list[tuple[int, ...]],
    now: int,
    wall: int,
    timeout: int | None,
    entry: Callable[[], Entry] | None,
    climbs: Climbs,
    lease_id: str = "",
) -> list[int] | Entry | Refused:
    """Take ``reqs`` from every level at once (their takes, nearest first),
    queue at the first level that cannot serve it (an ``Entry``, described
    in ``climbs``), or refuse with nothing taken (``Refused``).

    ``timeout`` (ticks) bounds the wait each level foresees; a wait across
    several levels is foreseen level by level (a lower bound: a caller is
    never refused for a wait it would not have had).
    """
    for k, (level, req) in enumerate(zip(levels, reqs, strict=True)):
        # a hard cap anywhere that can never fit refuses now, not once the
        # levels below have served it (a ``try`` raises, as on one level)
        if level.plan.hard:
            core._roll(level.st, core._clock(level.st, now, wall)[1])
            error = core._certain_overrun(level.plan, req)
            if error is not None:
                return Refused(k, error)
    takes: list[int] = []
    for k, (level, req) in enumerate(zip(levels, reqs, strict=True)):
        got = core.acquire(
            level.st, level.plan, req, now, wall, timeout, entry, lease_id
        )
        if type(got) is int:
            takes.append(got)
            continue
        if isinstance(got, Entry):
            timeout_at = None if timeout is None else now + timeout
            climbs[got] = Climb(levels, reqs, takes, k, timeout_at, lease_id)
            return got
        assert got is None or isinstance(got, (Exceeded, TooLong))
        _give_back(climbs, Climb(levels, reqs, takes, k, None, lease_id), k, now, wall)
        return Refused(k, got)
    return takes


def _advance(climbs: Climbs, e: Entry, c: Climb, now: int, wall: int) -> State | None:
    """``e`` was granted at level ``c.at`` (``e.take``): take it on up, as far
    as the levels serve it at once. The state it ends up woken in (queued
    higher, failed, or granted at every level), or ``None`` if granted."""
    while True:
        c.takes.append(e.take)
        c.at += 1
        if c.granted:
            e.state = GRANTED
            return None
        level = c.levels[c.at]
        e.state, e.deadline, e.take = WAITING, None, 0
        left = None if c.timeout_at is None else max(0, c.timeout_at - now)
        got = core.acquire(
            level.st, level.plan, c.reqs[c.at], now, wall, left, lambda: e, c.lease_id
        )
        if type(got) is int:
            e.take = got
            continue
        if got is e:
            return level.st  # queued here: it learns its deadline when woken
        assert got is None or isinstance(got, (Exceeded, TooLong))
        e.state, e.error = FAILED, got
        c.failed_at = c.at
        _give_back(climbs, c, c.at, now, wall)
        return level.st


def _failed(climbs: Climbs, e: Entry, c: Climb, now: int, wall: int) -> None:
    """``e`` failed at its level (the core refused it on its behalf: a cap
    overrun became certain, or its wait timed out): give back below."""
    if c.failed_at is None:
        c.failed_at = c.at
        _give_back(climbs, c, c.at, now, wall)


def climb(climbs: Climbs, states: Iterable[State], now: int, wall: int) -> None:
    """Take the waiters that ``states`` granted on their behalf on up their
    paths, and give back below for those they refused. One that moves up
    leaves its level's ``woken`` for the next level's (where it learns its
    new deadline, or its refusal); one granted at every level, or failed,
    stays woken for its owner."""
    pending = [s for s in states if s.woken]
    while pending:
        st = pending.pop()
        for e in list(st.woken):
            c = climbs.get(e)
            if c is None or c.granted:
                continue
            if e.state == FAILED:
                _failed(climbs, e, c, now, wall)
                continue
            if e.state != GRANTED:
                continue
            st.woken.remove(e)
            where = _advance(climbs, e, c, now, wall)
            if where is None:
                st.woken.append(e)  # granted at every level
            else:
                if e not in where.woken:
                    where.woken.append(e)
                if where not in pending:
                    pending.append(where)
        if st.woken and all(s is not st for s in climbs.touched):
            climbs.touched.append(st)


def poll(climbs: Climbs, e: Entry, now: int, wall: int) -> int | None:
    """A waiter looks, as ``_decide.poll``: ``e.state`` tells the outcome
    (``CLAIMED``: granted at every level, its takes in its ``Climb``, which
    the owner then takes out of ``climbs``; ``FAILED``: ``e.error`` says why,
    the ``Climb``'s ``failed_at`` where; ``WAITING``: look again at the
    returned deadline)."""
    c = climbs[e]
    if c.granted:
        e.state = core.CLAIMED
        return None
    if e.state == FAILED:
        _failed(climbs, e, c, now, wall)
        return None
    st = c.levels[c.at].st
    deadline = core.poll(st, e, now, wall)
    climb(climbs, [st], now, wall)  # others this look granted go on up
    if e.state == FAILED:  # refused at this level, or its wait timed out
        _failed(climbs, e, c, now, wall)
        return None
    if e.state == WAITING:
        return deadline
    # claimed at this level: on up
    if e in st.woken:
        st.woken.remove(e)
    where = _advance(climbs, e, c, now, wall)
    if where is None:
        e.state = core.CLAIMED
        return None
    if where.woken and where.woken[-1] is e:
        where.woken.pop()  # it learns from this answer, not a wake-up
    climb(climbs, [where], now, wall)
    if e.state == WAITING:
        return e.sleep_deadline()
    return None


def abort(climbs: Climbs, e: Entry, now: int, wall: int) -> None:
    """A waiter leaves (cancelled): out of its queue, everything given back."""
    c = climbs.pop(e, None)
    if c is None:
        return
    if e.state == FAILED:
        _failed(climbs, e, c, now, wall)
        return
    if c.granted:  # granted at every level, never claimed
        _give_back(climbs, c, len(c.levels), now, wall)
        return
    st = c.levels[c.at].st
    core.abort(st, e, now, wall)
    _give_back(climbs, c, c.at, now, wall)
    climb(climbs, [st], now, wall)


def settle(
    levels: list[Level],
    takes: list[int],
    ests: list[tuple[int, ...]],
    actuals: list[tuple[int, ...]] | None,
    now: int,
    wall: int,
    climbs: Climbs,
    lease_id: str = "",
) -> list[list[Crossing]] | Inexact | None:
    """Commit ``actuals`` (``None``: release) at every level; each level's
    changes of usage (for its alerts), nearest first, or ``Inexact`` with
    nothing changed, or ``None`` if a shared store's records say the lease
    was settled already (a retry)."""
    if actuals is not None:
        for level, est, actual in zip(levels, ests, actuals, strict=True):
            if level.st.exact is not None:
                bad = core._inexact(level.st.exact, level.plan, actual, est, now)
                if bad is not None:
                    return bad
    out: list[list[Crossing]] = []
    settled = False
    for k, level in enumerate(levels):
        got = core.settle(
            level.st,
            level.plan,
            takes[k],
            ests[k],
            None if actuals is None else actuals[k],
            now,
            wall,
            lease_id,
        )
        if got is None:  # settled already at this level (a retry)
            settled = True
            got = []
        assert isinstance(got, list)
        out.append(got)
    climb(climbs, (lv.st for lv in levels), now, wall)
    if settled and not any(out):
        return None
    return out


def record(
    levels: list[Level],
    reqs: list[tuple[int, ...]],
    now: int,
    wall: int,
    climbs: Climbs,
) -> list[list[Crossing]] | Refused | Inexact:
    """Charge ``reqs`` at every level after the fact, or refuse (the nearest
    level whose hard cap would not fit) with nothing changed anywhere."""
    for level, req in zip(levels, reqs, strict=True):
        st = level.st
        if st.exact is not None:
            bad = core._inexact(st.exact, level.plan, req, None, now)
            if bad is not None:
                return bad
    for k, (level, req) in enumerate(zip(levels, reqs, strict=True)):
        core._clock(level.st, now, wall)
        core._roll(level.st, wall)
        for i, cap in level.plan.hard:
            n = req[i]
            c = cap.counter
            if n and c.used + c.reserved + n > cap.limit:
                return Refused(k, core._exceeded(i, cap))
    out: list[list[Crossing]] = []
    for level, req in zip(levels, reqs, strict=True):
        got = core.record(level.st, level.plan, req, now, wall)
        assert isinstance(got, list)
        out.append(got)
    climb(climbs, (lv.st for lv in levels), now, wall)
    return out
