"""The decision down a path of scopes (``_path``), on the Python core alone.

A path is a scope's level and its ancestors' (each a state and the plan of
that scope's own limits). These tests drive it directly, in integer
nanoseconds, as the stores will: what it takes, where it queues, that a
refusal anywhere leaves every level as it was, that a caller waiting on its
own scope never holds back a sibling's, that waiters of a shared level are
served in order, and (hypothesis) that no hard cap at any level is ever
crossed and every level's totals stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ratebudget import Cap, Rate
from ratebudget._decide import (
    CLAIMED,
    FAILED,
    WAITING,
    Bucket,
    CapSlot,
    Entry,
    Exceeded,
    State,
    TooLong,
)
from ratebudget._path import Climb, Climbs, Level, Refused
from ratebudget._path import abort as path_abort
from ratebudget._path import acquire as path_acquire
from ratebudget._path import poll as path_poll
from ratebudget._path import record as path_record
from ratebudget._path import settle as path_settle
from ratebudget._plan import plan_spec

S = 10**9  # ticks (ns) per second


@dataclass
class Scope:
    """One scope of a test tree: its limits, state, and its level's plan."""

    limits: tuple[Rate | Cap, ...]
    parent: Scope | None = None
    st: State = field(default_factory=State)

    def __post_init__(self) -> None:
        self.level = Level(self.st, plan_spec(self.limits, 1).bind(self.st, 0))

    def path(self) -> list[Scope]:
        out: list[Scope] = [self]
        while out[-1].parent is not None:
            parent = out[-1].parent
            assert parent is not None
            out.append(parent)
        return out

    def req(self, **amounts: int) -> tuple[int, ...]:
        return tuple(amounts.get(limit.axis, 0) for limit in self.limits)

    def level_of(self, i: int) -> int:
        slot = self.level.plan.slots[i]
        if isinstance(slot, Bucket):
            return slot.now(slot.last) // slot.per
        raise AssertionError("not a rate")

    def cap(self, i: int) -> tuple[int, int]:
        slot = self.level.plan.slots[i]
        assert isinstance(slot, CapSlot)
        return slot.counter.used, slot.counter.reserved


def levels(scope: Scope) -> list[Level]:
    return [s.level for s in scope.path()]


def reqs(scope: Scope, **amounts: int) -> list[tuple[int, ...]]:
    return [s.req(**amounts) for s in scope.path()]


def acquire(
    scope: Scope,
    climbs: Climbs,
    now: int,
    timeout: int | None = None,
    wait: bool = True,
    **amounts: int,
) -> list[int] | Entry | Refused:
    return path_acquire(
        levels(scope),
        reqs(scope, **amounts),
        now,
        now,
        timeout,
        Entry if wait else None,
        climbs,
    )


def tree() -> tuple[Scope, Scope, Scope, Scope]:
    """org (a cap of 100 tokens) > team (2 requests a second) > users a and
    b (1 request a second each)."""
    org = Scope((Cap(tokens=100),))
    team = Scope((Rate(requests=2, per=1),), org)
    a = Scope((Rate(requests=1, per=1),), team)
    b = Scope((Rate(requests=1, per=1),), team)
    return org, team, a, b


def test_an_uncontended_acquisition_takes_from_every_level() -> None:
    org, team, a, _ = tree()
    got = acquire(a, Climbs(), 0, requests=1, tokens=10)
    assert isinstance(got, list)
    assert len(got) == 3
    assert (a.level_of(0), team.level_of(0), org.cap(0)) == (0, 1, (0, 10))


def test_a_refusal_anywhere_leaves_every_level_as_it_was() -> None:
    org, team, a, _ = tree()
    climbs = Climbs()
    got = acquire(a, climbs, 0, requests=1, tokens=101)  # past the org's cap
    assert isinstance(got, Refused)
    assert got.level == 2
    assert isinstance(got.error, Exceeded)
    assert (a.level_of(0), team.level_of(0), org.cap(0)) == (1, 2, (0, 0))
    assert climbs == {}


def test_a_caller_waiting_on_its_own_rate_holds_back_no_sibling() -> None:
    _, team, a, b = tree()
    climbs = Climbs()
    assert isinstance(acquire(a, climbs, 0, requests=1), list)
    waiting = acquire(a, climbs, 0, requests=1)  # a's own rate is empty
    assert isinstance(waiting, Entry)
    assert climbs[waiting].at == 0
    # b shares the team and the org with a's waiter, which waits on neither
    assert isinstance(acquire(b, climbs, 0, requests=1), list)
    assert team.level_of(0) == 0


def test_waiters_of_a_shared_level_are_served_in_order() -> None:
    org, team, a, b = tree()
    c = Scope((Rate(requests=1, per=1),), team)
    climbs = Climbs()
    # the team's 2 requests: a takes one, then c one
    assert isinstance(acquire(a, climbs, 0, requests=1), list)
    assert isinstance(acquire(c, climbs, 0, requests=1), list)
    first = acquire(b, climbs, 1, requests=1)  # queued at the team
    assert isinstance(first, Entry)
    assert climbs[first].at == 1
    assert b.level_of(0) == 0  # it holds b's own request meanwhile
    second = acquire(c, climbs, 2, requests=1)  # c's own rate: empty
    assert isinstance(second, Entry)
    assert climbs[second].at == 0
    # half a second on: the team has one request again, and b is first
    assert path_poll(climbs, second, S // 2, S // 2) is not None
    assert second.state == WAITING
    assert path_poll(climbs, first, S // 2, S // 2) is None
    assert first.state == CLAIMED
    assert len(climbs.pop(first).takes) == 3
    # c's waiter: its own rate refills at 1 s, then the team's at 1 s
    assert path_poll(climbs, second, S, S) is None
    assert second.state == CLAIMED
    assert org.cap(0) == (0, 0)


def empty_team(team: Scope, a: Scope, climbs: Climbs) -> None:
    """The team's 2 requests taken, by a and by a third user."""
    c = Scope((Rate(requests=1, per=1),), team)
    assert isinstance(acquire(a, climbs, 0, requests=1), list)
    assert isinstance(acquire(c, climbs, 0, requests=1), list)
    assert team.level_of(0) == 0


def test_cancelling_a_waiter_gives_back_what_it_took_below() -> None:
    _, team, a, b = tree()
    climbs = Climbs()
    empty_team(team, a, climbs)
    waiting = acquire(b, climbs, 0, requests=1)
    assert isinstance(waiting, Entry)
    assert b.level_of(0) == 0
    path_abort(climbs, waiting, 1, 1)
    assert b.level_of(0) == 1  # b's own request came back
    assert climbs == {}
    assert team.level_of(0) == 0


def test_a_refusal_found_higher_up_gives_back_below() -> None:
    org = Scope((Cap(tokens=10),))
    team = Scope((Rate(requests=1, per=1),), org)
    a, b = (Scope((Rate(requests=1, per=1),), team) for _ in range(2))
    climbs = Climbs()
    lease = acquire(a, climbs, 0, requests=1, tokens=6)
    assert isinstance(lease, list)
    waiting = acquire(b, climbs, 0, requests=1, tokens=5)  # queued at the team
    assert isinstance(waiting, Entry)
    # a uses its 6: b's 5 can no longer fit under the org's 10
    got = path_settle(
        levels(a),
        lease,
        reqs(a, requests=1, tokens=6),
        reqs(a, requests=1, tokens=6),
        1,
        1,
        climbs,
    )
    assert isinstance(got, list)
    assert path_poll(climbs, waiting, S, S) is None
    assert waiting.state == FAILED
    assert isinstance(waiting.error, Exceeded)
    assert climbs[waiting].failed_at == 2
    assert b.level_of(0) == 1  # given back
    assert team.level_of(0) == 1  # the team's request too
    assert org.cap(0) == (6, 0)


def test_a_wait_higher_up_times_out_and_gives_back() -> None:
    org = Scope((Cap(tokens=100),))
    team = Scope((Rate(requests=1, per=10),), org)  # one request per 10 s
    a, b = (Scope((Rate(requests=1, per=1),), team) for _ in range(2))
    climbs = Climbs()
    assert isinstance(acquire(a, climbs, 0, requests=1), list)
    waiting = acquire(b, climbs, 0, timeout=20 * S, requests=1)
    assert isinstance(waiting, Entry)
    assert climbs[waiting].at == 1  # at the team, holding b's own request
    path_abort(climbs, waiting, S, S)
    # a timeout shorter than the team's wait: refused at once, given back
    got = acquire(b, climbs, S, timeout=S, requests=1)
    assert isinstance(got, Refused)
    assert (got.level, isinstance(got.error, TooLong)) == (1, True)
    assert b.level_of(0) == 1
    # one that times out while queued there: failed when it looks, given back
    late = acquire(b, climbs, S, timeout=None, requests=1)
    assert isinstance(late, Entry)
    climbs[late].timeout_at = 2 * S
    late.timeout_at = 2 * S
    assert path_poll(climbs, late, 3 * S, 3 * S) is None
    assert late.state == FAILED
    assert isinstance(late.error, TooLong)
    assert b.level_of(0) == 1


def test_a_record_refused_anywhere_changes_nothing() -> None:
    org, team, a, _ = tree()
    climbs = Climbs()
    got = path_record(levels(a), reqs(a, requests=5, tokens=101), 0, 0, climbs)
    assert isinstance(got, Refused)
    assert got.level == 2
    assert (a.level_of(0), team.level_of(0), org.cap(0)) == (1, 2, (0, 0))
    done = path_record(levels(a), reqs(a, requests=5, tokens=100), 0, 0, climbs)
    assert isinstance(done, list)
    assert org.cap(0) == (100, 0)


# -- every level's totals, under random operations ---------------------------------


@dataclass
class Held:
    scope: Scope
    takes: list[int]
    est: int


OPS = ("acquire", "acquire", "commit", "release", "poll", "poll", "cancel", "record")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(OPS),
            st.integers(0, 3),  # which user
            st.integers(0, 12),  # tokens
            st.sampled_from([0, 0, S // 10, S // 3, S]),  # time step
        ),
        min_size=10,
        max_size=80,
    )
)
def test_no_cap_is_ever_crossed_and_the_totals_add_up(
    ops: list[tuple[str, int, int, int]],
) -> None:
    # every level can be the one that blocks: users allow 2 a second, their
    # teams 1, the org 1 (a burst of 2)
    org = Scope((Cap(tokens=60), Rate(requests=1, per=1, burst=2)))
    teams = [Scope((Cap(tokens=40), Rate(requests=1, per=1)), org) for _ in range(2)]
    users = [Scope((Cap(tokens=25), Rate(requests=2, per=1)), t) for t in teams * 2]
    climbs = Climbs()
    held: list[Held] = []
    waiting: list[tuple[Entry, Scope, int]] = []
    committed = {id(s): 0 for s in [org, *teams, *users]}
    now = 0

    def charge(scope: Scope, n: int) -> None:
        for s in scope.path():
            committed[id(s)] += n

    for op, who, n, step in ops:
        now += step
        user = users[who]
        if op == "acquire":
            got = acquire(user, climbs, now, requests=1, tokens=n)
            if isinstance(got, list):
                held.append(Held(user, got, n))
            elif isinstance(got, Entry):
                event(f"queued at level {climbs[got].at}")
                waiting.append((got, user, n))
            else:
                event(f"refused at level {got.level}")
        elif op in ("commit", "release") and held:
            h = held.pop(who % len(held))
            used = min(n, h.est) if op == "commit" else None
            path_settle(
                levels(h.scope),
                h.takes,
                reqs(h.scope, requests=1, tokens=h.est),
                None if used is None else reqs(h.scope, requests=1, tokens=used),
                now,
                now,
                climbs,
            )
            if used is not None:
                charge(h.scope, used)
        elif op == "record":
            recorded = path_record(levels(user), reqs(user, tokens=n), now, now, climbs)
            if isinstance(recorded, list):
                charge(user, n)
        elif op in ("poll", "cancel") and waiting:
            e, scope, est = waiting[who % len(waiting)]
            if op == "cancel":
                path_abort(climbs, e, now, now)
                waiting.remove((e, scope, est))
            else:
                path_poll(climbs, e, now, now)
                if e.state == CLAIMED:
                    event("a waiter was granted down its path")
                    c: Climb = climbs.pop(e)
                    held.append(Held(scope, c.takes, est))
                    waiting.remove((e, scope, est))
                elif e.state == FAILED:
                    event("a waiter failed")
                    climbs.pop(e, None)
                    waiting.remove((e, scope, est))
        for s in [org, *teams, *users]:
            used, reserved = s.cap(0)
            assert used + reserved <= s.limits[0].limit
            assert used == committed[id(s)]
    # everyone leaves: nothing stays reserved anywhere
    for e, _, _ in waiting:
        path_abort(climbs, e, now, now)
    for h in held:
        path_settle(
            levels(h.scope),
            h.takes,
            reqs(h.scope, requests=1, tokens=h.est),
            None,
            now,
            now,
            climbs,
        )
    assert climbs == {}
    for s in [org, *teams, *users]:
        assert s.cap(0) == (committed[id(s)], 0)
    assert org.cap(0)[0] == sum(committed[id(t)] for t in teams)
