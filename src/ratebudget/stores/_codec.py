"""Ops and results as JSON lists: what the Redis script reads and answers,
and what the shared test vectors hold.

Ops::

    ["acquire", key, req, timeout or null, wait01]   ["poll", key]
    ["leave", key, req]                              ["record", req]
    ["settle", key, take, est, actual or null]       ["snapshot"]
    ["reset"]   ["lower", slot, units]   ["extend", key, ttl or null]

Results::

    ["granted", take]   ["queued", deadline or null]   ["gone"]   ["none"]
    ["x", slot, used, reserved, period, end or null]   (a hard cap refused)
    ["t", wait or null]                                (the wait is too long)
    ["crossings", [[slot, before, after, period, end or null], ...]]
    ["inexact", what]                  (a count would leave the exact range)
    ["snapshot", [[level, used, reserved, period, end or null], ...], waiting]
    ["ok"]   ["bool", 0 | 1]

A batch's answer also lists, under ``shadowed`` (left out when empty), what
the caps of a shadow plan would have refused::

    [slot, used, reserved, requested, period, end or null, first01]
"""

from __future__ import annotations

import json
from typing import Any

from .._decide import Crossing, Exceeded, Inexact, Shadowed, SlotView, TooLong
from . import _ops as ops

__all__ = (
    "book_of",
    "book_text",
    "decode_op",
    "decode_result",
    "decode_shadowed",
    "encode_op",
    "encode_result",
    "encode_shadowed",
)


def encode_shadowed(x: Shadowed) -> list[Any]:
    first = 1 if x.first else 0
    return [x.slot, x.used, x.reserved, x.requested, x.period, x.end, first]


def decode_shadowed(v: list[Any]) -> Shadowed:
    slot, used, reserved, requested, period, end, first = v
    return Shadowed(
        int(slot),
        int(used),
        int(reserved),
        int(requested),
        str(period),
        None if end is None else int(end),
        first == 1,
    )


def _tuple(v: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


def encode_op(op: ops.Op) -> list[Any]:
    if isinstance(op, ops.Acquire):
        return ["acquire", op.key, list(op.req), op.timeout, 1 if op.wait else 0]
    if isinstance(op, ops.Poll):
        return ["poll", op.key]
    if isinstance(op, ops.Leave):
        return ["leave", op.key, list(op.req)]
    if isinstance(op, ops.Settle):
        actual = None if op.actual is None else list(op.actual)
        out = ["settle", op.key, op.take, list(op.est), actual]
        if op.book is not None:  # the ledger's row, for the store's stream
            out.append(book_text(op.book))
        return out
    if isinstance(op, ops.Record):
        if op.book is not None:
            return ["record", list(op.req), book_text(op.book)]
        return ["record", list(op.req)]
    if isinstance(op, ops.Snapshot):
        return ["snapshot"]
    if isinstance(op, ops.Reset):
        return ["reset"]
    if isinstance(op, ops.Lower):
        return ["lower", op.slot, op.units]
    if isinstance(op, ops.PathPoll):
        return ["path_poll", op.key, list(op.req), op.at, list(op.takes), op.timeout_at]
    if isinstance(op, ops.PathLeave):
        return ["path_leave", op.key, list(op.req), op.at, list(op.takes)]
    return ["extend", op.key, op.ttl]


def book_text(book: ops.Book) -> str:
    """A ledger row as a store's stream keeps it (``book_of`` reads it)."""
    return json.dumps(
        [book.lease_id, book.scope, book.labels, book.outcome, list(book.units)],
        separators=(",", ":"),
    )


def book_of(text: str | bytes) -> ops.Book:
    lease_id, scope, labels, outcome, units = json.loads(text)
    return ops.Book(
        str(lease_id),
        str(scope),
        str(labels),
        str(outcome),
        tuple((str(a), int(n)) for a, n in units),
    )


def decode_op(v: list[Any]) -> ops.Op:
    kind = v[0]
    if kind == "acquire":
        return ops.Acquire(v[1], _tuple(v[2]), v[3], bool(v[4]))
    if kind == "poll":
        return ops.Poll(v[1])
    if kind == "leave":
        return ops.Leave(v[1], _tuple(v[2]))
    if kind == "settle":
        return ops.Settle(
            v[1],
            v[2],
            _tuple(v[3]),
            None if v[4] is None else _tuple(v[4]),
            book_of(v[5]) if len(v) > 5 else None,
        )
    if kind == "record":
        return ops.Record(_tuple(v[1]), book_of(v[2]) if len(v) > 2 else None)
    if kind == "snapshot":
        return ops.Snapshot()
    if kind == "reset":
        return ops.Reset()
    if kind == "lower":
        return ops.Lower(v[1], v[2])
    if kind == "extend":
        return ops.Extend(v[1], v[2])
    if kind == "path_poll":
        return ops.PathPoll(v[1], _tuple(v[2]), int(v[3]), _tuple(v[4]), v[5])
    if kind == "path_leave":
        return ops.PathLeave(v[1], _tuple(v[2]), int(v[3]), _tuple(v[4]))
    raise ValueError(f"unknown store operation {kind!r}")


def encode_result(r: ops.Result) -> list[Any]:
    if isinstance(r, ops.Granted):
        return ["granted", r.take]
    if isinstance(r, ops.Queued):
        return ["queued", r.deadline]
    if isinstance(r, ops.PathQueued):
        return ["path_queued", r.deadline, r.at, list(r.takes), r.timeout_at]
    if isinstance(r, ops.Gone):
        return ["gone"]
    if isinstance(r, Exceeded):
        return ["x", r.slot, r.used, r.reserved, r.period, r.end]
    if isinstance(r, TooLong):
        return ["t", r.wait]
    if isinstance(r, Inexact):
        return ["inexact", r.what]
    if isinstance(r, list):
        return ["crossings", [[c.slot, c.before, c.after, c.period, c.end] for c in r]]
    if isinstance(r, tuple):
        views, waiting = r
        return [
            "snapshot",
            [[v.level, v.used, v.reserved, v.period, v.end] for v in views],
            waiting,
        ]
    if isinstance(r, bool):
        return ["bool", 1 if r else 0]
    return ["none"]


def decode_result(v: list[Any]) -> ops.Result:
    kind = v[0]
    if kind == "granted":
        return ops.Granted(int(v[1]))
    if kind == "queued":
        return ops.Queued(None if v[1] is None else int(v[1]))
    if kind == "path_queued":
        deadline = None if v[1] is None else int(v[1])
        timeout_at = None if v[4] is None else int(v[4])
        return ops.PathQueued(deadline, int(v[2]), _tuple(v[3]), timeout_at)
    if kind == "gone":
        return ops.Gone()
    if kind == "x":
        end = None if v[5] is None else int(v[5])
        return Exceeded(int(v[1]), int(v[2]), int(v[3]), str(v[4]), end)
    if kind == "t":
        return TooLong(None if v[1] is None else int(v[1]))
    if kind == "inexact":
        return Inexact(str(v[1]))
    if kind == "crossings":
        return [
            Crossing(int(s), int(b), int(a), str(p), None if e is None else int(e))
            for s, b, a, p, e in v[1]
        ]
    if kind == "snapshot":
        views = tuple(
            SlotView(int(lv), int(u), int(r), str(p), None if e is None else int(e))
            for lv, u, r, p, e in v[1]
        )
        return views, int(v[2])
    if kind == "bool":
        return bool(v[1])
    assert kind == "none", v
    return None
