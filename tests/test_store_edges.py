"""What was found on the shared stores, tried as a user would (each one a
reproduction that failed before the one decision core).

- a commit that failed with ``StoreUnavailable`` can be retried, and counts once;
- a store refuses what it cannot count exactly, before anything changes;
- the store's clamped clock picks a cap's period, not the client's;
- absurd settings and bad input are ``InvalidRequest`` at the call;
- an SQLite file replaced under a running limiter fails loudly.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import Make
from ratebudget import (
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
    StoreUnavailable,
)
from ratebudget.stores import RedisStore, SQLiteStore
from ratebudget.stores import _ops as ops
from ratebudget.testing import FakeClock


class SteppingClock(FakeClock):
    """A fake clock whose wall clock can be stepped back (NTP, a VM resumed)."""

    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.skew_ns = 0

    def time(self) -> float:
        return super().time() + self.skew_ns / 1e9

    def time_ns(self) -> int:
        return super().time_ns() + self.skew_ns


# -- retried commits count once ----------------------------------------------------


async def test_a_commit_that_failed_can_be_retried_and_counts_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    lim = Limiter(Cap(usd="10"), store=SQLiteStore(path, timeout=0.1), name="retry")
    lease = await lim.acquire(usd="1")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the file
    try:
        with pytest.raises(StoreUnavailable):
            await lease.commit(usd="0.4")
        assert not lease.settled  # still active: the store never heard
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await lease.commit(usd="0.4")  # the retry
    snap = await lim.snapshot()
    assert snap[0].used == Decimal("0.4")
    assert snap[0].reserved == 0
    await lease.release()  # settled now: a no-op
    assert (await lim.snapshot())[0].used == Decimal("0.4")


class _LosesAnswers:
    """A store whose next settles apply, then fail as if the answer was lost."""

    lose = 0

    def execute(self, name: str, spec: Any, batch: Any, **kw: Any) -> Any:
        answer = super().execute(name, spec, batch, **kw)  # type: ignore[misc]
        if self.lose and any(isinstance(op, ops.Settle) for op in batch):
            self.lose -= 1
            raise StoreUnavailable("the answer was lost on the way back")
        return answer


class LosingSQLite(_LosesAnswers, SQLiteStore):
    pass


class LosingRedis(_LosesAnswers, RedisStore):
    pass


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_retried_commit_that_had_landed_is_not_counted_again(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A commit whose answer was lost (the store applied it) raises; the
    retry, with the same lease id, finds it settled: it counts once."""
    store: _LosesAnswers
    if kind == "sqlite":
        store = LosingSQLite(tmp_path / "b.db")
    else:
        store = LosingRedis(request.getfixturevalue("redis_url"))
    lim = Limiter(
        Rate(tokens=100, per="minute"),
        Cap(usd="10"),
        store=store,
        name=f"twice-{kind}-{tmp_path.name}",
    )
    lease = await lim.acquire(50, usd="1")
    store.lose = 1
    with pytest.raises(StoreUnavailable):
        await lease.commit(tokens=20, usd="0.5")
    await lease.commit(tokens=20, usd="0.5")
    snap = await lim.snapshot()
    assert snap[0].tokens == 80  # refunded once, not twice
    assert snap[1].used == Decimal("0.5")  # counted once
    assert snap[1].reserved == 0


# -- what a store cannot hold exactly -------------------------------------------


async def test_redis_refuses_counts_it_cannot_hold_exactly(redis_url: str) -> None:
    lim = Limiter(
        Cap(tokens=10**15, soft=True),
        Cap(usd="1000000", soft=True),
        store=redis_url,
        name=f"big-{uuid.uuid4().hex}",
    )
    lease = await lim.acquire(1)
    with pytest.raises(InvalidRequest, match="exactly"):
        await lease.commit(tokens=2**53 + 1)
    with pytest.raises(InvalidRequest, match="exactly"):
        await lim.record(tokens=10**18)
    with pytest.raises(InvalidRequest, match="exactly"):
        await lim.record(usd="12345678.123456789")
    snap = await lim.snapshot()
    assert (snap[0].used, snap[1].used) == (0, 0)  # nothing was counted
    await lease.commit(tokens=7)
    assert (await lim.snapshot())[0].used == 7


async def test_sqlite_counts_big_amounts_exactly(tmp_path: Path) -> None:
    lim = Limiter(
        Cap(tokens=10**18, soft=True),
        Cap(usd="100000000", soft=True),
        store=f"sqlite:///{tmp_path / 'b.db'}",
        name="big",
    )
    await lim.record(tokens=2**53 + 1)
    await lim.record(usd="12345678.123456789")
    snap = await lim.snapshot()
    assert snap[0].used == 2**53 + 1
    assert snap[1].used == Decimal("12345678.123456789")


# -- the store's clock picks the period -----------------------------------------------


async def test_a_client_clock_stepping_back_books_nothing_into_a_closed_month(
    make: Make,
) -> None:
    """$4 in March, $1 in April; the client's clock steps back 5 s into
    March; $1 more goes to April (the store's clock never runs back), so
    April allows $3 more under its $5 cap, not $4."""
    clock = SteppingClock(datetime(2026, 3, 31, 23, 59, 58, tzinfo=timezone.utc))
    lim = make(Cap(usd="5", per="month"), name="monthly", clock=clock)
    await lim.record(usd="4")
    clock.advance(4)  # April 1st, 00:00:02
    await lim.record(usd="1")
    clock.skew_ns = -5 * 10**9  # the wall clock steps back to March 31st
    await lim.record(usd="1")
    snap = await lim.snapshot()
    assert snap[0].period == "2026-04"
    assert snap[0].used == 2
    await lim.record(usd="3")
    with pytest.raises(Exception, match="past its limit"):
        await lim.record(usd="1")


# -- settings and input at the call -----------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"lease_ttl": 1e16},
        {"lease_ttl": float("inf")},
        {"lease_ttl": True},
        {"clock": 5},
        {"on_store_error": "maybe"},
    ],
)
def test_absurd_limiter_settings_are_refused(
    kw: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest):
        Limiter(Cap(usd=1), store=f"sqlite:///{tmp_path / 'b.db'}", name="x", **kw)


async def test_a_huge_timeout_is_refused_not_overflowed() -> None:
    lim = Limiter(Rate(tokens=1, per=1))
    with pytest.raises(InvalidRequest, match="timeout"):
        lim.acquire(1, timeout=1e300)
    async with lim.acquire(1, timeout=float("inf")):  # inf: no timeout
        pass


@pytest.mark.parametrize(
    "make_store",
    [
        lambda p: SQLiteStore(p, timeout=True),
        lambda p: SQLiteStore(p, timeout=float("inf")),
        lambda p: SQLiteStore(p, synchronous=5),  # type: ignore[arg-type]
        lambda p: SQLiteStore(":memory:"),
        lambda p: RedisStore("redis://localhost:6379/0", timeout=float("inf")),
        lambda p: RedisStore("redis://localhost:6379/abc"),
        lambda p: RedisStore("redis://localhost:6379/0", timeout=True),
    ],
)
def test_bad_store_settings_are_refused(make_store: Any, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        make_store(str(tmp_path / "b.db"))


def test_an_in_memory_sqlite_url_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="file"):
        Limiter(Cap(usd=1), store="sqlite:///:memory:", name="x")


# -- an SQLite file replaced underneath ---------------------------------------------------


async def test_a_replaced_sqlite_file_fails_loudly(tmp_path: Path) -> None:
    folder = tmp_path / "budgets"
    folder.mkdir()
    url = f"sqlite:///{folder / 'b.db'}"
    old = Limiter(Cap(usd="5"), store=url, name="x")
    await old.record(usd="4")
    shutil.rmtree(folder)  # removed, then made again (a redeploy, a cleanup job)
    folder.mkdir()
    new = Limiter(Cap(usd="5"), store=url, name="x")
    await new.record(usd="4")  # a new file: it starts at $0
    with pytest.raises(StoreUnavailable, match="no longer the one"):
        await old.record(usd="1")
    with pytest.raises(StoreUnavailable, match="no longer the one"):
        await old.acquire(usd="1")


async def test_an_unreadable_counter_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    lim = Limiter(Cap(usd="5"), store=f"sqlite:///{path}", name="x")
    await lim.record(usd="1")
    with sqlite3.connect(path) as conn:
        (state,) = conn.execute("SELECT state FROM rb_limiter").fetchone()
        doc = json.loads(state)
        for row in doc["c"].values():
            row[2] = "lots"  # the used amount, no longer a number
        conn.execute("UPDATE rb_limiter SET state = ?", (json.dumps(doc),))
    with pytest.raises(StoreUnavailable, match="unreadable"):
        await lim.snapshot()


# -- a wake-up that comes before the answer that queued its waiter ----------------


class AfterEachCall(SQLiteStore):
    """An SQLite store that runs ``after`` once, right after a store call
    that queued a waiter, before its answer reaches that waiter."""

    after: Any = None

    def execute(self, *args: Any, **kw: Any) -> ops.Answer:
        answer = super().execute(*args, **kw)
        if self.after is not None and any(
            isinstance(r, ops.Queued) for r in answer.results
        ):
            after, self.after = self.after, None
            after()
        return answer


@pytest.mark.parametrize("waiting_in", ["task", "thread"])
async def test_a_wake_up_before_the_queued_answer_is_read_is_not_lost(
    tmp_path: Path, waiting_in: str
) -> None:
    """Another caller moves the queue between the store queueing a waiter and
    the waiter reading that answer: the waiter is woken all the same (it slept
    until its foreseen time, which on a fake clock never came)."""
    import threading

    import anyio
    import anyio.to_thread

    store = AfterEachCall(tmp_path / "b.db")
    lim = Limiter(Rate(tokens=10, per=1), store=store, name="w", clock=FakeClock())
    holder = lim.sync.acquire(10)  # the bucket is empty: the next caller waits
    store.after = lambda: holder.commit(tokens=3)  # 7 come back: enough for 5
    with anyio.fail_after(10):
        if waiting_in == "task":
            async with lim.acquire(5):
                pass
        else:
            done = threading.Event()

            def sync_caller() -> None:
                with lim.sync.acquire(5):
                    done.set()

            t = threading.Thread(target=sync_caller, daemon=True)
            t.start()
            await anyio.to_thread.run_sync(t.join, 10)
            assert done.is_set(), "the woken thread never proceeded"
    assert store.after is None  # the commit did come in between
