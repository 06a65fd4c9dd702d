"""Scopes charged down a path (contract 13-15): ``Limiter.child`` and
``Limiter.per_key``.

An acquisition on a scope is charged to it and to every ancestor in one
decision, or refused with nothing charged anywhere; a parent's usage is the
sum of its children's and its own; settling settles every level; callers of
one limit are served in arrival order whatever scope they come from, and a
caller waiting on its own scope's limits never holds back another scope's.
Everything through the public API, on every store that has scopes, on
asyncio and trio; timings on a ``FakeClock``.
"""

from __future__ import annotations

import gc
import logging
import uuid
import warnings
from decimal import Decimal
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Make
from helpers import NS, run_out, run_until, settle
from ratebudget import (
    AcquireTimeout,
    Alert,
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
)
from ratebudget.testing import FakeClock


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Every store: scopes of a tree share one slot of a Redis Cluster."""
    return str(request.param)


async def used(limiter: Limiter) -> list[Any]:
    """Each limit's usage now: a cap's used and reserved, a rate's tokens."""
    snap = await limiter.snapshot()
    return [(s.used, s.reserved) if s.kind == "cap" else s.tokens for s in snap.limits]


def tree(make: Make, clock: FakeClock | None = None) -> tuple[Limiter, ...]:
    """acme (10 usd, 5 req/s) > search (4 usd, 3 req/s) > alice (1 usd),
    and search > bob (1 usd); acme > ads (2 usd)."""
    kw = {} if clock is None else {"clock": clock}
    org = make(Cap(usd="10"), Rate(requests=5, per="second"), name="acme", **kw)
    search = org.child("search", Cap(usd="4"), Rate(requests=3, per="second"))
    alice = search.child("alice", Cap(usd="1"))
    bob = search.child("bob", Cap(usd="1"))
    ads = org.child("ads", Cap(usd="2"))
    return org, search, alice, bob, ads


# -- one decision down the path ------------------------------------------------------


async def test_an_acquisition_charges_every_level(make: Make) -> None:
    org, search, alice, bob, ads = tree(make)
    assert alice.name == "acme/search/alice" or str(alice.name).startswith("acme-")
    assert alice.parent is search
    assert alice.limits == (Cap(usd="1"),)
    async with alice.acquire(usd="0.25") as lease:
        assert await used(alice) == [(0, Decimal("0.25"))]
        assert await used(search) == [(0, Decimal("0.25")), 2]
        assert await used(org) == [(0, Decimal("0.25")), 4]
        await lease.commit(usd="0.20")
    assert await used(alice) == [(Decimal("0.20"), 0)]
    assert await used(search) == [(Decimal("0.20"), 0), 2]
    assert await used(org) == [(Decimal("0.20"), 0), 4]
    assert await used(bob) == [(0, 0)]
    assert await used(ads) == [(0, 0)]


async def test_a_parents_usage_is_its_own_plus_its_childrens(make: Make) -> None:
    org, search, alice, bob, ads = tree(make)
    for scope, usd in [(alice, "0.5"), (bob, "0.25"), (search, "1"), (ads, "2")]:
        async with scope.acquire(usd=usd):
            pass
    await org.record(usd="0.125")
    assert (await search.snapshot())[0].used == Decimal("1.75")
    assert (await org.snapshot())[0].used == Decimal("3.875")


@pytest.mark.parametrize("refuser", ["alice", "search", "acme"])
async def test_a_refusal_at_any_level_charges_nothing_anywhere(
    make: Make, refuser: str
) -> None:
    org, search, alice, bob, ads = tree(make)
    async with bob.acquire(usd="1"):  # search: 1 of 4 used; acme 1 of 10
        pass
    async with ads.acquire(usd="2"):  # acme: 3 of 10
        pass
    await org.record(usd="3")  # acme: 6 of 10
    await search.record(usd="2.5")  # search: 3.5 of 4; acme 8.5 of 10
    await alice.record(usd="0.25")  # alice: 0.25 of 1; search 3.75; acme 8.75
    ask = {"alice": "0.7501", "search": "0.5", "acme": "0.25"}[refuser]
    if refuser == "acme":
        await org.record(usd="1.05")  # acme: 9.8 of 10
    before = [await used(s) for s in (alice, search, org)]
    with pytest.raises(BudgetExceeded) as caught:
        await alice.acquire(usd=ask)
    assert (
        caught.value.scope
        == {
            "alice": alice.name,
            "search": search.name,
            "acme": org.name,
        }[refuser]
    )
    with pytest.raises(BudgetExceeded):
        await alice.record(usd=ask)
    with pytest.raises(BudgetExceeded):
        await alice.try_acquire(usd=ask)
    assert [await used(s) for s in (alice, search, org)] == before


async def test_the_refusal_names_the_level_nearest_the_caller(make: Make) -> None:
    org, search, alice, _bob, _ads = tree(make)
    with pytest.raises(BudgetExceeded) as caught:
        await alice.acquire(usd="20")  # past alice's, search's and acme's caps
    assert caught.value.scope == alice.name
    with pytest.raises(BudgetExceeded) as caught:
        await search.acquire(usd="20")
    assert caught.value.scope == search.name
    with pytest.raises(BudgetExceeded) as caught:
        alice.sync.record(usd="5")  # past alice's and search's
    assert caught.value.scope == alice.name
    assert await used(org) == [(0, 0), 5]


async def test_release_and_commit_settle_every_level(make: Make) -> None:
    clock = FakeClock()
    org, search, alice, _bob, _ads = tree(make, clock)
    lease = await alice.acquire(usd="0.5", requests=2)
    assert await used(search) == [(0, Decimal("0.5")), 1]
    await lease.release()  # the caps' reservations go back; rates keep theirs
    assert await used(alice) == [(0, 0)]
    assert await used(search) == [(0, 0), 1]
    assert await used(org) == [(0, 0), 3]
    lease = await alice.acquire(usd="0.5")
    await lease.commit(usd="0.75", requests=0)  # over the estimate on usd
    assert await used(alice) == [(Decimal("0.75"), 0)]
    assert await used(search) == [(Decimal("0.75"), 0), 1]
    assert await used(org) == [(Decimal("0.75"), 0), 3]
    lease = await alice.acquire(usd="0.125", requests=1)
    await lease.commit(usd="0.125", requests=2)  # a rate's usage past its estimate
    assert await used(search) == [(Decimal("0.875"), 0), -1]
    assert await used(org) == [(Decimal("0.875"), 0), 1]


async def test_a_scope_on_the_blocking_facade(make: Make) -> None:
    org, _search, alice, _bob, _ads = tree(make, FakeClock())

    def work() -> None:
        with alice.sync.acquire(usd="0.5") as lease:
            lease.commit(usd="0.25")
        with pytest.raises(BudgetExceeded):
            alice.sync.try_acquire(usd="0.8")
        held = alice.sync.try_acquire(usd="0.5")
        assert held is not None
        alice.sync.record(usd="0.125")
        held.release()

    await anyio.to_thread.run_sync(work)
    assert await used(org) == [(Decimal("0.375"), 0), 3]


# -- fairness across scopes -------------------------------------------------------


async def test_a_parents_rate_is_shared_fifo_by_its_childrens_callers(
    make: Make,
) -> None:
    clock = FakeClock()
    org = make(Rate(requests=1, per="second", burst=1), name="fair", clock=clock)
    team = org.child("team", Rate(requests=100, per="second"))
    users = team.per_key(Rate(requests=100, per="second"))
    order: list[str] = []

    async def call(who: Limiter, tag: str) -> None:
        await who.acquire()
        order.append(tag)

    async with anyio.create_task_group() as tg:
        await org.acquire()  # the burst is gone
        for i, who in enumerate(
            [users["a"], users["b"], team, org, users["a"], users["c"]]
        ):
            tg.start_soon(call, who, f"{i}")
            await settle()
        await run_out(clock)
    assert order == ["0", "1", "2", "3", "4", "5"]
    assert clock.monotonic_ns() == 6 * NS


async def test_a_caller_waiting_on_its_own_scope_holds_back_no_sibling(
    make: Make,
) -> None:
    clock = FakeClock()
    org = make(Rate(requests=10, per="second"), name="nohol", clock=clock)
    slow = org.child("slow", Rate(requests=1, per="second", burst=1))
    fast = org.child("fast", Rate(requests=10, per="second"))
    at: dict[str, int] = {}

    async def call(who: Limiter, tag: str) -> None:
        await who.acquire()
        at[tag] = clock.monotonic_ns()

    async with anyio.create_task_group() as tg:
        await slow.acquire()  # slow's own rate is empty
        tg.start_soon(call, slow, "slow")
        await settle()
        tg.start_soon(call, fast, "fast")
        await settle()
        assert at == {"fast": 0}  # not behind slow's waiter
        await run_out(clock)
    assert at == {"fast": 0, "slow": NS}
    # slow's waiter took from acme only once slow's own rate served it (at
    # 1 s, acme full again): one token gone
    assert (await org.snapshot())[0].tokens == 9


async def test_a_waiter_blocked_higher_up_keeps_its_place_and_its_take_below(
    make: Make,
) -> None:
    clock = FakeClock()
    org = make(Rate(requests=1, per="second", burst=1), name="up", clock=clock)
    team = org.child("team", Cap(usd="2"))
    await org.acquire()
    held: list[Any] = []

    async def waiter() -> None:
        held.append(await team.acquire(usd="1"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle()
        # queued at acme's rate, holding its reservation on team's cap
        assert (await team.snapshot())[0].reserved == 1
        assert await team.try_acquire(usd="1.5") is None  # 1 held + 1.5 > 2
        await run_until(clock, NS)
    assert (await team.snapshot())[0].reserved == 1  # granted, not settled
    assert clock.monotonic_ns() == NS
    await held[0].commit()
    assert await used(team) == [(1, 0)]


# -- cancellation and timeouts ---------------------------------------------------------


async def test_a_cancelled_waiter_gives_back_every_level(make: Make) -> None:
    clock = FakeClock()
    org = make(
        Rate(requests=1, per="second", burst=1), Cap(usd="5"), name="cx", clock=clock
    )
    team = org.child("team", Cap(usd="3"), Rate(requests=5, per="second"))
    user = team.child("user", Cap(usd="1"))
    await org.acquire()
    before = [await used(s) for s in (user, team)]

    async def waiter() -> None:
        await user.acquire(usd="0.5")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle()  # queued at acme's rate, holding its takes below
        assert (await user.snapshot())[0].reserved == Decimal("0.5")
        assert await used(team) == [(0, Decimal("0.5")), 4]
        tg.cancel_scope.cancel()
    await settle()
    # the caps' reservations go back; the rate takes back what it gave
    assert [await used(s) for s in (user, team)] == before
    # and a later caller is served at acme's next token, not after the ghost
    await run_until(clock, NS)
    assert await org.try_acquire() is not None


async def test_a_timeout_higher_up_gives_back_below(make: Make) -> None:
    clock = FakeClock()
    org = make(Rate(requests=1, per="second", burst=1), name="tm", clock=clock)
    team = org.child("team", Cap(requests=5), Rate(requests=5, per="second"))
    await org.acquire()
    with pytest.raises(AcquireTimeout) as caught:
        await team.acquire(timeout=0.5)
    assert caught.value.retry_after == pytest.approx(1.0)
    assert await used(team) == [(0, 0), 5]


async def test_a_cap_certain_to_refuse_a_queued_waiter_fails_it_everywhere(
    make: Make,
) -> None:
    clock = FakeClock()
    org = make(
        Rate(requests=1, per="second", burst=1), Cap(usd="1"), name="cf", clock=clock
    )
    team = org.child("team", Cap(usd="5"))
    await org.acquire()
    failed: list[BudgetExceeded] = []

    async def waiter() -> None:
        try:
            await team.acquire(usd="0.75")
        except BudgetExceeded as e:
            failed.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle()
        await org.record(usd="0.5")  # 0.5 used + 0.75 can never fit
        await settle()
    assert len(failed) == 1
    assert failed[0].scope == org.name
    assert await used(team) == [(0, 0)]


# -- alerts ------------------------------------------------------------------------


async def test_alerts_reach_the_scope_and_its_ancestors(make: Make) -> None:
    got: dict[str, list[Alert]] = {"org": [], "team": [], "user": []}
    org = make(Cap(usd="10", alert_at=(0.5,)), name="al", on_alert=got["org"].append)
    team = org.child("team", Cap(usd="8", alert_at=(0.5,)), on_alert=got["team"].append)
    user = team.child(
        "user", Cap(usd="10", alert_at=(0.5,)), on_alert=got["user"].append
    )
    async with user.acquire(usd="4.5") as lease:  # team passes 50% (4)
        await lease.commit()
    await user.flush_alerts()
    assert [a.scope for a in got["user"]] == []
    assert [a.scope for a in got["team"]] == [team.name]
    assert [a.scope for a in got["org"]] == [team.name]
    await user.record(usd="0.75")  # user and acme pass 50% (5)
    await user.flush_alerts()
    assert sorted(str(a.scope) for a in got["org"]) == sorted(
        map(str, [team.name, org.name, user.name])
    )
    assert [a.scope for a in got["user"]] == [user.name]
    assert {a.scope for a in got["team"]} == {team.name, user.name}


async def test_a_shadow_root_makes_shadow_scopes(make: Make, caplog: Any) -> None:
    seen: list[Alert] = []
    org = make(Cap(usd="1"), name="sh", shadow=True, on_alert=seen.append)
    team = org.child("team", Cap(usd="0.5"))
    assert team.shadow
    async with team.acquire(usd="0.75"):  # over team's cap: reported, granted
        pass
    await team.flush_alerts()
    assert [(a.kind, a.scope) for a in seen] == [("shadow", team.name)]
    assert (await org.snapshot())[0].used == Decimal("0.75")


# -- the rest of the surface ---------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "a/b", "x" * 201, "tab\there", 3, None, "new\nline", ["x"], b"x"]
)
def test_bad_scope_names_and_keys_are_refused(name: Any) -> None:
    org = Limiter(Cap(usd="1"))
    with pytest.raises(InvalidRequest, match="child name"):
        org.child(name)
    users = org.per_key(Cap(usd="1"))
    with pytest.raises(InvalidRequest, match="key"):
        users[name]
    assert len(users) == 0


def test_bad_per_key_arguments_are_refused() -> None:
    org = Limiter(Cap(usd="1"))
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(InvalidRequest, match="max_keys"):
            org.per_key(Cap(usd="1"), max_keys=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="Rate and Cap"):
        org.child("x", "1 usd")  # type: ignore[arg-type]


async def test_a_scope_lowers_its_ancestors_rates(make: Make) -> None:
    clock = FakeClock()
    org = make(Rate(tokens=1_000, per="minute"), name="lw", clock=clock)
    team = org.child("team", Rate(tokens=500, per="minute"))
    team.lower(tokens=100, per=60)
    assert (await team.snapshot())[0].tokens == 100
    assert (await org.snapshot())[0].tokens == 100


async def test_a_dropped_lease_of_a_scope_is_released_everywhere(make: Make) -> None:
    org = make(Cap(usd="1"), name="dr")
    team = org.child("team", Cap(usd="1"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        lease = await team.acquire(usd="0.5")
        del lease
        gc.collect()
    await org.record(usd="0")  # any next operation releases it
    assert await used(team) == [(0, 0)]
    assert await used(org) == [(0, 0)]


async def test_children_of_one_name_share_their_state(make: Make) -> None:
    org = make(Cap(usd="1"), name="sn")
    a = org.child("team", Cap(usd="0.5"))
    b = org.child("team", Cap(usd="0.5"))
    await a.record(usd="0.5")
    with pytest.raises(BudgetExceeded):
        await b.acquire(usd="0.25")


# -- per-key scopes ----------------------------------------------------------------


async def test_per_key_makes_a_child_per_key_on_first_use(make: Make) -> None:
    org = make(Cap(usd="10"), name="pk")
    users = org.per_key(Cap(usd="1"), Rate(requests=2, per="second"))
    alice = users["alice"]
    assert users["alice"] is alice
    assert alice.name == f"{org.name}/alice"
    assert "alice" in users
    assert "bob" not in users
    assert len(users) == 1
    assert users.limits == alice.limits
    await alice.record(usd="1")
    with pytest.raises(BudgetExceeded) as caught:
        await users["alice"].acquire(usd="0.01")
    assert caught.value.scope == alice.name
    async with users["bob"].acquire(usd="1"):
        pass
    assert sorted(users) == ["alice", "bob"]
    assert (await org.snapshot())[0].used == 2


async def test_per_key_memory_stays_bounded_and_forgets_only_idle_keys(
    caplog: Any,
) -> None:
    clock = FakeClock()
    org = Limiter(Cap(usd="1000000"), clock=clock)
    users = org.per_key(Rate(requests=1, per="second"), Cap(usd="10"), max_keys=100)
    busy = await users["busy"].acquire(usd="1")  # it holds a reservation
    for i in range(10_000):
        async with users[f"u{i}"].acquire():
            pass
        if i % 50 == 0:
            clock.advance(1)  # the earlier keys' rates refill: idle again
    assert len(users) <= 100 + 60  # the last second's keys are not idle yet
    assert "busy" in users  # never forgotten while it counts
    await busy.release()
    clock.advance(1)
    for i in range(200):
        users[f"v{i}"]
    assert len(users) <= 100 + 8
    assert (await org.snapshot())[0].reserved == 0


async def test_a_forgotten_key_starts_afresh_and_its_old_object_follows(
    caplog: Any,
) -> None:
    org = Limiter(Cap(usd="10"))
    users = org.per_key(Cap(usd="1", per="day"), max_keys=1)
    alice = users["alice"]
    await alice.record(usd="0.5")  # counts this period: never forgotten
    with caplog.at_level(logging.WARNING, logger="ratebudget"):
        for i in range(20):
            users[f"idle{i}"]
    assert "alice" in users
    assert "past max_keys=1" in caplog.text
    assert (await users["alice"].snapshot())[0].used == Decimal("0.5")
    assert (await org.snapshot())[0].used == Decimal("0.5")


# -- the invariants, on random trees -------------------------------------------------

Tree = list[tuple[int, int]]  # (parent index or -1, cap in cents), in order


@st.composite
def trees_and_ops(draw: st.DrawFn) -> tuple[Tree, list[tuple[Any, ...]]]:
    n = draw(st.integers(1, 7))
    shape: Tree = [(-1, draw(st.integers(1, 400)))]
    for i in range(1, n):
        shape.append((draw(st.integers(0, i - 1)), draw(st.integers(1, 400))))
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(
                    st.just("acquire"), st.integers(0, n - 1), st.integers(0, 150)
                ),
                st.tuples(st.just("commit"), st.integers(0, 30), st.integers(0, 100)),
                st.tuples(st.just("release"), st.integers(0, 30)),
                st.tuples(
                    st.just("record"), st.integers(0, n - 1), st.integers(0, 150)
                ),
            ),
            max_size=40,
        )
    )
    return shape, ops


@pytest.mark.parametrize(
    ("backend", "kind"),
    [
        (backend, kind)
        for kind in ("memory", "sqlite", "redis")
        for backend in ("asyncio", "trio")
    ],
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=trees_and_ops())
def test_no_level_ever_passes_its_cap_and_every_total_is_exact(
    backend: str,
    kind: str,
    tmp_path_factory: Any,
    request: pytest.FixtureRequest,
    case: tuple[Tree, list[tuple[Any, ...]]],
) -> None:
    """Random trees, random grants, commits (at most the estimate), releases
    and records: at every level used + reserved never passes the cap, and a
    level's usage is exactly what was charged to it and below it."""
    shape, ops = case
    cents = Decimal("0.01")
    scopes: list[Limiter] = []
    where: dict[str, Any] = {}
    if kind == "sqlite":
        db = tmp_path_factory.mktemp("tree") / "budgets.db"
        where = {"store": f"sqlite:///{db}", "name": "root"}
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
        where = {"store": url, "name": uuid.uuid4().hex}
    for i, (parent, cap) in enumerate(shape):
        limit = Cap(usd=str(cap * cents))
        scopes.append(
            Limiter(limit, **where)
            if parent < 0
            else scopes[parent].child(f"s{i}", limit)
        )

    def path(i: int) -> list[int]:
        out = [i]
        while shape[out[-1]][0] >= 0:
            out.append(shape[out[-1]][0])
        return out

    used = [0] * len(shape)  # cents, by the model
    reserved = [0] * len(shape)
    held: list[tuple[int, int, Any]] = []  # (scope, cents, lease)

    async def run() -> None:
        for op in ops:
            if op[0] == "acquire":
                _, i, c = op
                fits = all(used[k] + reserved[k] + c <= shape[k][1] for k in path(i))
                certain = any(used[k] + c > shape[k][1] for k in path(i))
                try:
                    lease = await scopes[i].try_acquire(usd=c * cents)
                except BudgetExceeded as e:
                    assert certain
                    nearest = next(k for k in path(i) if used[k] + c > shape[k][1])
                    refused_by = e.scope
                    assert refused_by == scopes[nearest].name
                    continue
                assert not certain
                assert (lease is not None) == fits
                if lease is not None:
                    held.append((i, c, lease))
                    for k in path(i):
                        reserved[k] += c
            elif op[0] in ("commit", "release") and held:
                i, c, lease = held.pop(op[1] % len(held))
                actual = min(op[2], c) if op[0] == "commit" else 0
                if op[0] == "commit":
                    await lease.commit(usd=actual * cents)
                else:
                    await lease.release()
                for k in path(i):
                    reserved[k] -= c
                    used[k] += actual
            elif op[0] == "record":
                _, i, c = op
                fits = all(used[k] + reserved[k] + c <= shape[k][1] for k in path(i))
                try:
                    await scopes[i].record(usd=c * cents)
                except BudgetExceeded:
                    assert not fits
                    continue
                assert fits
                for k in path(i):
                    used[k] += c
            for k, scope in enumerate(scopes):
                snap = (await scope.snapshot())[0]
                assert (snap.used, snap.reserved) == (
                    used[k] * cents,
                    reserved[k] * cents,
                )
                assert used[k] + reserved[k] <= shape[k][1]

    anyio.run(run, backend=backend)


# -- ratebudget status ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_status_shows_every_scope_with_its_own_usage(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    """The real CLI, in a subprocess: each scope is listed under its full
    name with its own limits, a parent's usage including its children's
    (on Redis a scope's keys lie under its root's hash tag)."""
    import json
    import subprocess
    import sys

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
    else:
        url = request.getfixturevalue("redis_url")
    root = f"st-{uuid.uuid4().hex[:8]}"
    org = Limiter(Cap(usd="10"), store=url, name=root)
    team = org.child("search", Cap(usd="4"))
    users = team.per_key(Cap(usd="1", per="day"))
    users["alice"].sync.record(usd="0.25")
    with users["bob"].sync.acquire(usd="0.5") as lease:
        lease.commit(usd="0.125")
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "ratebudget",
            "status",
            "--store",
            url,
            f"{root}*",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = {
        item["name"]: item["limits"][0]["used"]
        for item in json.loads(got.stdout)["limiters"]
    }
    # per-key scopes are not in the registry (it would grow with every key):
    # status --config lists them (test_budgets_file.py)
    assert shown == {root: "0.375", f"{root}/search": "0.375"}
    assert store_keys(url, team) == [f"{root}/search/alice", f"{root}/search/bob"]


def store_keys(url: str, scope: Limiter) -> list[str]:
    """The full names of the scopes right under ``scope`` with a state."""
    assert scope.name is not None
    root = scope
    while root.parent is not None:
        root = root.parent
    assert root.name is not None
    return scope.store.keys_of(scope.name, root.name)


async def test_sqlite_forgets_idle_per_key_states(tmp_path: Any) -> None:
    """The SQLite store sweeps the states of per-key scopes idle for an hour
    past the lease TTL that count nothing any more (Redis lets them expire);
    one with usage this period, a lease or a rate still refilling stays."""
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'budgets.db'}"
    org = Limiter(
        Rate(requests=1_000, per="second"),
        store=url,
        name="sw",
        clock=clock,
        lease_ttl=60,
    )
    users = org.per_key(Rate(requests=5, per="second"), Cap(usd="1", per="month"))
    daily = org.per_key(Rate(requests=1, per="day"))
    for i in range(20):
        async with users[f"u{i}"].acquire():
            pass
    await users["spender"].record(usd="0.5")  # usage this month: kept
    held = await users["holder"].acquire(usd="0.25")  # a lease: kept
    async with daily["slow"].acquire():  # a day to refill: kept
        pass
    assert len(store_keys(url, org)) == 23
    clock.advance(2 * 3600)  # past an hour beyond the lease TTL
    async with users["late"].acquire():  # the next decision sweeps
        pass
    assert store_keys(url, org) == ["sw/holder", "sw/late", "sw/slow", "sw/spender"]
    await held.release()
    # a forgotten key starts afresh, as it would have
    async with users["u0"].acquire(usd="1"):
        pass
    assert (await org.snapshot()).limits[0].remaining == 1_000 - 2
