"""What a limiter sends a shared store, and what it answers: typed ops.

A batch is a list of ops for one name; the store runs them in order, in one
transaction (SQLite) or one script call (Redis), through ``run``, which
applies the decision core (``_decide``) to the name's state. Ops name queue
entries and leases by their lease id (``key``), since the waiter and the
state live in different processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .. import _decide as core
from .._decide import (
    CLAIMED,
    FAILED,
    GRANTED,
    SETTLED,
    UNCLAIMED,
    WAITING,
    Crossing,
    Entry,
    Exceeded,
    Inexact,
    Plan,
    Shadowed,
    SlotView,
    State,
    TooLong,
)

__all__ = (
    "Acquire",
    "Answer",
    "Extend",
    "Gone",
    "Granted",
    "Inexact",
    "Leave",
    "Lower",
    "Op",
    "PathLeave",
    "PathPoll",
    "PathQueued",
    "Poll",
    "Queued",
    "Record",
    "Reset",
    "Result",
    "Settle",
    "Snapshot",
    "Woken",
    "run",
)

LIVE_TICKS: Final = 10_000_000  # µs a queued entry stays without its owner looking


# -- ops ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    key: str
    req: tuple[int, ...]
    timeout: int | None  # ticks; None: no timeout
    wait: bool  # False: try_acquire (never queue)


@dataclass(frozen=True, slots=True)
class Poll:
    key: str


@dataclass(frozen=True, slots=True)
class Leave:
    """The waiter ``key`` left (cancelled): out of the queue, or, granted on
    its behalf and never claimed, everything given back."""

    key: str
    req: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Book:
    """A ledger row that a store writes in the transaction of the op that
    carries it, stamped with the store's time, when the op counted
    (``Store.books``)."""

    lease_id: str
    scope: str
    labels: str  # a JSON object
    outcome: str  # "committed", "released" or "recorded"
    units: tuple[tuple[str, int], ...]  # per axis


@dataclass(frozen=True, slots=True)
class Settle:
    key: str
    take: int
    est: tuple[int, ...]
    actual: tuple[int, ...] | None  # None: release
    book: Book | None = None


@dataclass(frozen=True, slots=True)
class Record:
    req: tuple[int, ...]
    book: Book | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    pass


@dataclass(frozen=True, slots=True)
class Reset:
    pass


@dataclass(frozen=True, slots=True)
class Lower:
    slot: int
    units: int


@dataclass(frozen=True, slots=True)
class Extend:
    key: str
    ttl: int | None  # ticks; None: the limiter's lease TTL


@dataclass(frozen=True, slots=True)
class PathPoll:
    """A waiter down a path looks: it waits at level ``at`` (its answer's
    ``PathQueued``), holding ``takes`` below (packed: ``pack``)."""

    key: str
    req: tuple[int, ...]
    at: int
    takes: tuple[int, ...]
    timeout_at: int | None


@dataclass(frozen=True, slots=True)
class PathLeave:
    """A waiter down a path left (cancelled) while at level ``at`` (the
    path's length: granted at every level, never claimed): everything it
    holds at every level goes back."""

    key: str
    req: tuple[int, ...]
    at: int
    takes: tuple[int, ...]


Op = (
    Acquire
    | Poll
    | Leave
    | Settle
    | Record
    | Snapshot
    | Reset
    | Lower
    | Extend
    | PathPoll
    | PathLeave
)


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Granted:
    take: int


@dataclass(frozen=True, slots=True)
class Queued:
    deadline: int | None  # ticks: when to look again; None: when woken


@dataclass(frozen=True, slots=True)
class PathQueued:
    """Down a path: waiting at level ``at`` (until ``deadline``, ticks),
    holding ``takes`` below it; ``timeout_at``: the store time its
    wait ends, if it has a timeout."""

    deadline: int | None
    at: int
    takes: tuple[int, ...]
    timeout_at: int | None


@dataclass(frozen=True, slots=True)
class Gone:
    """The store knows nothing of this entry or lease (any more)."""


Result = (
    Granted
    | Queued
    | PathQueued
    | Gone
    | Exceeded
    | TooLong
    | Inexact
    | list[Crossing]
    | tuple[tuple[SlotView, ...], int]
    | bool
    | None
)


@dataclass(frozen=True, slots=True)
class Woken:
    """An entry whose state changed in a batch: its owner may be elsewhere."""

    key: str
    result: Granted | Queued | Exceeded | TooLong


@dataclass(frozen=True, slots=True)
class Answer:
    """A batch's results, the store's time, and the entries it woke.

    ``local``: the caller's monotonic clock (ns) when it sent the batch, the
    instant it pairs with the store's ``now`` (µs) to place the store's
    deadlines on its own clock. A batch's ops all come from one limiter, so
    ``shadowed`` is that limiter's.
    """

    results: list[Result]
    now: int
    woken: list[Woken]
    local: int = 0
    shadowed: list[Shadowed] = field(default_factory=list)
    """What the caps of a shadow plan would have refused in the batch."""


# -- running a batch on a state ---------------------------------------------------------------


def _entry_result(e: Entry) -> Granted | Queued | Exceeded | TooLong | Gone:
    if e.state in (GRANTED, CLAIMED) and e.take:
        return Granted(e.take)
    if e.state == FAILED:
        assert e.error is not None
        return e.error
    if e.state == WAITING:
        return Queued(e.deadline)
    return Gone()


def _poll(st: State, key: str, now: int) -> Result:
    for e in st.queue:
        if e.id == key:
            deadline = core.poll(st, e, now, now)
            if e.state == WAITING:
                return Queued(deadline)
            return _entry_result(e)
    rec = st.records.get(key)
    if rec is None:
        return Gone()
    if rec.status == UNCLAIMED:
        rec.status = core.ACTIVE  # claimed: its owner proceeds
        return Granted(rec.take)
    if rec.status == core.REFUSED and rec.error is not None:
        del st.records[key]
        return rec.error
    if rec.status in (core.ACTIVE, SETTLED, core.EXPIRED):
        return Granted(rec.take)  # claimed already (a retry)
    return Gone()


def _leave(st: State, plan: Plan, key: str, req: tuple[int, ...], now: int) -> None:
    for e in st.queue:
        if e.id == key:
            core.abort(st, e, now, now)
            return
    rec = st.records.get(key)
    if rec is not None and rec.status in (UNCLAIMED, core.ACTIVE):
        # granted on its behalf, and its owner left before it proceeded
        # (perhaps as a look claimed it): everything goes back
        e = Entry()
        e.id, e.plan, e.req, e.take, e.state = key, plan, req, rec.take, GRANTED
        core.abort(st, e, now, now)


def run(
    st: State, plan: Plan, ops: list[Op], now: int
) -> tuple[list[Result], list[Woken]]:
    """Run ``ops`` at store time ``now`` (µs, also the wall clock).

    The caller loaded ``st`` (with the records the ops name) and binds
    ``plan`` to it; it saves what changed.
    """
    if now < st.clock:
        now = st.clock
    st.clock = now
    if st.wall < now:
        st.wall = now
    core.reclaim(st, now)
    out: list[Result] = []
    for op in ops:
        if isinstance(op, Acquire):
            got = core.acquire(
                st,
                plan,
                op.req,
                now,
                now,
                op.timeout,
                Entry if op.wait else None,
                op.key,
            )
            if isinstance(got, Entry):
                out.append(Queued(got.deadline))
            elif type(got) is int:
                out.append(Granted(got))
            else:
                assert got is None or isinstance(got, (Exceeded, TooLong))
                out.append(got)
        elif isinstance(op, Poll):
            out.append(_poll(st, op.key, now))
        elif isinstance(op, Leave):
            _leave(st, plan, op.key, op.req, now)
            out.append(None)
        elif isinstance(op, Settle):
            out.append(
                core.settle(st, plan, op.take, op.est, op.actual, now, now, op.key)
            )
        elif isinstance(op, Record):
            out.append(core.record(st, plan, op.req, now, now))
        elif isinstance(op, Snapshot):
            out.append(core.snapshot(st, plan, now, now))
        elif isinstance(op, Reset):
            core.reset(st, plan, now, now)
            out.append(None)
        elif isinstance(op, Lower):
            b = plan.slots[op.slot]
            assert isinstance(b, core.Bucket)
            core.lower(st, b, op.units * b.per, now)
            if st.queue:
                core.service(st, now, now)
            out.append(None)
        elif isinstance(op, Extend):
            ttl = st.ttl if op.ttl is None else op.ttl
            out.append(core.extend(st, op.key, ttl or 0, now) is not None)
        else:  # pragma: no cover - a path's op goes to _path_ops.run_path
            raise TypeError(f"{type(op).__name__} is an op down a path")
    woken: list[Woken] = []
    for e in st.woken:
        result = _entry_result(e)
        if e.id and not isinstance(result, Gone):
            woken.append(Woken(e.id, result))
    st.woken = []
    return out, woken


def encode_error(error: Exceeded | TooLong | None) -> list[Any] | None:
    if isinstance(error, Exceeded):
        return ["x", error.slot, error.used, error.reserved, error.period, error.end]
    if isinstance(error, TooLong):
        return ["t", error.wait]
    return None


def decode_error(data: list[Any] | None) -> Exceeded | TooLong | None:
    if not data:
        return None
    if data[0] == "x":
        return Exceeded(int(data[1]), int(data[2]), int(data[3]), str(data[4]), data[5])
    return TooLong(None if data[1] is None else int(data[1]))
