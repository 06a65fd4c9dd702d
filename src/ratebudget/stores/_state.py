"""A name's state as a shared store keeps it: plain JSON, loaded and saved
around each batch (the SQLite store; the Redis script keeps the same shape).

The state document::

    {"clock": µs, "wall": µs, "take": int,
     "b": {ratekey: [rate, per, cap, level, last, full, [[take, level], ...]]},
     "c": {capkey: [period, end or null, used, reserved, per or null, tz,
                   peak, noted01]},
     "p": {planid: [["r", ratekey] | ["c", capkey, limit, kind], ...]},

A cap's ``kind``: 0 soft, 1 hard, 2 shadow (hard, but it only reports).
     "q": [[key, planid, [amount per slot], deadline, timeout_at, alive], ...]}

A lease record: ``[status, exp, take, [[capkey, n], ...], error or null]``.

Calendar periods come from the caller: ``windows`` holds, for each calendar
cap of its plan, the periods around its wall clock (``windows_around``). A
counter whose period ended rolls into the one of those that holds the
store's (clamped) time; a counter with no such window (another limiter's
cap, or a client clock far from the store's) keeps its period until a
caller that has it runs. The Redis script (``lua/decide.lua``), which knows
no time zones, gets the same windows, so both homes roll alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from .._decide import Bucket, CapSlot, Counter, Entry, Plan, Record, State, Window
from .._plan import CapSpec, PlanSpec, _tz_name, window_us
from . import _ops as ops
from ._ops import decode_error, encode_error

_KEYED = (ops.Poll, ops.Leave, ops.Settle, ops.Extend, ops.PathPoll, ops.PathLeave)


def wanted(batch: list[ops.Op]) -> list[str]:
    """The lease ids whose records ``batch`` may read (besides expired ones)."""
    return [op.key for op in batch if isinstance(op, _KEYED)]


class Document:
    """What a batch leaves behind: the state document and the records to
    write (``records``) or delete (``gone``)."""

    __slots__ = ("doc", "gone", "records")

    def __init__(
        self, doc: dict[str, Any], records: dict[str, list[Any]], gone: list[str]
    ) -> None:
        self.doc = doc
        self.records = records
        self.gone = gone


def run_document(
    doc: dict[str, Any] | None,
    records: dict[str, list[Any]],
    spec: PlanSpec,
    batch: list[ops.Op],
    now: int,
    *,
    ttl: int,
    keep: int,
    exact: int | None = None,
    windows: dict[str, list[Window]] | None = None,
    next_exp: int | None = None,
) -> tuple[ops.Answer, Document]:
    """Run ``batch`` on a stored state: ``doc`` and the ``records`` of the
    ids it names (``wanted``) and of those expired by ``now`` (µs).

    ``windows``: the calendar periods the plan's caps may roll into
    (default: ``windows_around(spec, now)``).
    """
    st = State(ttl=ttl, keep=keep, live=ttl)
    st.exact = exact
    st.next_exp = next_exp  # the first expiry of the records not loaded
    if windows is None:
        windows = windows_around(spec, now)
    plan, ids = load(doc, records, spec, st, now, windows)
    results, woken = ops.run(st, plan, batch, now)
    out = Document(
        dump(st, ids, cap_specs(doc, spec)),
        {key: dump_record(rec) for key, rec in st.records.items()},
        [key for key in records if key not in st.records],
    )
    return ops.Answer(results, st.clock, woken, shadowed=st.shadowed), out


def run_path_documents(
    docs: list[dict[str, Any] | None],
    records: list[dict[str, list[Any]]],
    specs: list[PlanSpec],
    batch: list[ops.Op],
    now: int,
    *,
    ttl: int,
    keep: int,
    exact: int | None = None,
    next_exps: list[int | None] | None = None,
) -> tuple[ops.Answer, list[Document]]:
    """``run_document`` down a path: the states of every level (nearest
    first), each with the records of the ids the batch names and of those
    expired; ``_path_ops.run_path`` decides."""
    from .._path import Level
    from ._path_ops import run_path

    levels: list[Level] = []
    loaded: list[dict[int, tuple[str, list[list[Any]]]]] = []
    bounds: list[tuple[int, int]] = []
    for k, (doc, recs, spec) in enumerate(zip(docs, records, specs, strict=True)):
        st = State(ttl=ttl, keep=keep, live=ttl)
        st.exact = exact
        st.next_exp = None if next_exps is None else next_exps[k]
        plan, ids = load(doc, recs, spec, st, now, windows_around(spec, now))
        levels.append(Level(st, plan))
        loaded.append(ids)
        a = bounds[-1][1] if bounds else 0
        bounds.append((a, a + len(spec.slots)))
    results, woken, shadowed = run_path(levels, bounds, batch, now)
    out = [
        Document(
            dump(level.st, ids, cap_specs(doc, spec)),
            {key: dump_record(rec) for key, rec in level.st.records.items()},
            [key for key in recs if key not in level.st.records],
        )
        for level, ids, doc, spec, recs in zip(
            levels, loaded, docs, specs, records, strict=True
        )
    ]
    return ops.Answer(results, levels[0].st.clock, woken, shadowed=shadowed), out


__all__ = (
    "Document",
    "cap_specs",
    "dump",
    "dump_record",
    "load",
    "load_record",
    "plan_id",
    "run_document",
    "run_path_documents",
    "wanted",
    "windows_around",
)


def plan_id(spec: PlanSpec) -> str:
    """A short, stable name for a plan's slots (entries refer to it)."""
    text = json.dumps(_plan_doc(spec), separators=(",", ":"))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


def _plan_doc(spec: PlanSpec) -> list[list[Any]]:
    return [
        ["c", s.key, s.limit, _kind(s)] if isinstance(s, CapSpec) else ["r", s.key]
        for s in spec.slots
    ]


def _kind(s: CapSpec) -> int:
    """A cap's kind as its plan document writes it: 0 soft, 1 hard, 2 shadow."""
    return 2 if s.shadow else 1 if s.hard else 0


def _int(value: Any) -> int:
    """A stored count: an integer, or ``ValueError`` (the state is unreadable)."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"a stored count is not an integer: {value!r}")


def windows_around(spec: PlanSpec, wall: int) -> dict[str, list[Window]]:
    """For each calendar cap of ``spec``, its periods around wall-clock
    ``wall`` (µs): the previous, the current and the next."""
    out: dict[str, list[Window]] = {}
    for s in spec.slots:
        if isinstance(s, CapSpec) and s.per is not None:
            window = window_us(s.per, s.tz)
            now = window(wall)
            out[s.key] = [window(now[1] - 1), now, window(now[2])]
    return out


def _known(windows: list[Window]) -> Callable[[int], Window | None]:
    """The window of ``windows`` holding a wall time, or ``None``."""

    def window(wall: int) -> Window | None:
        for w in windows:
            if w[1] <= wall < w[2]:
                return w
        return None

    return window


def load(
    doc: dict[str, Any] | None,
    records: dict[str, list[Any]],
    spec: PlanSpec,
    st: State,
    now: int,
    windows: dict[str, list[Window]],
) -> tuple[Plan, dict[int, tuple[str, list[list[Any]]]]]:
    """Fill the empty ``st`` from ``doc`` and ``records``: the caller's plan,
    and every plan's id and document by ``id(plan)`` (for ``dump``).

    Calendar counters roll only into ``windows`` (``windows_around``).
    """
    if doc:
        st.clock, st.wall, st.take = (
            _int(doc["clock"]),
            _int(doc["wall"]),
            _int(doc["take"]),
        )
        for key, (rate, per, cap, level, last, full, peaks) in doc["b"].items():
            b = st.buckets[key] = Bucket(
                key, _int(rate), _int(per), _int(cap), _int(level), _int(last)
            )
            b.full = _int(full)
            b.peaks = [[_int(t), _int(lv)] for t, lv in peaks]
        for key, row in doc["c"].items():
            period, end, used, reserved, per = row[:5]
            window = None if per is None else _known(windows.get(key, []))
            c = st.counters[key] = Counter(key, window)
            c.period, c.end = str(period), None if end is None else _int(end)
            c.used, c.reserved = _int(used), _int(reserved)
            # the alert latches (a document written before them has none)
            c.peak = _int(row[6]) if len(row) > 6 else c.used
            c.noted = len(row) > 7 and row[7] == 1
    # the plan's calendar caps roll into the windows the caller sent
    for s in spec.slots:
        if isinstance(s, CapSpec) and s.per is not None:
            got = st.counters.get(s.key)
            if got is None:
                st.counters[s.key] = Counter(s.key, _known(windows.get(s.key, [])))
            elif got.window is None:
                got.window = _known(windows.get(s.key, []))
    plan = spec.bind(st, now)
    mine = plan_id(spec)
    ids = {id(plan): (mine, _plan_doc(spec))}
    if doc:
        plans: dict[str, Plan] = {mine: plan}
        for key, pid, req, deadline, timeout_at, alive in doc["q"]:
            p = plans.get(pid)
            if p is None:
                p = plans[pid] = _bind(doc["p"][pid], st, spec.tick_ns)
                ids[id(p)] = (pid, doc["p"][pid])
            e = Entry()
            e.id, e.plan, e.req = key, p, tuple(req)
            e.deadline, e.timeout_at, e.alive = deadline, timeout_at, alive
            st.queue[e] = None
    for key, data in records.items():
        st.records[key] = load_record(data, st)
    st.set_roll()
    return plan, ids


def _bind(doc: list[list[Any]], st: State, tick_ns: int) -> Plan:
    slots: list[Bucket | CapSlot] = []
    for s in doc:
        if s[0] == "r":
            slots.append(st.buckets[s[1]])
        else:
            counter = st.counters.get(s[1]) or st.counters.setdefault(
                s[1], Counter(s[1], None)
            )
            slots.append(CapSlot(counter, s[2], s[3] == 1, s[3] == 2))
    return Plan(slots, tick_ns)


def load_record(data: list[Any], st: State) -> Record:
    status, exp, take, caps, error = data
    bound = tuple(
        (st.counters.get(k) or st.counters.setdefault(k, Counter(k, None)), n)
        for k, n in caps
    )
    return Record(status, exp, take, bound, decode_error(error))


def dump_record(rec: Record) -> list[Any]:
    return [
        rec.status,
        rec.exp,
        rec.take,
        [[c.key, n] for c, n in rec.caps],
        encode_error(rec.error),
    ]


def dump(
    st: State,
    ids: dict[int, tuple[str, list[list[Any]]]],
    specs: dict[str, Any],
) -> dict[str, Any]:
    """The state document of ``st`` (``ids``: from ``load``; ``specs``: each
    cap key's period and zone, from ``cap_specs``)."""
    plans: dict[str, list[list[Any]]] = {}
    queue: list[list[Any]] = []
    for e in st.queue:
        pid, doc = ids[id(e.plan)]
        plans.setdefault(pid, doc)
        queue.append([e.id, pid, list(e.req), e.deadline, e.timeout_at, e.alive])
    return {
        "clock": st.clock,
        "wall": st.wall,
        "take": st.take,
        "b": {
            k: [b.rate, b.per, b.cap, b.level, b.last, b.full, b.peaks]
            for k, b in st.buckets.items()
        },
        "c": {
            k: [
                c.period,
                c.end,
                c.used,
                c.reserved,
                *specs.get(k, (None, "UTC")),
                c.peak,
                1 if c.noted else 0,
            ]
            for k, c in st.counters.items()
        },
        "p": plans,
        "q": queue,
    }


def cap_specs(doc: dict[str, Any] | None, spec: PlanSpec) -> dict[str, Any]:
    """Each counter's (period, zone) as the document and ``spec`` know them."""
    out: dict[str, Any] = {}
    if doc:
        for key, row in doc["c"].items():
            out[key] = (row[4], row[5])
    for s in spec.slots:
        if isinstance(s, CapSpec):
            out[s.key] = (s.per, _tz_name(s.tz))
    return out
