"""First come, first served (contract 3): no overtaking, no starvation.

A later caller never overtakes an earlier one on the same limiter, whatever
the sizes, so a large request is never starved by a stream of small ones,
and ``try_acquire`` never jumps a non-empty queue. Timings run on a
``FakeClock`` and are compared with an independent model of a FIFO bucket,
on the memory, SQLite and Redis stores (the ``make`` fixture) alike.
"""

from __future__ import annotations

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Make
from helpers import NS, Grants, run_out, run_until, settle
from ratebudget import Rate
from ratebudget.testing import FakeClock


def fifo_model(
    limit: int,
    per_ns: int,
    burst: int,
    start: int,
    arrivals: list[tuple[int, int]],
    tick_ns: int = 1,
) -> list[int]:
    """Grant times (ns) of a FIFO token bucket, written from its definition.

    ``start`` tokens at 0 s; ``arrivals`` are ``(time_ns, tokens)`` in order.
    Each caller is served at the first moment that is not before its arrival
    nor before the caller ahead of it, and at which the bucket holds its
    tokens; the bucket refills ``limit`` tokens per ``per_ns`` up to ``burst``.
    Time counts in steps of ``tick_ns`` (the store's resolution): arrivals
    fall on whole steps, and a wait is rounded up to a whole step.
    """
    assert per_ns % tick_ns == 0
    assert all(at % tick_ns == 0 for at, _ in arrivals)
    per_ns //= tick_ns
    arrivals = [(at // tick_ns, need) for at, need in arrivals]
    level = start * per_ns  # in token-ticks
    cap = burst * per_ns
    last = 0
    t_prev = 0
    out = []
    for at, need in arrivals:
        t = max(at, t_prev)
        level = min(level + limit * (t - last), cap) if level < cap else level
        last = t
        missing = need * per_ns - level
        if missing > 0:
            wait = -(-missing // limit)
            t += wait
            level = min(level + limit * wait, cap)
            last = t
        level -= need * per_ns
        out.append(t * tick_ns)
        t_prev = t
    return out


@pytest.fixture
def tick_ns(store_kind: str) -> int:
    """The store's time resolution: memory counts nanoseconds, the shared
    stores whole microseconds."""
    return 1 if store_kind == "memory" else 1_000


@st.composite
def arrival_patterns(draw: st.DrawFn) -> tuple[int, int, int, list[tuple[int, int]]]:
    """(burst, limit per second, tokens at the start, [(gap_ns, tokens)])."""
    burst = draw(st.integers(1, 30))
    limit = draw(st.integers(1, 30))
    start = draw(st.integers(0, burst))
    arrivals = draw(
        st.lists(
            st.tuples(st.sampled_from([0, 0, 1, NS // 7, NS]), st.integers(1, burst)),
            min_size=1,
            max_size=30,
        )
    )
    return burst, limit, start, arrivals


class TestLargeRequestsAreNotStarved:
    async def test_a_full_burst_request_is_served_before_later_small_ones(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(5)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("big", 10))
            await settle()
            for name in ("s1", "s2", "s3"):
                tg.start_soon(grants.acquirer(name, 1))  # each fits in the 5 left
                await settle()
            assert grants.order == [], "a small request overtook the waiting big one"
            snap = await limiter.snapshot()
            assert snap.waiting == 4
            assert snap.limits[0].tokens == 5
            await run_out(clock)
        assert grants.order == ["big", "s1", "s2", "s3"]
        assert grants.at == {
            "big": NS // 2,
            "s1": 6 * NS // 10,
            "s2": 7 * NS // 10,
            "s3": 8 * NS // 10,
        }

    async def test_a_stream_of_small_requests_never_starves_a_large_one(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        grants = Grants(limiter, clock)
        smalls = [f"s{i:02}" for i in range(40)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("big", 10))
            await settle()
            for i, name in enumerate(smalls):
                # a 1-token request every 25 ms: four times the refill rate
                await run_until(clock, i * NS // 40)
                tg.start_soon(grants.acquirer(name, 1))
                await settle()
            await run_out(clock)
        assert grants.at["big"] == NS  # its own refill time, as if alone
        assert grants.order == ["big", *smalls]

    async def test_a_large_request_behind_small_ones_waits_only_for_them(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(10)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            for name, size in [("s1", 2), ("s2", 3), ("big", 10), ("s3", 1)]:
                tg.start_soon(grants.acquirer(name, size))
                await settle()
            await run_out(clock)
        assert grants.order == ["s1", "s2", "big", "s3"]
        assert grants.at == {
            "s1": NS // 5,
            "s2": NS // 2,
            "big": 3 * NS // 2,
            "s3": 16 * NS // 10,
        }


class TestArrivalOrder:
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(arrival_patterns())
    async def test_grants_follow_arrival_order_for_mixed_sizes(
        self,
        make: Make,
        tick_ns: int,
        pattern: tuple[int, int, int, list[tuple[int, int]]],
    ) -> None:
        """Random sizes (up to the burst) and gaps: nobody is served before a
        caller that came earlier, and every grant time equals the model's.

        The gaps are rounded up to the store's resolution (1 ns becomes one
        µs on the shared stores) and so are the model's waits: the same
        model, at the resolution the store keeps time in.
        """
        burst, limit, start, arrivals = pattern
        clock = FakeClock()
        limiter = make(Rate(tokens=limit, per=1, burst=burst), clock=clock)
        if start < burst:
            await limiter.record(tokens=burst - start)
        grants = Grants(limiter, clock)
        names = [f"c{i:02}" for i in range(len(arrivals))]
        times = []
        t = 0
        async with anyio.create_task_group() as tg:
            for name, (gap, size) in zip(names, arrivals, strict=True):
                t += -(-gap // tick_ns) * tick_ns
                times.append(t)
                await run_until(clock, t)
                tg.start_soon(grants.acquirer(name, size))
                await settle()
            await run_out(clock)
        granted = [grants.at[name] for name in names]
        assert granted == sorted(granted), (
            "a later caller was served before an earlier one"
        )
        expected = fifo_model(
            limit,
            NS,
            burst,
            start,
            [(t, n) for t, (_, n) in zip(times, arrivals, strict=True)],
            tick_ns,
        )
        assert granted == expected

    async def test_a_request_on_another_axis_does_not_overtake_either(
        self, make: Make
    ) -> None:
        """Even a caller that needs nothing the head waits for stays behind it."""
        clock = FakeClock()
        limiter = make(Rate(requests=1, per=1), Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(0)  # the only request of this second
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("needs-a-request", 0))
            await settle()
            tg.start_soon(grants.acquirer("tokens-only", 5, requests=0))
            await settle()
            assert grants.order == []
            await run_out(clock)
        # served at the same instant (the order within it is the scheduler's)
        assert grants.at == {"needs-a-request": NS, "tokens-only": NS}


class TestTryAcquireNeverJumpsTheQueue:
    async def test_try_acquire_returns_none_behind_a_waiter_though_tokens_suffice(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(1)
        grants = Grants(limiter, clock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(grants.acquirer("big", 10))
            await settle()
            before = await limiter.snapshot()
            assert before.limits[0].tokens == 9
            assert await limiter.try_acquire(1) is None
            assert await limiter.try_acquire(0, requests=0) is None
            assert limiter.sync.try_acquire(1) is None
            assert await limiter.snapshot() == before
            await run_out(clock)
        assert grants.at == {"big": NS // 10}
        clock.advance(0.1)
        assert await limiter.try_acquire(1) is not None

    async def test_try_acquire_that_would_wait_returns_none_and_takes_nothing(
        self,
        make: Make,
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(7)
        before = await limiter.snapshot()
        assert await limiter.try_acquire(4) is None
        assert await limiter.snapshot() == before
        assert clock.sleepers == 0
        lease = await limiter.try_acquire(3)
        assert lease is not None
        assert lease.amounts == {"tokens": 3, "requests": 1}

    async def test_timeout_zero_does_not_jump_the_queue_either(
        self, make: Make
    ) -> None:
        from ratebudget import AcquireTimeout

        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(Grants(limiter, clock).acquirer("big", 10))
            await settle()
            with pytest.raises(AcquireTimeout):
                await limiter.acquire(1, timeout=0)
            await run_out(clock)
