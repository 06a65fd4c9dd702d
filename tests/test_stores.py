"""Choosing a store, redeclared limits, coalescing and the failure policy."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import Make
from ratebudget import (
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
    StoreUnavailable,
)
from ratebudget._plan import plan_spec
from ratebudget.stores import MemoryStore, SQLiteStore, open_store
from ratebudget.stores._ops import Answer
from ratebudget.testing import FakeClock


def test_urls_name_their_store(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    store = open_store(f"sqlite:///{tmp_path / 'b.db'}")
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "b.db")
    rel = open_store("sqlite:///rel.db")
    assert isinstance(rel, SQLiteStore)
    assert rel.path == "rel.db"
    for bad in ("nope", "ftp://x", "sqlite://", 42):
        with pytest.raises(InvalidRequest):
            open_store(bad)  # type: ignore[arg-type]
    # two slashes would put the file where a host goes: refused, with the fix
    with pytest.raises(InvalidRequest, match=re.escape("'sqlite:///budgets.db'")):
        open_store("sqlite://budgets.db")


def test_a_shared_store_needs_a_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(InvalidRequest, match="needs name="):
        Limiter(Cap(tokens=1), store=url)
    for bad in ("", "a b", "{x}", "x" * 201, 3):
        with pytest.raises(InvalidRequest):
            Limiter(Cap(tokens=1), store=url, name=bad)  # type: ignore[arg-type]
    for ttl in (0, -1, float("inf"), float("nan"), True):
        with pytest.raises(InvalidRequest):
            Limiter(Cap(tokens=1), store=url, name="x", lease_ttl=ttl)
    with pytest.raises(InvalidRequest):
        Limiter(Cap(tokens=1), store=url, name="x", on_store_error="ignore")


def test_a_rate_of_fractional_microseconds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="microseconds"):
        Limiter(
            Rate(tokens=1, per=1e-9 * 1500),
            store=f"sqlite:///{tmp_path / 'b.db'}",
            name="x",
        )


async def test_limiters_of_one_name_share_their_state(make: Make) -> None:
    a = make(Cap(tokens=10), name="n")
    b = make(Cap(tokens=10), name="n")
    await a.record(tokens=3)
    assert (await b.snapshot())[0].used == 3
    other = make(Cap(tokens=10), name="m")
    assert (await other.snapshot())[0].used == 0


async def test_a_redeclared_cap_applies_to_the_usage_so_far(make: Make) -> None:
    """On every store, memory included: one counter per axis, period, zone
    and kind, whatever limit each limiter of the name declares."""
    old = make(Cap(usd="10", per="day"), name="prod")
    await old.record(usd="8")
    lowered = make(Cap(usd="5", per="day"), name="prod")
    snap = await lowered.snapshot()
    assert snap[0].used == 8
    assert snap[0].remaining == 0
    raised = make(Cap(usd="20", per="day"), name="prod")
    async with raised.acquire(usd="11"):
        pass
    assert (await old.snapshot())[0].used == 19  # one counter for all three


async def test_a_redeclared_rate_starts_a_fresh_bucket(make: Make) -> None:
    old = make(Rate(tokens=100, per="minute"), name="prod")
    await old.acquire(100)
    new = make(Rate(tokens=200, per="minute"), name="prod")
    assert (await new.snapshot())[0].tokens == 200
    assert (await old.snapshot())[0].tokens == 0


class CountingStore(SQLiteStore):
    """An SQLite store that counts its transactions."""

    calls = 0
    ops = 0

    def execute(self, *args: Any, **kw: Any) -> Answer:
        self.calls += 1
        self.ops += len(args[2])
        return super().execute(*args, **kw)


async def test_concurrent_calls_share_transactions(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "b.db")
    lim = Limiter(Rate(tokens=1000, per="second"), store=store, name="x")
    await lim.acquire(1)  # registers and creates the schema
    store.calls = store.ops = 0
    async with anyio.create_task_group() as tg:
        for _ in range(64):
            tg.start_soon(lambda: lim.acquire(1)._acquire())
    assert store.ops == 64
    assert store.calls < 64 // 4  # coalesced, in order, into few transactions
    alone = store.calls
    await lim.acquire(1)
    assert store.calls == alone + 1  # one caller: one transaction, no wait


class ShortStore(SQLiteStore):
    """A broken store: its answer leaves out the last operation's result."""

    def execute(self, *args: Any, **kw: Any) -> Answer:
        got = super().execute(*args, **kw)
        return Answer(got.results[:-1], got.now, got.woken, got.local)


async def test_a_store_that_answers_short_is_unavailable(tmp_path: Path) -> None:
    lim = Limiter(
        Rate(tokens=1000, per="second"), store=ShortStore(tmp_path / "b.db"), name="x"
    )
    with anyio.fail_after(10):  # never a hang, never a dead event loop
        with pytest.raises(StoreUnavailable, match="answered 0 of 1"):
            await lim.acquire(1)
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(refused, lim)


async def refused(lim: Limiter) -> None:
    with pytest.raises(StoreUnavailable):
        await lim.acquire(1)


async def test_a_failure_handing_answers_over_reaches_the_callers() -> None:
    """A bug in handing a store's answer to its callers fails those callers;
    it never stops trio (``TrioInternalError``) or strands asyncio's."""
    from ratebudget.stores import _ops as ops
    from ratebudget.stores._calls import Coalescer, RemoteCall

    def execute(batch: list[ops.Op]) -> Answer:
        return Answer([], 0, [], 0)  # too short: handing it over fails

    calls = Coalescer(execute, lambda op: None, lambda e, op: False)
    got: list[BaseException] = []

    async def call() -> None:
        try:
            await RemoteCall(calls, ops.Snapshot(), lambda r, a: r)
        except StoreUnavailable as e:
            got.append(e)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
        await call()  # and the next call is served as usual
    assert len(got) == 6
    assert all("hand over" in str(e) for e in got)


async def test_a_locked_database_is_unavailable_within_the_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    store = SQLiteStore(path, timeout=0.2)
    lim = Limiter(Cap(tokens=10), store=store, name="x")
    await lim.record(tokens=1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with anyio.fail_after(5), pytest.raises(StoreUnavailable, match="locked"):
            await lim.acquire(1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    async with lim.acquire(1):
        pass


async def test_fail_open_is_opt_in_and_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'b.db'}"
    closed = Limiter(Cap(tokens=10), store=url, name="x")
    with pytest.raises(StoreUnavailable):
        await closed.acquire(1)
    opened = Limiter(Cap(tokens=10), store=url, name="x", on_store_error="allow")
    with caplog.at_level(logging.ERROR, logger="ratebudget"):
        async with opened.acquire(5) as lease:
            await lease.commit(tokens=4)
    assert "NOT METERED" in caplog.text


def test_the_plan_keys_name_what_they_count() -> None:
    plan = plan_spec(
        (
            Rate(tokens=90_000, per="minute"),
            Cap(usd="25", per="day"),
            Cap(usd="25", per="day"),
            Cap(usd="30", per="day", soft=True),
        ),
        1000,
    )
    keys = [s.key for s in plan.slots]
    assert keys[0] == "r:tokens:90000:90000:60000000"
    assert keys[1] == "c:usd:day:UTC:hard"
    assert keys[2] == "c:usd:day:UTC:hard#2"  # never one counter counted twice
    assert keys[3] == "c:usd:day:UTC:soft"


async def test_leases_that_reserve_no_cap_leave_no_record(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    clock = FakeClock()
    lim = Limiter(
        Rate(tokens=1000, per="day"),
        Cap(usd="1"),
        store=f"sqlite:///{path}",
        name="x",
        clock=clock,
    )

    def records() -> int:
        with sqlite3.connect(path) as conn:
            (n,) = conn.execute("SELECT count(*) FROM rb_lease").fetchone()
        return int(n)

    for _ in range(20):
        async with lim.acquire(1):
            pass
    assert records() == 0  # nothing to reclaim, nothing kept
    lease = await lim.acquire(10)
    await lease.commit(tokens=4)  # the refund still reaches the bucket
    assert (await lim.snapshot())[0].tokens == 1000 - 20 - 4
    assert records() == 1  # that it was settled, for a retry: kept a minute
    clock.advance(61)
    await lim.snapshot()
    assert records() == 0
    async with lim.acquire(1, usd="0.1"):  # a cap reservation is recorded
        assert records() == 1


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'b.db'}"
    return str(request.getfixturevalue("redis_url"))


async def test_cancellation_in_coalesced_calls_never_leaks(shared_url: str) -> None:
    """Callers cancelled at random points, in and out of flight: nothing is
    left reserved, and usage is exactly what the survivors committed."""
    import random

    rng = random.Random(1234)
    lim = Limiter(
        Cap(tokens=10**6), store=shared_url, name=f"cancel-{os.urandom(6).hex()}"
    )
    committed = 0

    async def one(limit: float) -> None:
        nonlocal committed
        with anyio.move_on_after(limit):
            async with lim.acquire(3) as lease:
                await lease.commit(tokens=2)
                committed += 2

    for _ in range(5):
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(one, rng.choice([0, 0.0005, 0.001, 0.003, 10]))
    snap = await lim.snapshot()  # also carries any deferred release
    assert snap[0].reserved == 0
    assert snap[0].used == committed
    assert committed > 0


async def test_asyncio_task_cancel_through_coalesced_calls(
    shared_url: str, anyio_backend: str
) -> None:
    """``asyncio.wait_for`` cancels with ``Task.cancel``, which no anyio shield
    stops: no caller may hang, and nothing may leak."""
    if anyio_backend != "asyncio":
        pytest.skip("asyncio.Task.cancel exists only on asyncio")
    import asyncio
    import random

    rng = random.Random(7)
    lim = Limiter(
        Cap(tokens=10**6), store=shared_url, name=f"native-{os.urandom(6).hex()}"
    )
    committed = 0

    async def one() -> None:
        nonlocal committed
        try:
            lease = await asyncio.wait_for(
                lim.acquire(1)._acquire(), rng.choice([0.0001, 0.001, 0.003, 10])
            )
        except asyncio.TimeoutError:
            return
        await lease.commit(tokens=1)
        committed += 1

    with anyio.fail_after(30):
        for _ in range(5):
            await asyncio.gather(*(one() for _ in range(30)))
    snap = await lim.snapshot()
    assert snap[0].reserved == 0
    assert snap[0].used == committed
