"""Caps raise, wait only on reservations, reset by period (contracts 1 and 6).

Every test runs on the memory, SQLite and Redis stores (the ``make``
fixture), on asyncio and trio.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal

import anyio
import pytest

from conftest import Make
from helpers import settle
from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    Lease,
    Limiter,
    LimitSnapshot,
    Rate,
)
from ratebudget.testing import FakeClock

UTC = timezone.utc
D = Decimal
Amount = int | float | Decimal | str


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


async def state(limiter: Limiter, index: int) -> LimitSnapshot:
    return (await limiter.snapshot()).limits[index]


async def used_reserved(
    limiter: Limiter, index: int
) -> tuple[int | Decimal, int | Decimal]:
    s = await state(limiter, index)
    return s.used, s.reserved


class Waiting:
    """Runs ``limiter.acquire(...)`` in a task and records how it ended."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.error: BaseException | None = None
        self.done = False

    async def run(
        self,
        limiter: Limiter,
        tokens: int = 0,
        *,
        wait_at_most: float | None = None,
        **amounts: Amount,
    ) -> None:
        try:
            self.lease = await limiter.acquire(tokens, timeout=wait_at_most, **amounts)
        except (BudgetExceeded, AcquireTimeout) as exc:
            self.error = exc
        self.done = True


class TestHardCapRaises:
    async def test_exceeding_raises_at_once_with_the_details(self, make: Make) -> None:
        clock = FakeClock(start=utc(2026, 5, 17, 12))
        limiter = make(Cap(usd=10, per="day"), clock=clock)
        await limiter.record(usd=8)
        held = await limiter.acquire(usd="0.5")
        before = await limiter.snapshot()
        with anyio.fail_after(5), pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(usd=3)
        exc = info.value
        assert exc.axis == "usd"
        assert exc.limit == D(10)
        assert exc.used == D(8)
        assert exc.requested == D(3)
        assert exc.reserved == D("0.5")
        assert exc.resets_at == utc(2026, 5, 18)
        assert "usd" in str(exc)
        assert clock.seconds == 0
        assert await limiter.snapshot() == before
        await held.release()

    async def test_lifetime_cap_reports_no_reset_time(self, make: Make) -> None:
        limiter = make(Cap(tokens=100), clock=FakeClock())
        await limiter.record(tokens=100)
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(1)
        assert info.value.resets_at is None
        assert (info.value.used, info.value.limit, info.value.requested) == (
            100,
            100,
            1,
        )

    async def test_reaching_the_limit_exactly_is_allowed(self, make: Make) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        await limiter.record(usd="0.7")
        lease = await limiter.acquire(usd="0.3")
        await lease.commit()
        assert await used_reserved(limiter, 0) == (D(1), D(0))
        assert (await limiter.snapshot()).remaining("usd") == D(0)

    async def test_try_acquire_and_sync_acquire_raise_too(self, make: Make) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        await limiter.record(usd="0.9")
        with pytest.raises(BudgetExceeded):
            await limiter.try_acquire(usd="0.2")
        with pytest.raises(BudgetExceeded):
            limiter.sync.acquire(usd="0.2")
        with pytest.raises(BudgetExceeded):
            limiter.sync.try_acquire(usd="0.2")
        assert await used_reserved(limiter, 0) == (D("0.9"), D(0))

    async def test_an_exhausted_cap_does_not_refuse_requests_on_other_axes(
        self,
        make: Make,
    ) -> None:
        limiter = make(Cap(usd=1), Cap(tokens=100), clock=FakeClock())
        await limiter.record(usd=1)
        lease = await limiter.acquire(10)
        await lease.commit()
        assert await used_reserved(limiter, 1) == (10, 0)

    async def test_a_zero_cap_refuses_any_positive_amount_on_its_axis(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=0), clock=FakeClock())
        with pytest.raises(BudgetExceeded):
            await limiter.acquire(usd="0.000000001")
        with pytest.raises(BudgetExceeded):
            await limiter.record(usd="0.000000001")
        lease = await limiter.acquire(10, usd=0)
        await lease.commit()
        assert await used_reserved(limiter, 0) == (D(0), D(0))

    async def test_an_exceeded_timeout_does_not_hide_a_certain_overrun(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        await limiter.record(usd=1)
        with pytest.raises(BudgetExceeded):
            await limiter.acquire(usd="0.01", timeout=0)


class TestAtomicOverLimits:
    @pytest.mark.parametrize("cap_first", [True, False])
    async def test_a_refused_acquisition_leaves_every_limit_untouched(
        self, make: Make, cap_first: bool
    ) -> None:
        rates = [Rate(tokens=100, per="minute"), Rate(requests=10, per="minute")]
        caps = [Cap(tokens=1_000, per="day"), Cap(usd=1, per="day")]
        limits: list[Rate | Cap] = [*caps, *rates] if cap_first else [*rates, *caps]
        limiter = make(*limits, clock=FakeClock())
        await limiter.record(usd="0.9")
        before = await limiter.snapshot()
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(50, usd="0.2")
        assert info.value.axis == "usd"
        after = await limiter.snapshot()
        assert after == before
        for s in after.limits:
            if s.kind == "rate":
                assert s.tokens == s.limit_amount  # no token nor request was taken
            elif s.axis == "tokens":
                assert (s.used, s.reserved) == (0, 0)

    async def test_the_first_failing_cap_is_reported_and_nothing_is_taken(
        self, make: Make
    ) -> None:
        limiter = make(Cap(tokens=10), Cap(usd=1), Cap(requests=5), clock=FakeClock())
        await limiter.record(requests=5)
        before = await limiter.snapshot()
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(5, usd="0.5")
        assert info.value.axis == "requests"
        assert await limiter.snapshot() == before

    async def test_a_refused_record_leaves_every_limit_untouched(
        self, make: Make
    ) -> None:
        limiter = make(
            Rate(tokens=100, per="minute"),
            Cap(tokens=1_000),
            Cap(usd=1),
            clock=FakeClock(),
        )
        before = await limiter.snapshot()
        with pytest.raises(BudgetExceeded) as info:
            await limiter.record(tokens=10, usd=2)
        assert info.value.axis == "usd"
        assert info.value.requested == D(2)
        assert await limiter.snapshot() == before


class TestBlockedByReservations:
    async def test_waits_and_is_granted_when_the_holder_releases(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        holder = await limiter.acquire(usd=6)
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, usd=5))
                await settle()
                assert not waiting.done
                assert (await limiter.snapshot()).waiting == 1
                assert await used_reserved(limiter, 0) == (D(0), D(6))
                await holder.release()
                await settle()
                assert waiting.done
        assert waiting.error is None
        assert waiting.lease is not None
        assert await used_reserved(limiter, 0) == (D(0), D(5))
        assert (await limiter.snapshot()).waiting == 0

    async def test_is_granted_when_the_holder_commits_less(self, make: Make) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        holder = await limiter.acquire(usd=6)
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, usd=5))
                await settle()
                assert not waiting.done
                await holder.commit(usd=4)
                await settle()
                assert waiting.done
        assert waiting.lease is not None
        assert await used_reserved(limiter, 0) == (D(4), D(5))

    async def test_raises_as_soon_as_a_commit_makes_the_overrun_certain(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Cap(usd=10), clock=clock)
        holder = await limiter.acquire(usd=6)
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, usd=5, wait_at_most=30))
                await settle()
                assert not waiting.done
                await holder.commit(usd=6)
                await settle()
                assert waiting.done
        assert clock.seconds == 0  # not at its timeout
        assert isinstance(waiting.error, BudgetExceeded)
        assert (waiting.error.used, waiting.error.requested) == (D(6), D(5))
        assert await used_reserved(limiter, 0) == (D(6), D(0))
        assert (await limiter.snapshot()).waiting == 0

    @pytest.mark.parametrize("by", ["commit", "record"])
    async def test_a_waiter_behind_the_head_is_refused_as_soon_as_its_overrun_is_certain(
        self, make: Make, by: str
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per="second"), Cap(usd=10), clock=clock)
        await limiter.acquire(10)  # drain the rate: the head will wait on it
        holder = await limiter.acquire(usd=6)
        head, behind = Waiting(), Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: head.run(limiter, 5))
                await settle()
                tg.start_soon(lambda: behind.run(limiter, usd=5))
                await settle()
                assert (await limiter.snapshot()).waiting == 2
                if by == "commit":
                    await holder.commit(usd=6)
                else:
                    await holder.release()
                    await limiter.record(usd=6)
                await settle()
                assert behind.done
                assert not head.done
                assert clock.seconds == 0
                clock.advance(0.5)
        assert isinstance(behind.error, BudgetExceeded)
        assert head.lease is not None
        assert await used_reserved(limiter, 1) == (D(6), D(0))

    async def test_times_out_without_taking_anything(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=100, per="minute"), Cap(usd=10), clock=clock)
        holder = await limiter.acquire(10, usd=6)
        before = await limiter.snapshot()
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, 10, usd=5, wait_at_most=5))
                await settle()
                clock.advance(4.9)
                await settle()
                assert not waiting.done
                clock.advance(0.1)
                await settle()
                assert waiting.done
        assert isinstance(waiting.error, AcquireTimeout)
        after = await limiter.snapshot()
        assert after.limits[1] == before.limits[1]
        assert after.limits[0].tokens == 98  # 90 + 5 s of refill: nothing taken
        await holder.release()

    async def test_try_acquire_returns_none_instead_of_waiting(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        holder = await limiter.acquire(usd=6)
        before = await limiter.snapshot()
        assert await limiter.try_acquire(usd=5) is None
        assert limiter.sync.try_acquire(usd=5) is None
        assert await limiter.snapshot() == before
        await holder.release()
        lease = await limiter.try_acquire(usd=5)
        assert lease is not None

    async def test_a_zero_timeout_refuses_at_once(self, make: Make) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        holder = await limiter.acquire(usd=6)
        with pytest.raises(AcquireTimeout) as info:
            await limiter.acquire(usd=5, timeout=0)
        assert info.value.retry_after is None
        assert await used_reserved(limiter, 0) == (D(0), D(6))
        await holder.release()


class TestSoftCaps:
    async def test_a_soft_cap_never_blocks_or_raises(self, make: Make) -> None:
        limiter = make(Cap(usd=1, soft=True), clock=FakeClock())
        await limiter.record(usd=2)
        lease = await limiter.acquire(usd=5)
        other = await limiter.try_acquire(usd=5)
        assert other is not None
        await lease.commit(usd=3)
        s = await state(limiter, 0)
        assert (s.used, s.reserved, s.remaining) == (D(5), D(5), D(0))

    async def test_a_soft_cap_overrun_logs_no_hard_cap_warning(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        limiter = make(Cap(usd=1, soft=True), clock=FakeClock())
        lease = await limiter.acquire(usd="0.5")
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await lease.commit(usd=2)
        assert not [r for r in caplog.records if "over its limit" in r.getMessage()]

    async def test_a_hard_cap_still_governs_next_to_a_soft_one(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=1, soft=True), Cap(usd=3), clock=FakeClock())
        await limiter.record(usd=2)
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(usd="1.5")
        assert info.value.limit == D(3)
        assert (await limiter.snapshot()).remaining("usd") == D(1)


class TestCalendarReset:
    async def test_a_day_cap_resets_at_midnight_in_its_zone(self, make: Make) -> None:
        clock = FakeClock(start=utc(2026, 1, 1, 22, 30))  # 23:30 in Berlin
        limiter = make(
            Cap(usd=10, per="day", tz="Europe/Berlin"),
            Cap(usd=100, per="day"),
            clock=clock,
        )
        await limiter.record(usd=10)
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(usd=1)
        assert info.value.resets_at == utc(2026, 1, 1, 23)
        clock.advance(29 * 60 + 59)
        with pytest.raises(BudgetExceeded):
            await limiter.acquire(usd=1)
        clock.advance(1)  # midnight in Berlin
        lease = await limiter.acquire(usd=1)
        berlin, utc_day = (await limiter.snapshot()).limits
        assert (berlin.period, berlin.used, berlin.reserved) == (
            "2026-01-02",
            D(0),
            D(1),
        )
        assert (utc_day.period, utc_day.used) == ("2026-01-01", D(10))
        await lease.release()

    async def test_a_month_cap_rolls_over_from_december_to_january(
        self, make: Make
    ) -> None:
        clock = FakeClock(start=utc(2026, 12, 31, 23, 59))
        limiter = make(Cap(tokens=100, per="month"), clock=clock)
        await limiter.record(tokens=100)
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(1)
        assert info.value.resets_at == utc(2027, 1, 1)
        clock.advance(60)
        lease = await limiter.acquire(100)
        s = await state(limiter, 0)
        assert (s.period, s.used, s.reserved) == ("2027-01", 0, 100)
        assert s.resets_at == utc(2027, 2, 1)
        await lease.release()

    async def test_outstanding_reservations_stay_reserved_across_the_boundary(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock(start=utc(2026, 6, 1, 23))
        # the lease outlives the hour: a shared store would reclaim it after
        # lease_ttl (contract 8), which this test is not about
        limiter = make(Cap(usd=10, per="day"), clock=clock, lease_ttl=86_400)
        lease = await limiter.acquire(usd=4)
        await limiter.record(usd=5)
        assert await used_reserved(limiter, 0) == (D(5), D(4))
        clock.advance(3600)
        s = await state(limiter, 0)
        assert (s.period, s.used, s.reserved, s.remaining) == (
            "2026-06-02",
            D(0),
            D(4),
            D(6),
        )
        with pytest.raises(BudgetExceeded):
            await limiter.record(usd="10.01")
        # usage is charged to the period in which it is committed
        await lease.commit(usd=3)
        assert await used_reserved(limiter, 0) == (D(3), D(0))

    async def test_a_head_blocked_by_reservations_is_granted_when_the_period_rolls(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock(start=utc(2026, 1, 1, 12, 30))
        # the holder outlives half an hour: a shared store would reclaim it
        # after lease_ttl (contract 8), which this test is not about
        limiter = make(Cap(usd=10, per="hour"), clock=clock, lease_ttl=86_400)
        await limiter.record(usd=5)
        holder = await limiter.acquire(usd=4)
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, usd=3))
                await settle()
                assert not waiting.done
                clock.advance(1799)
                await settle()
                assert not waiting.done
                clock.advance(1)  # 13:00: the hour rolls over
                await settle()
                assert waiting.done
        assert waiting.lease is not None
        s = await state(limiter, 0)
        assert (s.period, s.used, s.reserved) == ("2026-01-01T13:00+00:00", D(0), D(7))
        await holder.release()

    async def test_a_lifetime_cap_never_resets(self, make: Make) -> None:
        clock = FakeClock(start=utc(2026, 1, 1))
        limiter = make(Cap(usd=10), clock=clock)
        await limiter.record(usd=10)
        clock.advance(400 * 86400)
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(usd="0.01")
        assert info.value.resets_at is None
        assert await used_reserved(limiter, 0) == (D(10), D(0))


class TestReset:
    async def test_reset_zeroes_every_cap_and_fills_every_rate(
        self, make: Make
    ) -> None:
        limiter = make(
            Rate(tokens=100, per="minute"),
            Cap(usd=10, per="day"),
            Cap(tokens=50),
            clock=FakeClock(),
        )
        await limiter.record(40, usd=10)
        await limiter.reset()
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 100  # and the rate is full again
        assert (snap.limits[1].used, snap.limits[2].used) == (D(0), 0)
        lease = await limiter.acquire(50, usd=10)
        await lease.commit()

    async def test_a_release_after_reset_frees_exactly_what_the_lease_held(
        self,
        make: Make,
    ) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        await limiter.record(usd=3)
        lease = await limiter.acquire(usd=5)
        await limiter.reset()
        assert await used_reserved(limiter, 0) == (D(0), D(5))
        await lease.release()
        s = await state(limiter, 0)
        assert (s.used, s.reserved, s.remaining) == (D(0), D(0), D(10))

    async def test_a_commit_after_reset_charges_exactly_its_usage(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        await limiter.record(usd=3)
        lease = await limiter.acquire(usd=5)
        other = await limiter.acquire(usd=1)
        await limiter.reset()
        await lease.commit(usd=2)
        assert await used_reserved(limiter, 0) == (D(2), D(1))
        await other.release()
        await other.release()
        assert await used_reserved(limiter, 0) == (D(2), D(0))

    async def test_reset_grants_a_head_blocked_by_reservations(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        await limiter.record(usd=5)
        holder = await limiter.acquire(usd=4)
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, usd=3))
                await settle()
                assert not waiting.done
                await limiter.reset()
                await settle()
                assert waiting.done
        assert waiting.lease is not None
        assert await used_reserved(limiter, 0) == (D(0), D(7))
        await holder.release()

    def test_sync_reset_zeroes_usage(self, make: Make) -> None:
        limiter = make(Cap(usd=10), clock=FakeClock())
        limiter.sync.record(usd=10)
        limiter.sync.reset()
        assert limiter.sync.snapshot().limits[0].used == D(0)


class TestRecord:
    async def test_record_that_would_cross_a_hard_cap_records_nothing(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=10), Cap(tokens=100), clock=FakeClock())
        await limiter.record(5, usd=9)
        with pytest.raises(BudgetExceeded):
            await limiter.record(5, usd="1.01")
        with pytest.raises(BudgetExceeded):
            limiter.sync.record(5, usd="1.01")
        assert await used_reserved(limiter, 0) == (D(9), D(0))
        assert await used_reserved(limiter, 1) == (5, 0)
        await limiter.record(5, usd=1)
        assert await used_reserved(limiter, 0) == (D(10), D(0))

    async def test_record_may_cross_a_soft_cap(self, make: Make) -> None:
        limiter = make(Cap(usd=1, soft=True), clock=FakeClock())
        await limiter.record(usd=3)
        assert await used_reserved(limiter, 0) == (D(3), D(0))

    async def test_record_does_not_spend_budget_promised_to_outstanding_leases(
        self,
        make: Make,
    ) -> None:
        # A granted lease holds 8 of 10. Recording 5 more after the fact and
        # then committing the lease *at its estimate* must not leave the hard
        # cap overrun: only a commit above its estimate may do that.
        limiter = make(Cap(usd=10), clock=FakeClock())
        lease = await limiter.acquire(usd=8)
        try:
            await limiter.record(usd=5)
        except BudgetExceeded:
            pass
        await lease.commit()
        used, reserved = await used_reserved(limiter, 0)
        assert reserved == D(0)
        assert used <= D(10)


class TestCommitAboveEstimate:
    async def test_overuse_is_recorded_past_the_limit_and_logged(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        limiter = make(Cap(usd=1, per="day"), clock=FakeClock())
        lease = await limiter.acquire(usd="0.5")
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await lease.commit(usd="1.5")
        s = await state(limiter, 0)
        assert (s.used, s.reserved, s.remaining) == (D("1.5"), D(0), D(0))
        warnings = [
            r
            for r in caplog.records
            if r.name == "ratebudget" and r.levelno == logging.WARNING
        ]
        assert any(
            "over its limit" in r.getMessage() and "1.5" in r.getMessage()
            for r in warnings
        )
        with pytest.raises(BudgetExceeded) as info:
            await limiter.acquire(usd="0.01")
        assert info.value.used == D("1.5")

    async def test_a_commit_within_the_limit_logs_no_overrun(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        lease = await limiter.acquire(usd="0.5")
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await lease.commit(usd="0.9")
        assert not [r for r in caplog.records if "over its limit" in r.getMessage()]

    async def test_an_over_commit_fails_the_waiters_it_starves(
        self, make: Make
    ) -> None:
        limiter = make(Cap(tokens=100), clock=FakeClock())
        holder = await limiter.acquire(60)
        waiting = Waiting()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: waiting.run(limiter, 50))
                await settle()
                await holder.commit(tokens=120)
                await settle()
        assert isinstance(waiting.error, BudgetExceeded)
        assert await used_reserved(limiter, 0) == (120, 0)
