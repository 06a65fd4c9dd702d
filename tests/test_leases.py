"""Leases: reserve, then commit or release (contract 7)."""

from __future__ import annotations

import gc
import inspect
import re
import warnings
from decimal import Decimal

import anyio
import pytest

from conftest import Make
from ratebudget import Cap, InvalidRequest, Lease, Limiter, LimitSnapshot, Rate
from ratebudget.testing import FakeClock

D = Decimal


def make_limiter(make: Make, clock: FakeClock | None = None) -> Limiter:
    """tokens rate (0), requests rate (1), tokens cap (2), usd cap (3)."""
    return make(
        Rate(tokens=100, per="minute"),
        Rate(requests=10, per="minute"),
        Cap(tokens=1_000, per="day"),
        Cap(usd=1, per="day"),
        clock=clock or FakeClock(),
    )


async def limits(limiter: Limiter) -> tuple[LimitSnapshot, ...]:
    return (await limiter.snapshot()).limits


async def view(limiter: Limiter) -> tuple[object, ...]:
    """(tokens left, requests left, tokens used, tokens reserved, usd used, usd reserved)."""
    rate, req, tok, usd = await limits(limiter)
    return (rate.tokens, req.tokens, tok.used, tok.reserved, usd.used, usd.reserved)


class Boom(Exception):
    pass


class TestAsyncWithExit:
    async def test_normal_exit_without_commit_commits_the_estimate(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        async with limiter.acquire(30, usd="0.25") as lease:
            assert await view(limiter) == (70, 9, 0, 30, D(0), D("0.25"))
        assert lease.settled
        assert await view(limiter) == (70, 9, 30, 0, D("0.25"), D(0))

    async def test_exit_by_exception_releases_caps_but_rate_tokens_stay_spent(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        with pytest.raises(Boom):
            async with limiter.acquire(30, usd="0.25") as lease:
                raise Boom
        assert lease.settled
        assert await view(limiter) == (70, 9, 0, 0, D(0), D(0))

    async def test_exit_by_cancellation_releases_caps_but_rate_tokens_stay_spent(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make_limiter(make, clock)
        leases: list[Lease] = []
        with anyio.fail_after(5), anyio.CancelScope() as scope:
            async with limiter.acquire(30, usd="0.25") as lease:
                leases.append(lease)
                scope.cancel()
                await clock.sleep(10)  # cancelled here
            pytest.fail("the block should have been cancelled")  # pragma: no cover
        assert scope.cancelled_caught
        assert leases[0].settled
        assert await view(limiter) == (70, 9, 0, 0, D(0), D(0))

    async def test_cancellation_from_outside_the_task_releases_the_caps(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make_limiter(make, clock)
        entered = anyio.Event()

        async def worker() -> None:
            async with limiter.acquire(30, usd="0.25"):
                entered.set()
                await clock.sleep(3600)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker)
                await entered.wait()
                assert await view(limiter) == (70, 9, 0, 30, D(0), D("0.25"))
                tg.cancel_scope.cancel()
        assert await view(limiter) == (70, 9, 0, 0, D(0), D(0))

    async def test_a_commit_inside_the_block_is_not_repeated_at_exit(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        async with limiter.acquire(30, usd="0.25") as lease:
            await lease.commit(tokens=20, usd="0.1")
        assert await view(limiter) == (80, 9, 20, 0, D("0.1"), D(0))

    async def test_an_exception_after_a_commit_keeps_the_commit(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)

        async def commit_then_fail() -> None:
            async with limiter.acquire(30, usd="0.25") as lease:
                await lease.commit(tokens=20, usd="0.1")
                raise Boom

        with pytest.raises(Boom):
            await commit_then_fail()
        assert await view(limiter) == (80, 9, 20, 0, D("0.1"), D(0))

    async def test_a_release_inside_the_block_is_final(self, make: Make) -> None:
        limiter = make_limiter(make)
        async with limiter.acquire(30, usd="0.25") as lease:
            await lease.release()
        assert await view(limiter) == (70, 9, 0, 0, D(0), D(0))


class TestCommit:
    async def test_commit_replaces_the_estimate_on_every_limit(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.commit(tokens=30, usd="0.2")
        # the 20 unused tokens go back to the rate; caps charge the real usage
        assert await view(limiter) == (70, 9, 30, 0, D("0.2"), D(0))

    async def test_axes_not_given_keep_their_estimate(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.commit(tokens=30)
        assert await view(limiter) == (70, 9, 30, 0, D("0.5"), D(0))

    async def test_commit_with_no_arguments_commits_the_estimate(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.commit()
        assert await view(limiter) == (50, 9, 50, 0, D("0.5"), D(0))

    async def test_overuse_puts_a_rate_into_debt(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50)
        await lease.commit(tokens=150)
        rate, _, tok, _ = await limits(limiter)
        assert rate.tokens == -50
        assert rate.remaining == 0
        assert tok.used == 150

    async def test_commit_may_charge_an_axis_that_was_not_estimated(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(10)
        await lease.commit(usd="0.3")
        assert await view(limiter) == (90, 9, 10, 0, D("0.3"), D(0))

    async def test_commit_may_change_the_request_count(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(10)
        await lease.commit(requests=3)
        assert (await limits(limiter))[1].tokens == 7

    async def test_a_second_commit_is_rejected_and_changes_nothing(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.commit(tokens=30)
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="already"):
            await lease.commit(tokens=10)
        assert await limiter.snapshot() == before

    async def test_commit_after_release_is_rejected(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.release()
        with pytest.raises(InvalidRequest):
            await lease.commit()
        assert await view(limiter) == (50, 9, 0, 0, D(0), D(0))

    async def test_commit_before_acquire_is_rejected(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = limiter.acquire(50, usd="0.5")
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="not been acquired"):
            await lease.commit()
        with pytest.raises(InvalidRequest, match="not been acquired"):
            await lease.release()
        assert not lease.settled
        assert await limiter.snapshot() == before
        # the lease can still be acquired afterwards
        await lease
        assert await view(limiter) == (50, 9, 0, 50, D(0), D("0.5"))
        await lease.release()


class TestRelease:
    async def test_release_gives_back_caps_but_not_rate_tokens(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.release()
        assert lease.settled
        assert await view(limiter) == (50, 9, 0, 0, D(0), D(0))

    async def test_release_is_idempotent(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await limiter.record(usd="0.1")
        await lease.release()
        before = await limiter.snapshot()
        await lease.release()
        await lease.release()
        assert await limiter.snapshot() == before

    async def test_release_after_commit_is_a_no_op(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.5")
        await lease.commit(tokens=40)
        before = await limiter.snapshot()
        await lease.release()
        assert await limiter.snapshot() == before
        assert await view(limiter) == (60, 9, 40, 0, D("0.5"), D(0))


class TestAcquireOnce:
    async def test_awaiting_a_lease_twice_is_rejected(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = limiter.acquire(10)
        assert await lease is lease
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="already acquired"):
            await lease
        assert await limiter.snapshot() == before

    async def test_entering_a_granted_lease_takes_nothing_more_and_settles_on_exit(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(10)
        assert await view(limiter) == (90, 9, 0, 10, D(0), D(0))
        async with lease as entered:
            assert entered is lease
            assert await view(limiter) == (90, 9, 0, 10, D(0), D(0))
        assert lease.settled
        assert await view(limiter) == (90, 9, 10, 0, D(0), D(0))

    async def test_a_try_acquired_lease_works_as_a_context_manager(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.try_acquire(10)
        assert lease is not None
        with pytest.raises(RuntimeError, match="boom"):
            async with lease:
                raise RuntimeError("boom")
        assert lease.settled
        assert await view(limiter) == (90, 9, 0, 0, D(0), D(0))

    async def test_entering_a_settled_lease_is_rejected(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(10)
        await lease.release()
        with pytest.raises(InvalidRequest):
            async with lease:
                pytest.fail("should not enter")  # pragma: no cover

    async def test_a_settled_lease_cannot_be_reacquired(self, make: Make) -> None:
        limiter = make_limiter(make)
        async with limiter.acquire(10) as lease:
            pass
        with pytest.raises(InvalidRequest):
            await lease


class TestLeaseAttributes:
    async def test_amounts_are_the_reserved_estimate_including_requests(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(50, usd="0.012")
        assert lease.amounts == {"tokens": 50, "usd": D("0.012"), "requests": 1}
        await lease.commit(tokens=10)
        assert lease.amounts == {"tokens": 50, "usd": D("0.012"), "requests": 1}

    async def test_amounts_omit_zero_tokens(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(usd="0.1")
        assert lease.amounts == {"usd": D("0.1"), "requests": 1}
        await lease.release()

    async def test_ids_are_unique_hex_strings(self, make: Make) -> None:
        limiter = make(clock=FakeClock())
        other = make(clock=FakeClock())
        ids = set()
        for _ in range(50):
            for lim in (limiter, other):
                lease = await lim.acquire(1)
                assert re.fullmatch(r"[0-9a-f]+", lease.id)
                ids.add(lease.id)
                await lease.release()
        tried = await limiter.try_acquire(1)
        assert tried is not None
        ids.add(tried.id)
        ids.add(limiter.sync.acquire(1).id)
        assert len(ids) == 102

    async def test_repr_shows_id_state_and_amounts(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = limiter.acquire(5, usd="0.5")
        assert "pending" in repr(lease)
        await lease
        text = repr(lease)
        assert text.startswith(f"<Lease {lease.id} active")
        assert "tokens=5" in text
        assert "usd=0.5" in text
        assert "requests=1" in text
        await lease.commit()
        assert "settled" in repr(lease)

    async def test_settled_tracks_the_lease_life(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = limiter.acquire(5)
        assert not lease.settled
        await lease
        assert not lease.settled
        await lease.commit()
        assert lease.settled


class TestRequestCounting:
    async def test_each_acquisition_counts_one_request(self, make: Make) -> None:
        limiter = make_limiter(make)
        for _ in range(3):
            await limiter.acquire(1)
        assert (await limits(limiter))[1].tokens == 7

    async def test_requests_given_override_the_implicit_one(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.acquire(1, requests=3)
        assert lease.amounts["requests"] == 3
        assert (await limits(limiter))[1].tokens == 7
        zero = await limiter.acquire(1, requests=0)
        assert zero.amounts["requests"] == 0
        assert (await limits(limiter))[1].tokens == 7

    async def test_record_counts_no_implicit_request(self, make: Make) -> None:
        limiter = make_limiter(make)
        await limiter.record(5, usd="0.1")
        assert (await limits(limiter))[1].tokens == 10
        limiter.sync.record(5)
        assert (await limits(limiter))[1].tokens == 10
        await limiter.record(requests=2)
        assert (await limits(limiter))[1].tokens == 8

    async def test_a_request_cap_counts_acquisitions(self, make: Make) -> None:
        limiter = make(Cap(requests=2, per="day"), clock=FakeClock())
        await (await limiter.acquire(10)).commit()
        async with limiter.acquire(10):
            pass
        snap = await limiter.snapshot()
        assert snap.limits[0].used == 2
        assert snap.remaining("requests") == 0


class TestTryAcquire:
    async def test_try_acquire_grants_a_usable_lease(self, make: Make) -> None:
        limiter = make_limiter(make)
        lease = await limiter.try_acquire(40, usd="0.5")
        assert lease is not None
        await lease.commit(tokens=20)
        assert await view(limiter) == (80, 9, 20, 0, D("0.5"), D(0))

    async def test_try_acquire_returns_none_when_a_rate_would_make_it_wait(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        await limiter.acquire(100)
        before = await limiter.snapshot()
        assert await limiter.try_acquire(1) is None
        assert await limiter.snapshot() == before


class TestSyncLease:
    def test_normal_exit_commits_and_exception_releases(self, make: Make) -> None:
        limiter = make_limiter(make)
        with limiter.sync.acquire(30, usd="0.25") as lease:
            assert not lease.settled
        assert lease.settled
        with pytest.raises(Boom), limiter.sync.acquire(10, usd="0.5"):
            raise Boom
        rate, req, tok, usd = limiter.sync.snapshot().limits
        assert (rate.tokens, req.tokens) == (60, 8)
        assert (tok.used, tok.reserved, usd.used, usd.reserved) == (
            30,
            0,
            D("0.25"),
            D(0),
        )

    def test_commit_replaces_the_estimate_and_release_after_is_a_no_op(
        self, make: Make
    ) -> None:
        limiter = make_limiter(make)
        with limiter.sync.acquire(30, usd="0.25") as lease:
            lease.commit(tokens=10)
            lease.release()
            with pytest.raises(InvalidRequest):
                lease.commit()
        rate, _, tok, usd = limiter.sync.snapshot().limits
        assert (rate.tokens, tok.used, usd.used, usd.reserved) == (
            90,
            10,
            D("0.25"),
            D(0),
        )
        assert lease.amounts == {"tokens": 30, "usd": D("0.25"), "requests": 1}
        assert repr(lease).startswith(f"<SyncLease {lease.id} settled")


class TestDroppedLeases:
    """A lease dropped while active is released, with a ``ResourceWarning``
    that names where it was acquired (as Python does for a coroutine never
    awaited); on a shared store the release rides with the next call."""

    async def test_a_dropped_lease_is_released_and_warned_about(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=1), clock=FakeClock())
        lease = await limiter.acquire(usd="0.75")
        line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
        assert (await limiter.snapshot())[0].reserved == Decimal("0.75")
        with pytest.warns(ResourceWarning, match="never committed or released") as w:
            del lease  # CPython frees it here
        assert f"{__file__}:{line}" in str(w[0].message)
        snap = await limiter.snapshot()
        assert (snap[0].used, snap[0].reserved) == (0, 0)
        async with limiter.acquire(usd=1):  # all of it is free again
            pass

    async def test_a_lease_dropped_in_a_with_block_of_its_own_is_fine(
        self, make: Make
    ) -> None:
        limiter = make(Cap(usd=1), Rate(tokens=10, per=1), clock=FakeClock())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with limiter.acquire(1, usd="0.5"):
                pass
            lease = await limiter.acquire(1, usd="0.25")
            await lease.commit()
            del lease
            lease = await limiter.acquire(1, usd="0.25")
            await lease.release()
            del lease
            gc.collect()
        assert (await limiter.snapshot())[0].used == Decimal("0.75")

    async def test_a_rate_only_lease_holds_nothing_to_give_back(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), clock=FakeClock())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lease = await limiter.acquire(4)
            del lease
            gc.collect()
        assert (await limiter.snapshot())[0].tokens == 6  # the tokens stay spent

    def test_a_dropped_sync_lease_is_released_too(self, make: Make) -> None:
        limiter = make(Cap(tokens=100), clock=FakeClock())
        lease = limiter.sync.acquire(60)
        with pytest.warns(ResourceWarning, match="test_leases.py"):
            del lease
        assert limiter.sync.snapshot()[0].reserved == 0
        limiter.sync.acquire(100).commit()
