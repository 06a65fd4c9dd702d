"""Snapshots: every limit's state, remaining(axis), waiting count; Limiter repr."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from decimal import Decimal

import anyio
import pytest

from conftest import Make
from helpers import settle
from ratebudget import Cap, Forecast, Lease, Limiter, LimitSnapshot, Rate, Snapshot
from ratebudget.testing import FakeClock

D = Decimal
UTC = timezone.utc


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


class TestRateSnapshot:
    async def test_rate_fields(self, make: Make) -> None:
        rate = Rate(tokens=60, per="minute", burst=30)
        limiter = make(rate, clock=FakeClock())
        await limiter.acquire(10)
        (s,) = (await limiter.snapshot()).limits
        assert s == LimitSnapshot(
            limit=rate,
            kind="rate",
            axis="tokens",
            limit_amount=60,
            used=10,
            reserved=0,
            remaining=20,
            tokens=20,
            period=None,
            resets_at=None,
        )
        assert s.limit is rate

    async def test_tokens_refill_with_time(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=60, per="minute"), clock=clock)
        await limiter.acquire(60)
        assert (await limiter.snapshot()).limits[0].tokens == 0
        clock.advance(30)
        s = (await limiter.snapshot()).limits[0]
        assert (s.tokens, s.used, s.remaining) == (30, 30, 30)
        clock.advance(3600)
        assert (await limiter.snapshot()).limits[0].tokens == 60  # never above burst

    async def test_debt_shows_as_negative_tokens_and_zero_remaining(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=60, per="minute"), clock=FakeClock())
        lease = await limiter.acquire(10)
        await lease.commit(tokens=100)
        s = (await limiter.snapshot()).limits[0]
        assert (s.tokens, s.remaining, s.used) == (-40, 0, 100)

    async def test_usd_rate_amounts_are_decimals(self, make: Make) -> None:
        limiter = make(Rate(usd=1, per="minute"), clock=FakeClock())
        await limiter.acquire(usd="0.25")
        s = (await limiter.snapshot()).limits[0]
        assert (s.tokens, s.used, s.limit_amount) == (D("0.75"), D("0.25"), D(1))
        assert isinstance(s.tokens, Decimal)


class TestCapSnapshot:
    async def test_cap_fields(self, make: Make) -> None:
        cap = Cap(usd=25, per="day", tz="Europe/Berlin")
        limiter = make(cap, clock=FakeClock(start=utc(2026, 7, 1, 12)))
        await limiter.record(usd="3.5")
        lease = await limiter.acquire(usd="1.25")
        (s,) = (await limiter.snapshot()).limits
        assert s == LimitSnapshot(
            limit=cap,
            kind="cap",
            axis="usd",
            limit_amount=D(25),
            used=D("3.5"),
            reserved=D("1.25"),
            remaining=D("20.25"),
            tokens=None,
            period="2026-07-01",
            resets_at=utc(2026, 7, 1, 22),
            forecast=Forecast(
                None,
                None,
                None,
                None,
                "no usage history: forecasts are made from a ledger "
                "(Limiter(ledger=...))",
            ),
        )
        await lease.release()

    async def test_remaining_never_goes_below_zero(self, make: Make) -> None:
        limiter = make(Cap(tokens=10), clock=FakeClock())
        lease = await limiter.acquire(5)
        await lease.commit(tokens=25)
        s = (await limiter.snapshot()).limits[0]
        assert (s.used, s.remaining) == (25, 0)

    async def test_snapshot_is_frozen_and_indexable(self, make: Make) -> None:
        limiter = make(Rate(tokens=10, per="second"), Cap(usd=1), clock=FakeClock())
        snap = await limiter.snapshot()
        assert len(snap) == 2
        assert snap[0].kind == "rate"
        assert snap[1].kind == "cap"
        assert snap.limits == (snap[0], snap[1])
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.waiting = 3  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap[0].used = 3  # type: ignore[misc]

    async def test_a_snapshot_does_not_change_afterwards(self, make: Make) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        snap = await limiter.snapshot()
        await limiter.record(usd="0.5")
        assert snap.limits[0].used == D(0)
        assert (await limiter.snapshot()).limits[0].used == D("0.5")

    async def test_limits_are_listed_in_the_order_given(self, make: Make) -> None:
        limits = (Cap(usd=1), Rate(tokens=5, per="second"), Cap(tokens=9, per="week"))
        limiter = make(*limits, clock=FakeClock())
        assert limiter.limits == limits
        assert tuple(s.limit for s in (await limiter.snapshot()).limits) == limits

    def test_sync_snapshot_matches_the_async_one(self, make: Make) -> None:
        limiter = make(Rate(tokens=10, per="second"), Cap(usd=1), clock=FakeClock())
        limiter.sync.record(4, usd="0.5")
        assert limiter.sync.snapshot() == anyio.run(limiter.snapshot)


class TestRemaining:
    async def test_remaining_is_the_tightest_hard_cap(self, make: Make) -> None:
        limiter = make(
            Cap(usd=100),
            Cap(usd=10, per="day"),
            Cap(usd=1, soft=True),
            clock=FakeClock(),
        )
        await limiter.record(usd=8)
        lease = await limiter.acquire(usd="0.5")
        snap = await limiter.snapshot()
        assert snap.remaining("usd") == D("1.5")
        await lease.release()
        assert (await limiter.snapshot()).remaining("usd") == D(2)

    async def test_remaining_follows_whichever_cap_is_tighter_now(
        self, make: Make
    ) -> None:
        clock = FakeClock(start=utc(2026, 1, 1, 12))
        limiter = make(Cap(usd=100), Cap(usd=10, per="day"), clock=clock)
        for _ in range(10):
            await limiter.record(usd=9)
            assert (await limiter.snapshot()).remaining("usd") == D(1)
            clock.advance(86400)
        # 90 used for life (10 left), nothing today (10 left)
        assert (await limiter.snapshot()).remaining("usd") == D(10)
        await limiter.record(usd=6)
        clock.advance(86400)
        # the day cap is back to 10; the lifetime cap has 4 left: it is tighter now
        assert (await limiter.snapshot()).remaining("usd") == D(4)

    async def test_soft_caps_count_only_when_no_hard_cap_exists(
        self, make: Make
    ) -> None:
        limiter = make(
            Cap(usd=1, soft=True),
            Cap(tokens=100, soft=True),
            Cap(tokens=500),
            clock=FakeClock(),
        )
        await limiter.record(50, usd="0.25")
        snap = await limiter.snapshot()
        assert snap.remaining("usd") == D("0.75")
        assert snap.remaining("tokens") == 450

    async def test_remaining_is_none_for_an_axis_without_a_cap(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=100, per="minute"), Cap(usd=1), clock=FakeClock())
        snap = await limiter.snapshot()
        assert snap.remaining("tokens") is None
        assert snap.remaining("requests") is None
        assert snap.remaining("images") is None
        assert snap.remaining("usd") == D(1)


class TestWaiting:
    async def test_waiting_counts_callers_queued_on_a_rate(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per="second"), clock=clock)
        await limiter.acquire(10)
        granted: list[Lease] = []

        async def take(n: int) -> None:
            granted.append(await limiter.acquire(n))

        assert (await limiter.snapshot()).waiting == 0
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for n in (5, 5, 10):  # one by one: trio starts a batch in random order
                    tg.start_soon(take, n)
                    await settle()
                assert (await limiter.snapshot()).waiting == 3
                await settle()  # the snapshot let store calls start
                clock.advance(1)
                await settle()
                assert len(granted) == 2
                assert (await limiter.snapshot()).waiting == 1
                await settle()
                clock.advance(1)
                await settle()
        assert (await limiter.snapshot()).waiting == 0
        assert [lease.amounts["tokens"] for lease in granted] == [5, 5, 10]

    async def test_a_cancelled_waiter_leaves_the_count(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per="second"), clock=clock)
        await limiter.acquire(10)

        async def take() -> None:
            await limiter.acquire(5)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(take)
                await settle()
                assert (await limiter.snapshot()).waiting == 1
                tg.cancel_scope.cancel()
        snap = await limiter.snapshot()
        assert snap.waiting == 0
        assert snap.limits[0].tokens == 0


class TestLimiterRepr:
    """Live usage in a repr is memory-only: ``repr`` does no I/O, so on a shared
    store it shows the name, the store and the limits instead."""

    async def test_repr_shows_usage_of_every_limit_and_the_queue(self) -> None:
        # memory-only: live usage needs a store call on a shared store
        limiter = Limiter(
            Rate(tokens=90_000, per="minute"),
            Cap(usd=25, per="day"),
            Cap(requests=1_000),
            clock=FakeClock(),
        )
        await (await limiter.acquire(3_200)).commit()
        await limiter.record(usd="1.5")
        assert repr(limiter) == (
            "<Limiter tokens 86,800/90,000 per 60s, usd 1.5/25 used per day, "
            "requests 1/1,000 used, 0 waiting>"
        )

    async def test_repr_counts_waiters(self) -> None:
        # memory-only: the live queue length needs a store call on a shared store
        clock = FakeClock()
        limiter = Limiter(Rate(tokens=10, per="second"), clock=clock)
        await limiter.acquire(10)

        async def take() -> None:
            await limiter.acquire(5)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(take)
                tg.start_soon(take)
                await settle()
                assert repr(limiter).endswith(", 2 waiting>")
                clock.advance(1)
        assert repr(limiter).endswith(", 0 waiting>")

    @pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
    async def test_repr_on_a_shared_store_names_it_without_io(self, make: Make) -> None:
        limiter = make(Rate(tokens=10, per="second"), Cap(usd=1), clock=FakeClock())
        await limiter.acquire(5)
        assert repr(limiter) == (
            f"<Limiter {limiter.name!r} on {limiter.store.url}: "
            f"{limiter.limits[0]!r}, {limiter.limits[1]!r}>"
        )

    def test_sync_facade_repr_wraps_the_limiters(self, make: Make) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        assert repr(limiter.sync) == f"<SyncLimiter of {limiter!r}>"

    def test_empty_limiter_repr(self) -> None:
        # memory-only: live usage (here, the queue) needs a store call elsewhere
        assert repr(Limiter(clock=FakeClock())) == "<Limiter 0 waiting>"


def test_snapshot_type_is_public(make: Make) -> None:
    limiter = make(Cap(usd=1), clock=FakeClock())
    assert isinstance(limiter.sync.snapshot(), Snapshot)
