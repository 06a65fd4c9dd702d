"""The contract (docs/design.md, section 2), once per store and backend.

Every test here runs against the memory, SQLite and Redis stores (a single
server, and a 3-shard Redis Cluster), each on
asyncio and on trio, on a ``FakeClock``: the persistent stores take their
time from it too (``now_us``), so waits and lease expiries are exact.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from helpers import NS, run_out, run_until, settle
from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
)
from ratebudget.stores import MemoryStore
from ratebudget.testing import FakeClock, store_busy

_names = itertools.count()

Make = Callable[..., Limiter]


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_795_000_000.0)


@pytest.fixture
def make(
    store_kind: str, tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest
) -> Make:
    """Build limiters on the store under test; same ``name``: shared state."""
    memory = MemoryStore()
    suffix = next(_names)

    def build(*limits: Rate | Cap, name: str = "test", **kw: object) -> Limiter:
        kw.setdefault("clock", clock)
        if store_kind == "memory":
            return Limiter(*limits, store=memory, name=name, **kw)  # type: ignore[arg-type]
        if store_kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'budgets.db'}"
        elif store_kind == "redis":
            url = request.getfixturevalue("redis_url")
        else:
            url = request.getfixturevalue("redis_cluster_url")
        return Limiter(*limits, store=url, name=f"{name}-{suffix}", **kw)  # type: ignore[arg-type]

    return build


async def calm(*limiters: Limiter) -> None:
    """Every task blocked and no store call in flight."""
    for _ in range(10_000):
        await settle()
        if not store_busy(*limiters):
            await settle()
            return
        await anyio.sleep(0.001)
    raise AssertionError("store calls never finished")


async def level(limiter: Limiter, i: int = 0) -> int | Decimal:
    snap = await limiter.snapshot()
    got = snap[i].tokens if snap[i].kind == "rate" else snap[i].used
    assert got is not None
    return got


# -- 1. atomic over limits -----------------------------------------------------


async def test_a_refused_acquisition_takes_nothing_anywhere(make: Make) -> None:
    lim = make(Rate(tokens=100, per="minute"), Cap(usd="1"))
    await lim.record(usd="0.9")
    with pytest.raises(BudgetExceeded) as e:
        await lim.acquire(40, usd="0.2")
    assert e.value.axis == "usd"
    assert e.value.used == Decimal("0.9")
    snap = await lim.snapshot()
    assert snap[0].tokens == 100
    assert snap[1].reserved == 0


# -- 2 and 3. rates: never over, waiting in FIFO order ---------------------------


async def test_waits_follow_the_rate_exactly(make: Make, clock: FakeClock) -> None:
    lim = make(Rate(tokens=10, per="second"))
    granted: list[int] = []

    async def one(n: int) -> None:
        async with lim.acquire(n):
            granted.append(clock.monotonic_ns())

    async with anyio.create_task_group() as tg:
        for n in (10, 5, 5, 10):
            tg.start_soon(one, n)
            await calm(lim)
        await run_until(clock, 3 * NS)
        await calm(lim)
    assert granted == [0, NS // 2, NS, 2 * NS]


async def test_later_callers_never_overtake(make: Make, clock: FakeClock) -> None:
    lim = make(Rate(tokens=10, per="second"))
    order: list[str] = []

    async def one(name: str, n: int) -> None:
        await lim.acquire(n)
        order.append(name)

    await lim.acquire(10)  # empty the bucket
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "big", 10)
        await calm(lim)
        for k in range(5):
            tg.start_soon(one, f"small{k}", 1)
            await calm(lim)
        while len(order) < 6:
            await run_out(clock)
            await calm(lim)
    assert order == ["big", *(f"small{k}" for k in range(5))]


async def test_several_rates_never_burst_past_either(
    make: Make, clock: FakeClock
) -> None:
    # requests are free, tokens are not: a grant waiting on tokens must not
    # let the request bucket refill behind its back
    lim = make(Rate(tokens=10, per="second"), Rate(requests=2, per="second"))
    await lim.acquire(10)
    granted: list[int] = []

    async def one() -> None:
        await lim.acquire(5)
        granted.append(clock.monotonic_ns())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(one)
            await calm(lim)
        await run_until(clock, 5 * NS)
        await calm(lim)
    assert granted == [NS // 2, NS, 3 * NS // 2, 2 * NS]


# -- 4. timeouts fail fast ---------------------------------------------------------


async def test_a_foreseeable_wait_past_the_timeout_fails_at_once(
    make: Make, clock: FakeClock
) -> None:
    lim = make(Rate(tokens=10, per="second"))
    await lim.acquire(10)
    with pytest.raises(AcquireTimeout) as e:
        await lim.acquire(5, timeout=0.25)
    assert e.value.retry_after == pytest.approx(0.5)
    assert clock.monotonic_ns() == 0
    assert await lim.try_acquire(1) is None
    await run_until(clock, NS // 2)
    assert await level(lim) == 5  # the refused calls took nothing


async def test_a_wait_within_the_timeout_is_served(
    make: Make, clock: FakeClock
) -> None:
    lim = make(Rate(tokens=10, per="second"))
    await lim.acquire(10)
    done: list[int] = []

    async def one() -> None:
        await lim.acquire(5, timeout=0.5)
        done.append(clock.monotonic_ns())

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await calm(lim)
        await run_until(clock, NS)
        await calm(lim)
    assert done == [NS // 2]


# -- 5. cancellation is free ---------------------------------------------------------


async def test_a_cancelled_waiter_gives_everything_back(
    make: Make, clock: FakeClock
) -> None:
    lim = make(Rate(tokens=10, per="second"), Cap(tokens=1_000))
    _held = await lim.acquire(10)  # held to the end
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: lim.acquire(8)._acquire())
        await calm(lim)
        tg.cancel_scope.cancel()
    await calm(lim)
    await run_until(clock, NS // 2)
    snap = await lim.snapshot()
    assert snap[0].tokens == 5  # refilled from zero as if the waiter never came
    assert snap[1].reserved == 10  # the first lease's 10 only


async def test_nobody_overtakes_a_waiter_after_a_cancellation(
    make: Make, clock: FakeClock
) -> None:
    lim = make(Rate(tokens=10, per="second"))
    await lim.acquire(10)
    at: dict[str, int] = {}

    async def one(name: str, n: int) -> None:
        await lim.acquire(n)
        at[name] = clock.monotonic_ns()

    big = anyio.CancelScope()

    async def cancellable() -> None:
        with big:
            await one("big", 8)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancellable)
        await calm(lim)
        tg.start_soon(one, "b", 1)
        await calm(lim)
        big.cancel()
        await calm(lim)
        tg.start_soon(one, "c", 1)
        await calm(lim)
        while len(at) < 2:
            await run_out(clock)
            await calm(lim)
    assert "big" not in at
    assert at["b"] <= at["c"]


async def test_a_cancelled_caller_releases_its_cap_reservation(make: Make) -> None:
    lim = make(Cap(usd="1"))
    with anyio.CancelScope() as scope:
        async with lim.acquire(usd="0.6"):
            scope.cancel()
            await anyio.sleep_forever()
    snap = await lim.snapshot()
    assert snap[0].reserved == 0
    assert snap[0].used == 0


# -- 6. caps raise; reservations block ----------------------------------------------


async def test_caps_raise_when_an_overrun_is_certain(make: Make) -> None:
    lim = make(Cap(tokens=100, per="day"))
    await lim.record(tokens=90)
    with pytest.raises(BudgetExceeded) as e:
        await lim.acquire(20)
    assert (e.value.used, e.value.limit, e.value.requested) == (90, 100, 20)
    assert e.value.resets_at is not None
    async with lim.acquire(10):
        pass
    assert await level(lim) == 100


async def test_reservations_block_until_released(make: Make) -> None:
    lim = make(Cap(tokens=100))
    first = await lim.acquire(80)
    got: list[str] = []

    async def second() -> None:
        async with lim.acquire(50, timeout=5) as lease:
            got.append(lease.id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await calm(lim)
        assert got == []
        await first.release()
    assert len(got) == 1


async def test_a_blocked_caller_fails_once_the_overrun_is_certain(make: Make) -> None:
    lim = make(Cap(tokens=100))
    first = await lim.acquire(80)
    errors: list[BaseException] = []

    async def second() -> None:
        try:
            await lim.acquire(50, timeout=5)
        except BudgetExceeded as e:
            errors.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await calm(lim)
        await first.commit(tokens=80)
    assert len(errors) == 1


async def test_a_blocked_caller_times_out(make: Make, clock: FakeClock) -> None:
    lim = make(Cap(tokens=100))
    _held = await lim.acquire(80)  # held to the end
    with pytest.raises(AcquireTimeout):
        await lim.acquire(50, timeout=0)


# -- 7. reserve, then commit -----------------------------------------------------------


async def test_commit_replaces_the_estimate(make: Make, clock: FakeClock) -> None:
    lim = make(Rate(tokens=100, per="second"), Cap(usd="1", per="month"))
    async with lim.acquire(60, usd="0.5") as lease:
        await lease.commit(tokens=20, usd="0.123456789")
    snap = await lim.snapshot()
    assert snap[0].tokens == 80  # unused estimate went back
    assert snap[1].used == Decimal("0.123456789")
    assert snap[1].reserved == 0


async def test_leaving_the_block_commits_the_estimate_or_releases(make: Make) -> None:
    lim = make(Cap(usd="1"))
    async with lim.acquire(usd="0.25"):
        pass
    with pytest.raises(RuntimeError):
        async with lim.acquire(usd="0.5"):
            raise RuntimeError("the call failed")
    snap = await lim.snapshot()
    assert (snap[0].used, snap[0].reserved) == (Decimal("0.25"), 0)


async def test_overuse_is_debt_and_past_the_cap(
    make: Make, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    lim = make(Rate(tokens=10, per="second"), Cap(tokens=15))
    async with lim.acquire(5) as lease:
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await lease.commit(tokens=20)
    snap = await lim.snapshot()
    assert snap[0].tokens == -10
    assert snap[1].used == 20
    assert "over its limit" in caplog.text


async def test_settling_twice_is_refused(make: Make) -> None:
    lim = make(Cap(tokens=10))
    lease = await lim.acquire(5)
    await lease.commit(tokens=3)
    with pytest.raises(InvalidRequest):
        await lease.commit(tokens=3)
    await lease.release()  # idempotent
    assert await level(lim) == 3


# -- 9 and 11. bad input; exact money -----------------------------------------------------


async def test_bad_input_is_rejected_before_the_store(make: Make) -> None:
    lim = make(Rate(tokens=10, per="second"), Cap(usd="1"))
    with pytest.raises(InvalidRequest):
        lim.acquire(-1)
    with pytest.raises(InvalidRequest):
        lim.acquire(11)
    with pytest.raises(InvalidRequest):
        lim.acquire(usd="x")
    with pytest.raises(InvalidRequest):
        await lim.record(gpu=1)
    assert await level(lim) == 10


async def test_money_adds_up_exactly(make: Make) -> None:
    lim = make(Cap(usd="1", per="month"))
    for _ in range(200):
        await lim.record(usd=0.000001)
    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(lambda: lim.record(usd=0.000001))
    snap = await lim.snapshot()
    assert snap[0].used == Decimal("0.0003")


# -- sharing, alerts, snapshots and resets ---------------------------------------------------


async def test_limiters_of_one_name_share_their_state(make: Make) -> None:
    a = make(Cap(tokens=100), name="shared")
    b = make(Cap(tokens=100), name="shared")
    await a.record(tokens=60)
    with pytest.raises(BudgetExceeded):
        await b.acquire(50)
    other = make(Cap(tokens=100), name="other")
    async with other.acquire(50):
        pass


async def test_alerts_fire_once_per_threshold(make: Make) -> None:
    seen: list[float] = []
    lim = make(
        Cap(usd="1", alert_at=(0.5, 0.9)), on_alert=lambda a: seen.append(a.threshold)
    )
    await lim.record(usd="0.4")
    await lim.record(usd="0.2")
    async with lim.acquire(usd="0.25"):
        pass
    await lim.flush_alerts()
    assert seen == [0.5]
    await lim.record(usd="0.05")
    await lim.record(usd="0.05")
    await lim.flush_alerts()
    assert seen == [0.5, 0.9]


async def test_reset_zeroes_the_period(make: Make) -> None:
    lim = make(Cap(tokens=10, per="day"))
    await lim.record(tokens=10)
    await lim.reset()
    async with lim.acquire(10):
        pass


async def test_a_new_period_starts_from_zero(make: Make, clock: FakeClock) -> None:
    lim = make(Cap(tokens=10, per="hour"))
    await lim.record(tokens=10)
    with pytest.raises(BudgetExceeded):
        await lim.acquire(1)
    clock.advance(3600)
    async with lim.acquire(10):
        pass


def test_the_blocking_facade(make: Make) -> None:
    lim = make(Rate(tokens=10, per="second"), Cap(tokens=100))
    with lim.sync.acquire(4) as lease:
        lease.commit(tokens=3)
    assert lim.sync.try_acquire(8) is None
    lim.sync.record(tokens=5)
    snap = lim.sync.snapshot()
    assert snap[1].used == 8
    lim.sync.reset()
    assert lim.sync.snapshot()[1].used == 0


# -- 8. no orphans ------------------------------------------------------------------------


async def test_an_abandoned_lease_is_reclaimed_after_its_ttl(
    make: Make, store_kind: str, clock: FakeClock
) -> None:
    if store_kind == "memory":
        pytest.skip("a memory lease dies with its process")
    lim = make(Cap(tokens=100), lease_ttl=60)
    _held = await lim.acquire(80)  # never settled (nor dropped: it would be released)
    clock.advance(59)
    with pytest.raises(AcquireTimeout):
        await lim.acquire(50, timeout=0)
    clock.advance(1)
    async with lim.acquire(50):
        pass


async def test_extend_keeps_a_long_lease(
    make: Make, store_kind: str, clock: FakeClock
) -> None:
    if store_kind == "memory":
        pytest.skip("memory leases do not expire")
    lim = make(Cap(tokens=100), lease_ttl=60)
    lease = await lim.acquire(80)
    clock.advance(50)
    await lease.extend()
    clock.advance(50)
    assert (await lim.snapshot())[0].reserved == 80
    clock.advance(11)
    assert (await lim.snapshot())[0].reserved == 0
    await lease.commit(tokens=70)  # a late commit still counts
    assert (await lim.snapshot())[0].used == 70
