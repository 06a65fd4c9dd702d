"""A batch of ops down a path of scopes, on a shared store.

A child scope's binding sends the ops a flat one sends (``_ops``), its
amounts running over the path's slots (its own first, then its parent's
path), and the store runs them on the states of every level of the path,
loaded together in one transaction: ``run_path`` chains the one-state core
down the path through ``_path``.

Waiters climb by their owner's looks. An acquisition that one level cannot
serve at once waits in that level's queue (``PathQueued``: the level, and
what it holds below); when that level grants it on its behalf (any caller's
decision may: it is an ordinary entry there), its owner's next look
(``PathPoll``) claims it and takes it on up, in the same decision. So a
waiter is only ever moved by decisions that load its whole path, and what a
refusal gives back is always at hand. (On the memory store a grant on its
behalf takes it on up at once; here it joins the next level's queue a
wake-up later.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .. import _decide as core
from .. import _path
from .._decide import (
    GRANTED,
    Crossing,
    Entry,
    Exceeded,
    Inexact,
    Shadowed,
    TooLong,
)
from .._path import Climb, Climbs, Level, Refused
from . import _ops as ops

__all__ = ("pack", "run_path", "unpack")

_BITS: Final = 64  # a level's take in a path's packed takes
_MASK: Final = (1 << _BITS) - 1


def pack(takes: Sequence[int]) -> int:
    """Every level's take in one int (a lease's take, a waiter's holdings)."""
    out = 0
    for k, take in enumerate(takes):
        out |= take << (_BITS * k)
    return out


def unpack(packed: int, n: int) -> list[int]:
    return [(packed >> (_BITS * k)) & _MASK for k in range(n)]


class _Path:
    """The levels of one batch and how the path's slots split over them."""

    def __init__(self, levels: list[Level], bounds: list[tuple[int, int]]) -> None:
        self.levels = levels
        self.bounds = bounds

    def split(self, req: tuple[int, ...]) -> list[tuple[int, ...]]:
        return [req[a:b] for a, b in self.bounds]

    def error(
        self, error: Exceeded | TooLong | None, level: int
    ) -> Exceeded | TooLong | None:
        return _path.refusal_at(error, self.bounds, level)

    def crossings(self, per_level: list[list[Crossing]]) -> list[Crossing]:
        return _path.numbered(per_level, self.bounds)

    def level_of(self, slot: int) -> int:
        return next(k for k, (a, b) in enumerate(self.bounds) if a <= slot < b)


def _queued(
    path: _Path, c: Climb, e: Entry, now: int
) -> ops.PathQueued | Exceeded | TooLong | None:
    """What a waiter learns once its climb stopped at level ``c.at``."""
    if c.failed_at is not None:
        return path.error(e.error, c.failed_at)
    st = path.levels[c.at].st
    if st.woken and st.woken[-1] is e:
        st.woken.pop()  # it learns from this answer, not a wake-up
    deadline = e.deadline
    return ops.PathQueued(deadline, c.at, tuple(c.takes), c.timeout_at)


def _up(
    path: _Path,
    climbs: Climbs,
    key: str,
    reqs: list[tuple[int, ...]],
    c: Climb,
    take: int,
    now: int,
) -> ops.Result:
    """Level ``c.at`` granted ``key`` (its ``take``): on up the path."""
    e = Entry()
    e.id, e.take, e.state = key, take, GRANTED
    e.plan, e.req = path.levels[c.at].plan, reqs[c.at]
    climbs[e] = c
    where = _path._advance(climbs, e, c, now, now)
    del climbs[e]
    if where is None:
        return ops.Granted(pack(c.takes))
    return _queued(path, c, e, now)


def _poll(path: _Path, climbs: Climbs, op: ops.PathPoll, now: int) -> ops.Result:
    reqs = path.split(op.req)
    n = len(path.levels)
    below = list(op.takes)
    c = Climb(path.levels, reqs, below, op.at, op.timeout_at, op.key)
    got = ops._poll(path.levels[op.at].st, op.key, now)
    if isinstance(got, ops.Queued):
        return ops.PathQueued(got.deadline, op.at, op.takes, op.timeout_at)
    if isinstance(got, ops.Granted):
        if op.at + 1 == n:
            return ops.Granted(pack([*below, got.take]))
        return _up(path, climbs, op.key, reqs, c, got.take, now)
    if isinstance(got, (Exceeded, TooLong)):
        _path._give_back(climbs, c, op.at, now, now)
        return path.error(got, op.at)
    return got  # Gone


def _leave(path: _Path, climbs: Climbs, op: ops.PathLeave, now: int) -> None:
    reqs = path.split(op.req)
    n = len(path.levels)
    takes = list(op.takes)
    if op.at < n:
        level = path.levels[op.at]
        ops._leave(level.st, level.plan, op.key, reqs[op.at], now)
    below = min(op.at, n)  # the path's length: granted at every level
    c = Climb(path.levels, reqs, takes, below, None, op.key)
    _path._give_back(climbs, c, below, now, now)


def run_path(
    levels: list[Level],
    bounds: list[tuple[int, int]],
    batch: list[ops.Op],
    now: int,
) -> tuple[list[ops.Result], list[ops.Woken], list[Shadowed]]:
    """Run ``batch`` at store time ``now`` (µs, also the wall clock) on a
    path's loaded states (nearest first); the caller saves what changed."""
    for level in levels:
        if now < level.st.clock:
            now = level.st.clock
    for level in levels:
        st = level.st
        st.clock = now
        if st.wall < now:
            st.wall = now
        core.reclaim(st, now)
    path = _Path(levels, bounds)
    climbs = Climbs()  # nobody climbs on another's behalf here
    out: list[ops.Result] = []
    for op in batch:
        if isinstance(op, ops.Acquire):
            reqs = path.split(op.req)
            got = _path.acquire(
                levels,
                reqs,
                now,
                now,
                op.timeout,
                Entry if op.wait else None,
                climbs,
                op.key,
            )
            if isinstance(got, list):
                out.append(ops.Granted(pack(got)))
            elif isinstance(got, Refused):
                out.append(path.error(got.error, got.level))
            else:
                c = climbs.pop(got)
                out.append(_queued(path, c, got, now))
        elif isinstance(op, ops.PathPoll):
            out.append(_poll(path, climbs, op, now))
        elif isinstance(op, ops.PathLeave):
            _leave(path, climbs, op, now)
            out.append(None)
        elif isinstance(op, ops.Settle):
            n = len(levels)
            settled = _path.settle(
                levels,
                unpack(op.take, n),
                path.split(op.est),
                None if op.actual is None else path.split(op.actual),
                now,
                now,
                climbs,
                op.key,
            )
            out.append(
                settled
                if settled is None or isinstance(settled, Inexact)
                else path.crossings(settled)
            )
        elif isinstance(op, ops.Record):
            recorded = _path.record(levels, path.split(op.req), now, now, climbs)
            if isinstance(recorded, Refused):
                out.append(path.error(recorded.error, recorded.level))
            elif isinstance(recorded, Inexact):
                out.append(recorded)
            else:
                out.append(path.crossings(recorded))
        elif isinstance(op, ops.Snapshot):
            out.append(core.snapshot(levels[0].st, levels[0].plan, now, now))
        elif isinstance(op, ops.Reset):
            core.reset(levels[0].st, levels[0].plan, now, now)
            out.append(None)
        elif isinstance(op, ops.Lower):
            k = path.level_of(op.slot)
            st, plan = levels[k].st, levels[k].plan
            b = plan.slots[op.slot - bounds[k][0]]
            assert isinstance(b, core.Bucket)
            core.lower(st, b, op.units * b.per, now)
            if st.queue:
                core.service(st, now, now)
            out.append(None)
        elif isinstance(op, ops.Extend):
            kept = False
            for level in levels:
                st = level.st
                ttl = st.ttl if op.ttl is None else op.ttl
                kept = core.extend(st, op.key, ttl or 0, now) is not None or kept
            out.append(kept)
        else:  # pragma: no cover - a flat op has no place down a path
            raise TypeError(f"{type(op).__name__} is not an op down a path")
    woken: list[ops.Woken] = []
    for level in levels:
        st = level.st
        for e in st.woken:
            result = ops._entry_result(e)
            if e.id and not isinstance(result, ops.Gone):
                woken.append(ops.Woken(e.id, result))
        st.woken = []
    shadowed: list[Shadowed] = _path.shadowed(levels, bounds)
    return out, woken, shadowed
