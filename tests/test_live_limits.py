"""Live limits (contract 19): ``await limiter.update(*limits)`` stores a
scope's limits in its store; they take precedence over the code's for every
limiter object of that name, in every process, objects made later too,
until ``update()`` goes back to the code's. Usage carries over.

On every store, on asyncio and trio; "another process" is another store
object of the same URL here, and a real process in the last tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Make
from ratebudget import (
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
)
from ratebudget.stores import MemoryStore

HERE = Path(__file__).parent
CLI = (sys.executable, "-m", "ratebudget")


async def until(check: Any, limiter: Limiter, seconds: float = 10.0) -> None:
    """Look (a store call each time, which is when a process hears of live
    limits) until ``check()`` holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{limiter!r}: never saw the live limits"
        await limiter.snapshot()
        await anyio.sleep(0.01)


def quick(limiter: Limiter) -> Limiter:
    """Have ``limiter``'s store look for live limits every 20 ms (not every
    second) so the tests of other processes' objects run fast."""
    store = limiter.store
    if hasattr(store, "live_every") and store.live_every is not None:
        store.live_every = 0.02
    return limiter


async def test_a_lowered_cap_refuses_at_once_and_usage_carries_over(make: Make) -> None:
    limiter = make(Cap(usd="10"), name="live")
    await limiter.record(usd="4")
    await limiter.update(Cap(usd="5"))
    assert limiter.limits == (Cap(usd="5"),)
    assert limiter.code_limits == (Cap(usd="10"),)
    snap = await limiter.snapshot()
    assert (snap.limits[0].limit_amount, snap.limits[0].used) == (5, Decimal("4"))
    with pytest.raises(BudgetExceeded) as info:
        await limiter.acquire(usd="1.5")
    assert info.value.limit == 5
    async with limiter.acquire(usd="1"):
        pass
    assert (await limiter.snapshot()).limits[0].used == Decimal("5")
    # back to the code's limits: the usage still counts
    await limiter.update()
    assert limiter.limits == (Cap(usd="10"),)
    async with limiter.acquire(usd="5"):
        pass
    assert (await limiter.snapshot()).limits[0].used == Decimal("10")


async def test_every_object_of_the_name_takes_them_made_before_or_after(
    make: Make,
) -> None:
    first = quick(make(Cap(tokens=1_000), name="shared"))
    other = quick(make(Cap(tokens=1_000), name="shared"))
    await first.record(600)
    await first.update(Cap(tokens=700), Rate(requests=10, per="second"))
    new = (Cap(tokens=700), Rate(requests=10, per="second"))
    await until(lambda: other.limits == new, other)
    with pytest.raises(BudgetExceeded):
        await other.acquire(200)
    later = make(Cap(tokens=1_000), name="shared")
    assert later.limits == new
    snap = await later.snapshot()
    assert [s.limit_amount for s in snap.limits] == [700, 10]
    assert snap.limits[0].used == 600
    # a raised cap frees room for everyone, here and there
    await other.update(Cap(tokens=2_000))
    await until(lambda: first.limits == (Cap(tokens=2_000),), first)
    async with first.acquire(1_000):
        pass


async def test_a_lease_settles_by_the_limits_it_was_made_with(make: Make) -> None:
    limiter = make(Cap(usd="10"), name="pinned")
    lease = await limiter.acquire(usd="6")
    pending = limiter.acquire(usd="1")  # made, not yet acquired
    # a new layout: a rate in front of the cap
    await limiter.update(Rate(requests=100, per="second"), Cap(usd="8"))
    await lease.commit(usd="5")
    snap = await limiter.snapshot()
    assert snap.limits[1].used == Decimal("5")
    assert snap.limits[1].reserved == 0
    async with pending:  # acquired by the limits it was made with
        pass
    assert (await limiter.snapshot()).limits[1].used == Decimal("6")
    with pytest.raises(BudgetExceeded):
        await limiter.acquire(usd="2.5")


async def test_a_parents_update_reaches_its_scopes(make: Make) -> None:
    org = make(Cap(usd="10"), name="org")
    team = org.child("team", Cap(usd="8"))
    alice = team.per_key(Cap(usd="5"))["alice"]
    await alice.record(usd="3")
    await org.update(Cap(usd="4"))
    with pytest.raises(BudgetExceeded) as info:
        await alice.acquire(usd="2")
    assert info.value.scope == org.name
    assert (await org.snapshot()).limits[0].used == Decimal("3")
    # a per-key scope's own limits, live too
    await alice.update(Cap(usd="3.5"))
    await org.update()
    with pytest.raises(BudgetExceeded) as info:
        await alice.acquire(usd="1")
    assert info.value.scope == alice.name
    async with alice.acquire(usd="0.5"):
        pass
    assert (await team.snapshot()).limits[0].used == Decimal("3.5")


async def test_a_per_key_templates_update_reaches_every_key(make: Make) -> None:
    team = make(Cap(usd="100"), name="tmpl")
    users = team.per_key(Cap(usd="5"))
    alice, bob = users["alice"], users["bob"]
    await alice.record(usd="4")
    await users.update(Cap(usd="4.5"))
    assert users.limits == (Cap(usd="4.5"),)
    with pytest.raises(BudgetExceeded) as info:
        await alice.acquire(usd="1")
    assert info.value.scope == alice.name
    await bob.update(Cap(usd="20"))  # a key's own limits win over the template's
    async with bob.acquire(usd="10"):
        pass
    assert users["carol"].limits == (Cap(usd="4.5"),)  # made after
    other = make(Cap(usd="100"), name="tmpl").per_key(Cap(usd="5"))
    assert other["dave"].limits == (Cap(usd="4.5"),)  # another object, made after
    await users.update()
    assert alice.limits == (Cap(usd="5"),)
    assert bob.limits == (Cap(usd="20"),)
    async with alice.acquire(usd="1"):
        pass
    assert (await team.snapshot()).limits[0].used == Decimal("15")


async def test_bad_limits_are_refused_and_nothing_changes(make: Make) -> None:
    limiter = make(Cap(usd="10"), name="bad")
    with pytest.raises(InvalidRequest):
        await limiter.update("usd=5")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await limiter.update(Cap(usd="5"), 7)  # type: ignore[arg-type]
    assert limiter.limits == (Cap(usd="10"),)
    again = make(Cap(usd="10"), name="bad")
    assert again.limits == (Cap(usd="10"),)


async def test_an_unnamed_limiter_keeps_its_own_state() -> None:
    store = MemoryStore()
    one = Limiter(Cap(tokens=100), store=store)
    two = Limiter(Cap(tokens=100), store=store)
    await one.record(80)
    await one.update(Cap(tokens=90))
    assert two.limits == (Cap(tokens=100),)
    with pytest.raises(BudgetExceeded):
        await one.acquire(20)
    assert (await one.snapshot()).limits[0].used == 80
    assert (await two.snapshot()).limits[0].used == 0


def test_the_blocking_facade_updates_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    limiter = Limiter(Cap(tokens=100), store=url, name="sync")
    limiter.sync.record(50)
    limiter.sync.update(Cap(tokens=60))
    assert limiter.limits == (Cap(tokens=60),)
    with pytest.raises(BudgetExceeded):
        limiter.sync.acquire(20)
    with limiter.sync.acquire(10):
        pass
    limiter.sync.update()
    assert Limiter(Cap(tokens=100), store=url, name="sync").limits == (Cap(tokens=100),)


# -- other processes --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'live.db'}"
    return str(request.getfixturevalue(request.param.replace("-", "_") + "_url"))


def test_another_process_takes_them_within_a_second(store_url: str) -> None:
    """A process that built its limiter before the update: its next calls
    (after a second at most on SQLite; on Redis once the message lands) are
    decided by the new limits, the usage carried over."""
    name = f"proc-{uuid.uuid4().hex[:8]}"
    here = Limiter(Cap(usd="10"), store=store_url, name=name)
    here.sync.record(usd="3")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with subprocess.Popen(
        [sys.executable, str(HERE / "live_worker.py"), store_url, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        here.sync.update(Cap(usd="4"))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = json.loads(proc.stdout.readline())
        proc.wait(timeout=30)
    took = time.monotonic() - started
    assert out["limits"] == [{"usd": "4"}]
    assert out["used"] == "3"
    assert out["refused"] is True  # 3 + 2 > 4
    assert took < 8, took


def test_status_shows_the_limits_in_force(store_url: str) -> None:
    """``ratebudget status`` (the real CLI) shows what ``update`` stored."""
    name = f"shown-{uuid.uuid4().hex[:8]}"
    limiter = Limiter(Cap(usd="10"), store=store_url, name=name)
    limiter.sync.record(usd="3")
    limiter.sync.update(Cap(usd="4"))

    def shown() -> dict[str, Any]:
        done = subprocess.run(
            [*CLI, "status", "--store", store_url, name, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        (item,) = json.loads(done.stdout)["limiters"]
        return dict(item["limits"][0])

    limit = shown()
    assert (limit["limit"], limit["used"]) == ("4", "3"), limit
    limiter.sync.update()
    limit = shown()
    assert Decimal(limit["limit"]) == 10, limit


# -- a property: whatever the updates, the money adds up ------------------------------

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(1, 40)),
        st.tuples(st.just("commit"), st.integers(0, 40)),
        st.tuples(st.just("release"), st.just(0)),
        st.tuples(st.just("update"), st.integers(0, 120)),
    ),
    max_size=40,
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None)
@given(steps=_steps)
def test_updates_never_lose_or_invent_usage(
    backend: str, steps: list[tuple[str, int]]
) -> None:
    """Random acquisitions, commits, releases and cap updates (0: back to
    the code's): each grant or refusal is the one the cap in force at that
    moment gives, and the usage and reservations are exact throughout."""

    async def run() -> None:
        limiter = Limiter(Cap(tokens=100), Rate(requests=1_000, per="second"))
        cap, used = 100, 0
        held: list[tuple[Any, int]] = []
        for op, n in steps:
            reserved = sum(est for _, est in held)
            if op == "acquire":
                try:
                    lease = await limiter.try_acquire(n)
                except BudgetExceeded:
                    assert used + n > cap
                    continue
                if lease is None:
                    assert used + reserved + n > cap
                    continue
                assert used + reserved + n <= cap
                held.append((lease, n))
            elif op in ("commit", "release") and held:
                lease, _est = held.pop(0)
                if op == "commit":
                    await lease.commit(tokens=n)
                    used += n
                else:
                    await lease.release()
            elif op == "update":
                if n:
                    await limiter.update(Cap(tokens=n))
                else:
                    await limiter.update()
                cap = n or 100
            snap = await limiter.snapshot()
            assert snap.limits[0].limit_amount == cap
            assert snap.limits[0].used == used
            assert snap.limits[0].reserved == sum(est for _, est in held)

    anyio.run(run, backend=backend)
