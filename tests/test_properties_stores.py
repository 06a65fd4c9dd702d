"""Properties of the shared stores' path through the decision core.

A shared store runs the same core as memory, but a waiter lives in another
process: it is named by its lease id, it learns its fate by looking
(``Poll``), leaves by ``Leave``, and the state is saved and loaded around
every batch (``stores._state.run_document``, what the SQLite store runs in
one transaction and the Redis script mirrors). Random workloads of arrivals,
looks at the foreseen times, cancellations (also of waiters granted on
their behalf before they looked) and commits below and above the estimate
must keep, at every step:

- no rate grants more than ``burst + limit x w`` in any window of length
  ``w`` (contract 2), counting each lease when the store granted it;
- grants are made in arrival order (contract 3);
- a cap's usage and reservations add up exactly, and nothing stays
  reserved once every lease is settled (contract 5: a cancelled waiter
  takes nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ratebudget import Cap, Rate
from ratebudget._decide import Exceeded, TooLong
from ratebudget._plan import PlanSpec, RateSpec, plan_spec
from ratebudget.stores import _ops as ops
from ratebudget.stores._state import Document, run_document, wanted
from test_properties_rates import window_violations

TTL = 10**12  # µs: leases never expire in these runs
T0 = 1_800_000_000_000_000  # µs since the epoch


@dataclass
class Store:
    """A shared store in memory: the document and the records, JSON-copied."""

    spec: PlanSpec
    doc: dict[str, Any] | None = None
    records: dict[str, list[Any]] = field(default_factory=dict)

    def run(self, batch: list[ops.Op], now: int) -> ops.Answer:
        keys = set(wanted(batch)) | {k for k, r in self.records.items() if r[1] <= now}
        records = {k: self.records[k] for k in keys if k in self.records}
        answer, out = run_document(
            json.loads(json.dumps(self.doc)) if self.doc else None,
            json.loads(json.dumps(records)),
            self.spec,
            batch,
            now,
            ttl=TTL,
            keep=60_000_000,
        )
        self.save(out)
        return answer

    def save(self, out: Document) -> None:
        self.doc = json.loads(json.dumps(out.doc))
        for key in out.gone:
            self.records.pop(key, None)
        self.records.update(json.loads(json.dumps(out.records)))


@dataclass(frozen=True)
class Call:
    gap: int  # µs after the previous event
    amounts: tuple[int, ...]  # per rate
    usd: int  # units reserved on the cap
    cancel: int  # cancel this many steps later (0: never)
    used: tuple[int, ...]  # the commit: per rate (may be above the estimate)


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[tuple[int, int, int]], list[Call]]:
    rates = draw(
        st.lists(
            st.tuples(
                st.integers(1, 20),
                st.sampled_from([1_000, 10_000, 1_000_000]),
                st.integers(1, 20),
            ),
            min_size=1,
            max_size=3,
        )
    )
    calls = draw(
        st.lists(
            st.builds(
                Call,
                gap=st.sampled_from([0, 0, 1, 500]) | st.integers(0, 2_000_000),
                amounts=st.tuples(*(st.integers(0, b) for _, _, b in rates)),
                usd=st.integers(0, 5),
                cancel=st.sampled_from([0, 0, 0, 1, 2, 5]),
                used=st.tuples(*(st.integers(0, b + 2) for _, _, b in rates)),
            ),
            min_size=1,
            max_size=30,
        )
    )
    return rates, calls


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_shared_store_waiters_keep_every_promise(
    case: tuple[list[tuple[int, int, int]], list[Call]],
) -> None:
    rates, calls = case
    limits: list[Rate | Cap] = [
        Rate(tokens=limit, per=per / 1e6, burst=burst) for limit, per, burst in rates
    ]
    limits.append(Cap(usd=1000))
    spec = plan_spec(tuple(limits), 1000)
    store = Store(spec)
    n = len(rates)
    now = T0
    waiting: dict[str, tuple[int | None, int]] = {}  # key -> (deadline, index)
    granted: dict[str, tuple[int, int]] = {}  # key -> (take, index)
    takes: dict[int, int] = {}  # index -> take id (grant order)
    at: dict[int, int] = {}  # index -> when the store granted it
    index = {f"k{i}": i for i in range(len(calls))}
    cancel_at: dict[int, str] = {}
    outstanding_usd = 0
    committed_usd = 0

    def req_of(c: Call) -> tuple[int, ...]:
        return (*c.amounts, c.usd)

    def run(batch: list[ops.Op]) -> ops.Answer:
        answer = store.run(batch, now)
        for w in answer.woken:  # granted on behalf of a waiter: now
            if isinstance(w.result, ops.Granted):
                at.setdefault(index[w.key], now)
                takes[index[w.key]] = w.result.take
        return answer

    def learned(key: str, take: int, i: int) -> None:
        nonlocal outstanding_usd
        granted[key] = (take, i)
        at.setdefault(i, now)
        assert takes.setdefault(i, take) == take
        outstanding_usd += calls[i].usd

    def look(step: int) -> None:
        """Owners whose time came look (in arrival order), until none is due."""
        for _ in range(1000):
            due = [k for k, (d, _) in waiting.items() if d is None or d <= now]
            if not due:
                return
            due.sort(key=lambda k: waiting[k][1])
            answer = run([ops.Poll(k) for k in due])
            for key, r in zip(due, answer.results, strict=True):
                _, i = waiting.pop(key)
                if isinstance(r, ops.Granted):
                    learned(key, r.take, i)
                elif isinstance(r, ops.Queued):
                    assert r.deadline is None or r.deadline > now
                    waiting[key] = (r.deadline, i)
                    if r.deadline is None:
                        return  # nobody is due: no time passes in this loop
                else:
                    raise AssertionError(f"waiter {i}: {r!r}")
        raise AssertionError("owners keep looking without progress")

    for step, c in enumerate(calls):
        now += c.gap
        key = f"k{step}"
        # the arrival runs the queue first: waiters whose time came are
        # granted on their behalf, and may be cancelled before they look
        (r,) = run([ops.Acquire(key, req_of(c), None, True)]).results
        if isinstance(r, ops.Granted):
            learned(key, r.take, step)
        else:
            assert isinstance(r, ops.Queued), r
            waiting[key] = (r.deadline, step)
        if c.cancel:
            cancel_at[step + c.cancel] = key
        victim = cancel_at.pop(step, None)
        if victim is not None and victim in waiting:
            _, i = waiting.pop(victim)
            run([ops.Leave(victim, req_of(calls[i]))])
            takes.pop(i, None)  # given back whole: as if never granted
            at.pop(i, None)
        look(step)
    # the rest look at their times, then every grant is committed
    for _ in range(10_000):
        look(len(calls))
        deadlines = [d for d, _ in waiting.values() if d is not None]
        if not waiting:
            break
        assert deadlines, "waiters left with no time and nobody to wake them"
        now = max(now, min(deadlines))
    assert not waiting
    for key, (take, i) in sorted(granted.items(), key=lambda kv: kv[1][1]):
        c = calls[i]
        (r,) = run([ops.Settle(key, take, req_of(c), (*c.used, c.usd))]).results
        assert isinstance(r, list), r
        committed_usd += c.usd

    assert set(takes) == {i for _, i in granted.values()}
    # grants in arrival order
    by_take = sorted(takes, key=lambda i: takes[i])
    assert by_take == sorted(by_take)
    # contract 2, per rate: the estimates granted, and (when no lease used more
    # than its estimate, which is debt later callers wait off) what was used
    for j, (limit, per, burst) in enumerate(rates):
        events = [(at[i] * 1000, calls[i].amounts[j]) for i in takes]
        assert not window_violations(events, limit, burst, per * 1000)
        if all(calls[i].used[j] <= calls[i].amounts[j] for i in takes):
            used = [(at[i] * 1000, calls[i].used[j]) for i in takes]
            assert not window_violations(used, limit, burst, per * 1000)
    # the cap adds up exactly, and nothing stays reserved
    (snap,) = run([ops.Snapshot()]).results
    assert isinstance(snap, tuple)
    views, queued = snap
    assert queued == 0
    assert views[n].used == committed_usd
    assert views[n].reserved == 0
    assert outstanding_usd == committed_usd
    assert not isinstance(views, (Exceeded, TooLong))
    assert all(isinstance(s, RateSpec) for s in spec.slots[:n])
