"""Rates make callers wait (contract 3), refill at limit/per up to the burst,
charge overuse as debt and refund unused estimate (contract 7).

Every timing here runs on a ``FakeClock``: tasks wait in a task group, the
test moves fake time and checks exactly when each was granted. Every test
runs on the memory, SQLite and Redis stores (the ``make`` fixture), on
asyncio and trio; the shared stores keep time in whole microseconds.
"""

from __future__ import annotations

from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest

from conftest import Make
from helpers import NS, Grants, advance_to_ns, settle
from ratebudget import Cap, InvalidRequest, Limiter, Rate
from ratebudget.testing import FakeClock


async def advance(clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    await settle()


async def tokens_now(limiter: Limiter, index: int = 0) -> int | Decimal | None:
    return (await limiter.snapshot()).limits[index].tokens


def wait_ns(missing_tokens: int, limit: int, per_ns: int, tick_ns: int = 1) -> int:
    """The model: nanoseconds for a bucket to refill ``missing_tokens``,
    rounded up to the store's time resolution ``tick_ns``."""
    if missing_tokens <= 0:
        return 0
    return -(-missing_tokens * per_ns // (limit * tick_ns)) * tick_ns


@pytest.fixture
def tick_ns(store_kind: str) -> int:
    """The store's time resolution: memory counts nanoseconds, the shared
    stores whole microseconds (the same model of a wait, rounded up to it)."""
    return 1 if store_kind == "memory" else 1_000


class TestWaitingInsteadOfRaising:
    async def test_uncontended_acquire_is_granted_without_time_passing(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        lease = await limiter.acquire(10)
        assert lease.amounts == {"tokens": 10, "requests": 1}
        assert clock.monotonic_ns() == 0
        assert await tokens_now(limiter) == 0

    async def test_acquire_beyond_the_tokens_left_waits_until_they_refill(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 5))
            await settle()
            assert grants.at == {}
            assert (await limiter.snapshot()).waiting == 1
            advance_to_ns(clock, NS // 2 - 1)
            await settle()
            assert grants.at == {}
            advance_to_ns(clock, NS // 2)
            await settle()
            assert grants.at == {"w": NS // 2}
        assert await tokens_now(limiter) == 0

    @pytest.mark.parametrize(
        ("limit", "per", "left", "need"),
        [
            (10, 1, 0, 1),
            (60, 60, 3, 10),
            (7, 3, 2, 7),
            (1000, 0.5, 999, 1000),
            (3, 1, 0, 2),
        ],
    )
    async def test_the_wait_is_exactly_the_time_to_refill_what_is_missing(
        self, make: Make, tick_ns: int, limit: int, per: float, left: int, need: int
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=limit, per=per), clock=clock)
        await limiter.record(tokens=limit - left)
        grants = Grants(limiter, clock)
        # exact on memory; rounded up to whole µs on the shared stores
        expected = wait_ns(need - left, limit, round(per * NS), tick_ns)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", need))
            await settle()
            while "w" not in grants.at and (d := clock.next_deadline()) is not None:
                advance_to_ns(clock, clock.monotonic_ns() + round(d * NS))
                await settle()
        assert grants.at["w"] == expected

    async def test_a_request_above_the_burst_is_rejected_at_the_call(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1, burst=5), clock=clock)
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="never be served"):
            limiter.acquire(6)
        assert await limiter.snapshot() == before


class TestRefill:
    @pytest.mark.parametrize(("burst", "expected"), [(None, 10), (4, 4), (25, 25)])
    async def test_a_new_bucket_holds_its_burst(
        self, make: Make, burst: int | None, expected: int
    ) -> None:
        limiter = make(Rate(tokens=10, per=1, burst=burst), clock=FakeClock())
        assert await tokens_now(limiter) == expected

    async def test_tokens_refill_at_limit_per_period(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=60, per="minute"), clock=clock)
        await limiter.acquire(60)
        clock.advance(10)
        assert await tokens_now(limiter) == 10
        clock.advance(0.999)
        assert await tokens_now(limiter) == 10
        clock.advance(0.001)
        assert await tokens_now(limiter) == 11
        clock.advance(49)
        assert await tokens_now(limiter) == 60

    async def test_refill_stops_at_the_burst(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1, burst=4), clock=clock)
        await limiter.acquire(4)
        clock.advance(1000)
        assert await tokens_now(limiter) == 4
        assert await limiter.try_acquire(4) is not None
        assert await limiter.try_acquire(1) is None

    async def test_a_burst_above_the_limit_is_available_at_once(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1, burst=30), clock=clock)
        for _ in range(3):
            assert await limiter.try_acquire(10) is not None
        assert await limiter.try_acquire(1) is None
        assert clock.monotonic_ns() == 0

    async def test_a_small_burst_smooths_a_per_minute_limit(self, make: Make) -> None:
        """Rate(requests=60, per="minute", burst=1): one request per second."""
        clock = FakeClock()
        limiter = make(Rate(requests=60, per="minute", burst=1), clock=clock)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            for name in "abcd":
                tg.start_soon(grants.acquirer(name))
                await settle()
            for _ in range(3):
                await advance(clock, 1)
        assert grants.at == {"a": 0, "b": NS, "c": 2 * NS, "d": 3 * NS}


class TestDebt:
    async def test_commit_above_the_estimate_puts_the_rate_into_debt(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        lease = await limiter.acquire(10)
        await lease.commit(tokens=15)
        assert await tokens_now(limiter) == -5
        snap = (await limiter.snapshot()).limits[0]
        assert snap.remaining == 0
        assert snap.used == 15

    async def test_later_callers_wait_off_the_debt(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        lease = await limiter.acquire(10)
        await lease.commit(tokens=15)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("next", 1))
            await settle()
            await advance(clock, 0.5)  # 5 tokens of debt paid off, none to spare
            assert grants.at == {}
            await advance(clock, 0.1)
        assert grants.at == {"next": 600_000_000}

    async def test_overuse_committed_while_a_caller_waits_delays_it(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        first = await limiter.acquire(6)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 8))  # needs 4 more: at 0.4 s
            await settle()
            await first.commit(tokens=9)  # 3 more used: now at 0.7 s
            await advance(clock, 0.4)
            assert grants.at == {}
            await advance(clock, 0.3)
        assert grants.at == {"w": 700_000_000}

    async def test_record_charges_the_rate_at_once_without_waiting(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(8)
        await limiter.record(tokens=10)  # 2 left, 10 charged: 8 of debt
        assert clock.monotonic_ns() == 0
        assert clock.sleepers == 0
        assert await tokens_now(limiter) == -8

    async def test_recorded_debt_is_waited_off_by_the_next_caller(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.record(tokens=13)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 2))
            await settle()
            await advance(clock, 0.4)
            assert grants.at == {}
            await advance(clock, 0.1)
        assert grants.at == {"w": NS // 2}

    async def test_record_counts_no_request(self, make: Make) -> None:
        limiter = make(
            Rate(requests=5, per=1), Rate(tokens=100, per=1), clock=FakeClock()
        )
        await limiter.record(tokens=30)
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 5
        assert snap.limits[1].tokens == 70


class TestDebtIsBounded:
    """A provider forgets usage after its window: so does a rate."""

    async def test_debt_is_at_most_one_period_of_the_rate(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1, burst=5), clock=clock)
        await limiter.record(tokens=10**12)
        assert await tokens_now(limiter) == -10  # 10 per second: one second
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 2))
            await settle()
            await advance(clock, 1.1)
            assert grants.at == {}
            await advance(clock, 0.1)
        assert grants.at == {"w": 12 * NS // 10}  # 12 tokens at 10/s

    async def test_usage_above_an_estimate_is_bounded_too(self, make: Make) -> None:
        limiter = make(Rate(tokens=100, per=60), clock=FakeClock())
        lease = await limiter.acquire(10)
        await lease.commit(tokens=10**9)
        assert await tokens_now(limiter) == -100

    async def test_reset_fills_every_rate(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(
            Rate(tokens=10, per=1),
            Rate(requests=2, per=60),
            Cap(tokens=10**6),
            clock=clock,
        )
        async with limiter.acquire(1):
            pass
        await limiter.record(tokens=25)
        await limiter.reset()
        snap = await limiter.snapshot()
        assert [snap.limits[0].tokens, snap.limits[1].tokens, snap.limits[2].used] == [
            10,
            2,
            0,
        ]
        assert await limiter.try_acquire(10) is not None

    async def test_reset_serves_a_waiter_at_once(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.record(tokens=10)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 5))
            await settle()
            await advance(clock, 0.1)
            await limiter.reset()
            await settle()
        assert grants.at == {"w": NS // 10}

    async def test_a_lease_from_before_a_reset_gives_nothing_back(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), clock=FakeClock())
        lease = await limiter.acquire(8)
        await limiter.reset()  # full again: the 8 are not owed back
        await limiter.record(tokens=5)
        await lease.commit(tokens=0)
        assert await tokens_now(limiter) == 5

    def test_the_sync_reset_fills_rates_too(self, make: Make) -> None:
        limiter = make(Rate(tokens=10, per=1), clock=FakeClock())
        limiter.sync.record(tokens=30)
        limiter.sync.reset()
        assert limiter.sync.try_acquire(10) is not None


class TestRefunds:
    async def test_commit_below_the_estimate_gives_the_unused_tokens_back(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        lease = await limiter.acquire(10)
        await lease.commit(tokens=4)
        assert await tokens_now(limiter) == 6
        assert await limiter.try_acquire(6) is not None

    async def test_a_refund_serves_a_waiting_head_at_once(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        big = await limiter.acquire(10)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 5))  # would wait until 0.5 s
            await settle()
            await advance(clock, 0.1)
            assert grants.at == {}
            await big.commit(tokens=2)  # 8 back: 9 available
            await settle()
            assert grants.at == {"w": NS // 10}
        assert clock.monotonic_ns() == NS // 10

    async def test_a_refund_never_fills_past_the_burst(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        lease = await limiter.acquire(4)
        clock.advance(0.2)
        await lease.commit(tokens=0)
        assert await tokens_now(limiter) == 10

    async def test_axes_not_given_to_commit_keep_their_estimate(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(requests=10, per=1), Rate(tokens=100, per=1), clock=clock)
        lease = await limiter.acquire(50)
        await lease.commit(tokens=20)
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 9  # the request stays spent
        assert snap.limits[1].tokens == 80

    async def test_a_refund_after_a_long_hold_does_not_let_an_instant_exceed_the_burst(
        self,
        make: Make,
    ) -> None:
        """Contract 2 over a zero-length window.

        A takes the whole burst at 0 s and holds it while the bucket refills
        to its burst. At 10 s B takes the full burst; then A commits 0 tokens.
        A's refund must not add tokens the bucket had already regained: had A
        used 0 tokens from the start, the bucket would have sat at its burst
        and B would have emptied it. So C, asking for the burst at the same
        instant, must wait; granting it puts 20 tokens in a window of length
        0 on a burst of 10, which a provider with the same limits refuses.
        """
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)  # 1 token/s
        a = await limiter.acquire(10)
        clock.advance(10)
        b = await limiter.try_acquire(10)
        assert b is not None
        await a.commit(tokens=0)
        c = await limiter.try_acquire(10)
        assert c is None, "20 tokens granted at one instant on a burst of 10"

    async def test_a_refund_is_cut_by_a_later_take_from_a_partly_refilled_bucket(
        self,
        make: Make,
    ) -> None:
        """A takes the burst (10) at 0 s; by 8 s the bucket holds 8, which B
        takes. Had A used nothing, the bucket would have held 10 at 8 s (2
        tokens lost to the clamp), 2 after B: so A's refund brings back 2,
        not 10, and not the 10 - 0 the current level alone would allow.
        """
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)  # 1 token/s
        a = await limiter.acquire(10)
        clock.advance(8)
        b = await limiter.try_acquire(8)
        assert b is not None
        await a.commit(tokens=0)
        assert await tokens_now(limiter) == 2
        assert await limiter.try_acquire(3) is None
        assert await limiter.try_acquire(2) is not None

    async def test_a_refund_soon_after_the_grant_comes_back_whole(
        self, make: Make
    ) -> None:
        """No clamp in between: the refund is exact, whatever came after."""
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)
        a = await limiter.acquire(6)  # 4 left
        clock.advance(1)  # 5
        b = await limiter.acquire(3)  # 2
        await a.commit(tokens=1)  # 5 back: 7
        assert await tokens_now(limiter) == 7
        await b.commit(tokens=3)
        assert await tokens_now(limiter) == 7


class TestRateTokensStaySpent:
    async def test_release_gives_back_caps_but_not_rate_tokens(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=FakeClock())
        lease = await limiter.acquire(6, usd="0.25")
        await lease.release()
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 4
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == 0
        assert lease.settled

    async def test_leaving_the_block_by_an_exception_keeps_rate_tokens_spent(
        self,
        make: Make,
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=FakeClock())
        with pytest.raises(LookupError):
            async with limiter.acquire(6, usd="0.25"):
                raise LookupError("the provider failed")
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 4
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == 0

    async def test_leaving_the_block_normally_commits_the_estimate(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=FakeClock())
        async with limiter.acquire(6, usd="0.25") as lease:
            assert (await limiter.snapshot()).limits[1].reserved == Decimal("0.25")
        assert lease.settled
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 4
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == Decimal("0.25")

    async def test_cancelled_inside_the_block_keeps_rate_tokens_and_releases_caps(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=clock)
        with anyio.CancelScope() as scope:
            async with limiter.acquire(6, usd="0.25"):
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 4
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == 0


class TestSeveralRates:
    @pytest.mark.parametrize(
        ("tokens", "expected_ns"),
        [
            (10, 500_000_000),  # requests are the slower: 0.5 s for one
            (80, 800_000_000),  # tokens are the slower: 0.8 s for 80
        ],
    )
    async def test_the_caller_waits_for_the_slowest_rate(
        self, make: Make, tokens: int, expected_ns: int
    ) -> None:
        clock = FakeClock()
        limiter = make(
            Rate(requests=2, per=1, burst=1), Rate(tokens=100, per=1), clock=clock
        )
        await limiter.acquire(100)  # both rates empty
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", tokens))
            await settle()
            while "w" not in grants.at and (d := clock.next_deadline()) is not None:
                advance_to_ns(clock, clock.monotonic_ns() + round(d * NS))
                await settle()
        assert grants.at == {"w": expected_ns}

    async def test_nothing_is_taken_from_any_rate_until_all_can_serve(
        self, make: Make
    ) -> None:
        """Contract 1: the fast rate is not charged while the slow one is awaited."""
        clock = FakeClock()
        limiter = make(Rate(requests=10, per=1), Rate(tokens=10, per=1), clock=clock)
        await limiter.record(tokens=10)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("w", 5))
            await settle()
            snap = await limiter.snapshot()
            assert snap.limits[0].tokens == 10  # no request taken yet
            assert snap.limits[1].tokens == 0
            await advance(clock, 0.5)
        assert grants.at == {"w": NS // 2}
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 9
        assert snap.limits[1].tokens == 0

    async def test_every_acquisition_counts_one_request_unless_told(
        self, make: Make
    ) -> None:
        limiter = make(
            Rate(requests=10, per=1), Rate(tokens=100, per=1), clock=FakeClock()
        )
        await limiter.acquire(5)
        await limiter.acquire(5, requests=3)
        await limiter.acquire(5, requests=0)
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 10 - 1 - 3
        assert snap.limits[1].tokens == 85

    async def test_rpm_and_tpm_together_pace_a_stream_of_calls(
        self, make: Make
    ) -> None:
        """RPM 120 (burst 2) and TPM 600 (burst 100): large calls are paced by
        the tokens, small ones by the requests, and each waits for both.
        """
        clock = FakeClock()
        limiter = make(
            Rate(requests=120, per="minute", burst=2),
            Rate(tokens=600, per="minute", burst=100),
            clock=clock,
        )
        grants = Grants(limiter, clock)
        sizes = {"a": 60, "b": 60, "c": 1, "d": 1}
        async with anyio.create_task_group() as tg:
            for name, size in sizes.items():
                tg.start_soon(grants.acquirer(name, size))
                await settle()
            while (
                len(grants.at) < len(sizes) and (d := clock.next_deadline()) is not None
            ):
                advance_to_ns(clock, clock.monotonic_ns() + round(d * NS))
                await settle()
        assert grants.at == {
            "a": 0,  # within both bursts
            "b": 2 * NS,  # 20 more tokens at 10/s
            "c": 2 * NS + NS // 10,  # 1 token at 10/s; a request is left
            "d": 2 * NS + NS // 2,  # 0.2 request left at 2.1 s: 0.8 more at 2/s
        }
