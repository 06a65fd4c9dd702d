"""Timeouts fail fast (contract 4).

When the wait the limiter can already foresee exceeds ``timeout=``,
``AcquireTimeout`` (a ``TimeoutError``) is raised at once: no fake time
passes, nobody sleeps, the state is unchanged and ``retry_after`` is the
foreseen wait. A timeout that expires while waiting raises too, takes
nothing, and the callers behind move up. Every test runs on the memory,
SQLite and Redis stores (the ``make`` fixture).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest

from conftest import Make
from helpers import NS, run_out, settle
from ratebudget import (
    AcquireTimeout,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
    RateBudgetError,
)
from ratebudget.testing import FakeClock


class Outcomes:
    """Acquire from tasks; note when (fake ns) each was granted or failed."""

    def __init__(self, limiter: Limiter, clock: FakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.granted: dict[str, int] = {}
        self.failed: dict[str, tuple[int, BaseException]] = {}

    def acquirer(
        self, name: str, tokens: int = 0, timeout: float | None = None
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            try:
                await self.limiter.acquire(tokens, timeout=timeout)
            except AcquireTimeout as exc:
                self.failed[name] = (self.clock.monotonic_ns(), exc)
            else:
                self.granted[name] = self.clock.monotonic_ns()

        return run


class TestFailFast:
    async def test_a_foreseeable_wait_beyond_the_timeout_raises_at_once(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=clock)
        await limiter.acquire(10)
        before = await limiter.snapshot()
        with anyio.fail_after(5), pytest.raises(AcquireTimeout) as info:
            await limiter.acquire(5, usd="0.1", timeout=0.4)
        assert clock.monotonic_ns() == 0
        assert clock.sleepers == 0
        assert await limiter.snapshot() == before
        assert info.value.retry_after == pytest.approx(0.5, abs=1e-9)

    async def test_the_foreseeable_wait_counts_the_callers_queued_ahead(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("a", 10))  # served at 1 s
            await settle()
            tg.start_soon(outcomes.acquirer("b", 5))  # served at 1.5 s
            await settle()
            before = await limiter.snapshot()
            sleepers = clock.sleepers
            with anyio.fail_after(5), pytest.raises(AcquireTimeout) as info:
                await limiter.acquire(1, timeout=1.5)  # would be served at 1.6 s
            assert info.value.retry_after == pytest.approx(1.6, abs=1e-9)
            assert await limiter.snapshot() == before
            assert before.waiting == 2
            assert clock.sleepers == sleepers
            assert clock.monotonic_ns() == 0
            await run_out(clock)
        assert outcomes.granted == {"a": NS, "b": 3 * NS // 2}

    async def test_a_wait_equal_to_the_timeout_is_served_in_time(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("w", 5, timeout=0.5))
            await settle()
            await run_out(clock)
        assert outcomes.granted == {"w": NS // 2}
        assert outcomes.failed == {}

    async def test_acquire_timeout_is_a_timeout_error(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        with pytest.raises(TimeoutError) as info:
            await limiter.acquire(1, timeout=0.01)
        assert isinstance(info.value, AcquireTimeout)
        assert isinstance(info.value, RateBudgetError)

    async def test_the_context_manager_fails_fast_before_the_block(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        entered = False
        with pytest.raises(AcquireTimeout):
            async with limiter.acquire(5, timeout=0.1):
                entered = True
        assert not entered
        assert (await limiter.snapshot()).limits[0].tokens == 0

    def test_the_sync_facade_fails_fast_too(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        limiter.sync.acquire(10)
        before = limiter.sync.snapshot()
        with pytest.raises(AcquireTimeout) as info:
            limiter.sync.acquire(3, timeout=0.2)
        assert info.value.retry_after == pytest.approx(0.3, abs=1e-9)
        assert limiter.sync.snapshot() == before
        assert clock.sleepers == 0

    async def test_the_foreseeable_wait_is_the_slowest_rate_over_the_queue(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(requests=1, per=1), Rate(tokens=100, per=1), clock=clock)
        await limiter.acquire(100)  # no request, no token left
        with pytest.raises(AcquireTimeout) as info:
            await limiter.acquire(10, timeout=0.5)  # the request takes 1 s
        assert info.value.retry_after == pytest.approx(1.0, abs=1e-9)
        with pytest.raises(AcquireTimeout) as info:
            await limiter.acquire(100, requests=0, timeout=0.5)  # tokens take 1 s
        assert info.value.retry_after == pytest.approx(1.0, abs=1e-9)

    async def test_a_wait_foreseeable_across_two_rates_fails_fast(
        self, make: Make
    ) -> None:
        """Contract 4 with RPM + TPM.

        The head waits 10 s for 100 tokens; meanwhile the requests rate fills
        to its burst of 1 and stops. When the head is served it takes that
        request, so the next caller (0 tokens, 1 request) needs 0.1 s more:
        10.1 s in all, which the limiter can foresee (no commit or record is
        pending). With a 10.05 s timeout it must raise at once, not sleep 10.05
        s and then time out.
        """
        clock = FakeClock()
        limiter = make(
            Rate(tokens=100, per=10), Rate(requests=10, per=1, burst=1), clock=clock
        )
        await limiter.acquire(100, requests=0)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("head", 100))
            await settle()
            tg.start_soon(outcomes.acquirer("next", 0, timeout=10.05))
            await settle()
            await run_out(clock)
        assert outcomes.granted["head"] == 10 * NS
        assert "next" in outcomes.failed, (
            f"next was granted at {outcomes.granted['next']} ns"
        )
        at, _ = outcomes.failed["next"]
        assert at == 0, (
            f"next slept until {at} ns and then timed out; 10.1 s was foreseeable"
        )

    async def test_a_cancelled_waiter_no_longer_counts_in_the_forecast(
        self,
        make: Make,
    ) -> None:
        """The queue's schedule is replayed and cached; a waiter leaving the
        queue must drop it, or a later caller is refused for a wait that is
        no longer there.
        """
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("head", 5))  # 0.5 s
            await settle()
            scope = anyio.CancelScope()

            async def middle_task() -> None:
                with scope:
                    await limiter.acquire(10, timeout=5)  # 1.5 s: forecast cached

            tg.start_soon(middle_task)
            await settle()
            scope.cancel()
            await settle()
            # without the middle waiter: 0.5 s + 0.5 s = 1 s, within 1.2 s
            tg.start_soon(outcomes.acquirer("last", 5, timeout=1.2))
            await settle()
            assert "last" not in outcomes.failed, "refused on a stale forecast"
            await run_out(clock)
        assert outcomes.granted == {"head": NS // 2, "last": NS}

    async def test_a_refund_shortens_the_forecast(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        big = await limiter.acquire(10)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("head", 10, timeout=2))  # 1 s
            await settle()
            tg.start_soon(outcomes.acquirer("second", 10, timeout=3))  # 2 s
            await settle()
            await big.commit(tokens=0)  # head served at once; second at 1 s
            await settle()
            assert outcomes.granted == {"head": 0}
            # 1.5 s now; the forecast made before the refund said 2.5 s
            tg.start_soon(outcomes.acquirer("next", 5, timeout=1.6))
            await settle()
            assert "next" not in outcomes.failed, "refused on a stale forecast"
            await run_out(clock)
        assert outcomes.granted == {"head": 0, "second": NS, "next": 3 * NS // 2}


class TestTimeoutWhileWaiting:
    async def test_a_timeout_expiring_while_waiting_raises_and_the_queue_moves_up(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)  # 1 token/s
        await limiter.acquire(10)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("head", 10, timeout=12))  # foreseen: 10 s
            await settle()
            tg.start_soon(outcomes.acquirer("next", 1))
            await settle()
            await limiter.record(tokens=5)  # unforeseen debt: the head would need 15 s
            await run_out(clock)
        at, exc = outcomes.failed["head"]
        assert at == 12 * NS
        assert isinstance(exc, AcquireTimeout)
        assert outcomes.granted == {"next": 12 * NS}  # not after the head's 15 s
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 6  # 7 refilled at 12 s, 1 taken by next
        assert snap.waiting == 0

    async def test_a_waiter_timing_out_in_the_middle_lets_the_tail_move_up(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)  # 1 token/s
        await limiter.acquire(10)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            for name, timeout in [("a", None), ("b", 12.0), ("c", None)]:
                tg.start_soon(outcomes.acquirer(name, 5, timeout=timeout))
                await settle()
            await limiter.record(tokens=5)  # a: 10 s, b: 15 s (past 12), c: 20 s
            await run_out(clock)
        assert outcomes.failed["b"][0] == 12 * NS
        assert outcomes.granted == {"a": 10 * NS, "c": 15 * NS}

    async def test_a_timeout_while_entering_an_async_with_block_skips_the_block(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)  # 1 token/s
        await limiter.acquire(10)
        ran: list[bool] = []
        failed_at: list[int] = []

        async def caller() -> None:
            try:
                async with limiter.acquire(5, timeout=6):  # foreseen: 5 s
                    ran.append(True)
            except AcquireTimeout:
                failed_at.append(clock.monotonic_ns())

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await settle()
            await limiter.record(tokens=2)  # now 7 s
            await run_out(clock)
        assert ran == []
        assert failed_at == [6 * NS]
        assert (await limiter.snapshot()).limits[0].tokens == 4

    async def test_timeout_zero_is_served_when_nobody_waits_and_tokens_suffice(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        lease = await limiter.acquire(10, timeout=0)
        assert lease.amounts["tokens"] == 10
        with pytest.raises(AcquireTimeout) as info:
            await limiter.acquire(1, timeout=0)
        assert info.value.retry_after == pytest.approx(0.1, abs=1e-9)
        assert clock.sleepers == 0
        assert (await limiter.snapshot()).limits[0].tokens == 0

    async def test_an_infinite_timeout_waits_as_long_as_it_takes(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=1, per="hour"), clock=clock)
        await limiter.acquire(1)
        outcomes = Outcomes(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outcomes.acquirer("w", 1, timeout=math.inf))
            await settle()
            await run_out(clock)
        assert outcomes.granted == {"w": 3600 * NS}

    def test_a_sync_waiter_times_out_while_waiting(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)
        limiter.sync.acquire(10)
        result: list[BaseException | None] = []

        def worker() -> None:
            try:
                limiter.sync.acquire(10, timeout=12)
            except AcquireTimeout as exc:
                result.append(exc)
            else:
                result.append(None)

        thread = threading.Thread(target=worker)
        thread.start()
        deadline = time.monotonic() + 5
        while not (clock.sleepers and limiter.sync.snapshot().waiting == 1):
            assert time.monotonic() < deadline, "the sync waiter never went to sleep"
            thread.join(0.0005)
        limiter.sync.record(tokens=5)  # now it would need 15 s
        clock.advance(11.999)
        thread.join(0.05)
        assert result == []
        clock.advance(0.001)
        thread.join(5)
        assert not thread.is_alive()
        assert len(result) == 1
        assert isinstance(result[0], AcquireTimeout)
        snap = limiter.sync.snapshot()
        assert snap.waiting == 0
        assert snap.limits[0].tokens == 7


BAD_TIMEOUTS: list[Any] = [-1, -1e-9, -math.inf, math.nan, True, False, "1", b"1", [1]]


class TestInvalidTimeouts:
    @pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
    async def test_a_bad_timeout_is_rejected_at_the_call(
        self, make: Make, bad: Any
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest):
            limiter.acquire(1, timeout=bad)  # not even awaited
        with pytest.raises(ValueError, match="timeout"):
            limiter.acquire(1, timeout=bad)
        assert await limiter.snapshot() == before

    @pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
    def test_a_bad_timeout_is_rejected_by_the_sync_facade(
        self, make: Make, bad: Any
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), clock=FakeClock())
        before = limiter.sync.snapshot()
        with pytest.raises(InvalidRequest):
            limiter.sync.acquire(1, timeout=bad)
        assert limiter.sync.snapshot() == before
