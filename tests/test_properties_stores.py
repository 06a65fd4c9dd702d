"""Properties of the persistent stores' decision core (``stores/_core.py``).

The SQLite store runs this core and the Lua script mirrors it (the shared
vectors check that), so what holds here holds in every persistent store:

- no rate ever grants more than ``burst + limit x w`` in any window of
  length ``w`` (contract 2), counting each lease at its proceed time with
  what it finally used, whatever mix of rates, waits, commits below the
  estimate and cancellations;
- grants proceed in the order they arrived (contract 3);
- a cap's usage and reservations add up exactly, and end at zero reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ratebudget.stores._core import CapP, Plan, RateP, State, run


@dataclass(frozen=True)
class Spec:
    limit: int
    per_us: int
    burst: int


def plan_of(specs: list[Spec]) -> Plan:
    slots: list[RateP | CapP] = []
    for i, s in enumerate(specs):
        slots.append(RateP(f"r{i}", s.limit, s.per_us, s.burst * s.per_us))
    slots.append(CapP("cap", 10**12, True))
    return Plan(tuple(slots))


specs = st.lists(
    st.builds(
        Spec,
        limit=st.integers(1, 20),
        per_us=st.sampled_from([1_000, 10_000, 1_000_000]),
        burst=st.integers(1, 20),
    ),
    min_size=1,
    max_size=3,
)

# one event: (time step µs, amounts per rate (0..), what happens after)
events = st.lists(
    st.tuples(
        st.integers(0, 200_000),
        st.lists(st.integers(0, 20), min_size=3, max_size=3),
        st.sampled_from(["keep", "commit-less", "cancel"]),
        st.integers(0, 100),  # the share (%) a commit keeps
        st.integers(0, 3_000_000),  # how long after its grant a commit comes
        st.booleans(),  # whether it reserves the cap (else the store keeps no record)
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(specs=specs, events=events)
@example(  # a refund must not return tokens the bucket's clamp already dropped
    specs=[Spec(1, 1_000, 10)],
    events=[
        (0, [10, 0, 0], "commit-less", 0, 20_000, True),  # commits 20 ms later
        (20_000, [10, 0, 0], "keep", 0, 0, False),  # takes the refilled bucket
        (0, [10, 0, 0], "keep", 0, 0, False),
    ],
)
def test_no_rate_window_is_ever_exceeded_and_order_is_kept(
    specs: list[Spec], events: list[tuple[int, list[int], str, int, int, bool]]
) -> None:
    plan = plan_of(specs)
    n = len(specs)
    state = State()
    now = 1_000_000
    keep = 10**12
    periods = [""] * (n + 1)
    grants: list[tuple[int, list[int]]] = []  # (proceed time, used per rate)
    gos: list[int] = []
    # commits due: (time, id, actual, what an unrecorded lease's holder keeps)
    pending: list[tuple[int, str, list[int], list[Any] | None]] = []
    reserved = used = 0

    def settle(t: int, lease: str, actual: list[int] | None, inline: Any) -> None:
        op = ["settle", lease, actual, keep, periods]
        (r,) = run(state, plan, t, keep, [op if inline is None else [*op, inline]])
        assert r[0] == "ok"

    def commit_due(until: int) -> None:
        nonlocal used, reserved
        pending.sort(key=lambda p: p[0])
        while pending and pending[0][0] <= until:
            t, lease, actual, inline = pending.pop(0)
            settle(t, lease, actual, inline)
            if inline is None:  # it held the cap
                used += 1
                reserved -= 1

    for k, (step, amounts, fate, share, later, capped) in enumerate(events):
        now += step
        commit_due(now)  # commits interleave with later arrivals
        cap = 1 if capped else 0
        req = [min(a, s.burst) for a, s in zip(amounts, specs, strict=False)] + [cap]
        lease = f"l{k}"
        (got,) = run(
            state, plan, now, keep, [["acquire", lease, req, -1, keep, periods]]
        )
        assert got[0] == "ok"
        go = now + got[1]
        gos.append(go)
        inline = None if len(got) == 2 else [got[2], go, got[3]]
        assert (inline is None) == capped  # recorded exactly when it holds a cap
        if fate == "cancel" and go > now:
            settle(now, lease, None, inline)
            continue
        reserved += cap
        actual = req
        if fate == "commit-less":
            actual = [a * share // 100 for a in req[:n]] + [cap]
            pending.append((go + later, lease, actual, inline))
        grants.append((go, actual[:n]))
    commit_due(10**18)
    now = max([now, *gos])
    # every proceed time is at least the one before it: first come, first served
    assert gos == sorted(gos)
    # contract 2, exactly: for every rate and every window between two grants
    for i, s in enumerate(specs):
        points = sorted((go, amounts[i]) for go, amounts in grants if amounts[i])
        for a in range(len(points)):
            total = 0
            for b in range(a, len(points)):
                total += points[b][1]
                w = points[b][0] - points[a][0]
                assert total * s.per_us <= s.burst * s.per_us + s.limit * w, (i, a, b)
    # the cap adds up: committed leases counted once, the rest still reserved
    (snap,) = run(state, plan, now, keep, [["snapshot", [""] * (n + 1)]])
    assert snap[1][n] == [used, reserved]
