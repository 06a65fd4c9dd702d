"""The uncontended path decides exactly as the locked path does.

An acquisition on the memory store by the thread that made the limiter,
with nobody waiting, takes a shortcut (no lock, one rate taken inline). A
limiter that another thread has used once takes the store's lock for every
call from then on, and so the general path. Driven through the same random
acquisitions, commits (below, at and above the estimate), releases and clock
steps, the two must agree on every grant and on every snapshot, exactly.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratebudget import AcquireTimeout, InvalidRequest, Lease, Limiter, Rate
from ratebudget.testing import FakeClock

# one token per nanosecond: a bucket's level is a whole number of tokens, so
# a snapshot shows it exactly
PER_NS = 10**9

END = st.sampled_from(("hold", "estimate", "less", "more", "release"))
STEP = st.tuples(
    st.sampled_from((0, 0, 1, 2, 3, 5, 8, 40)),  # ns the clocks move first
    st.integers(0, 12),  # tokens asked for
    END,  # what becomes of the lease
    st.integers(0, 30),  # which held lease to settle, if any
    st.booleans(),  # as ``async with`` (else awaited)
)


async def _step(
    limiter: Limiter,
    held: list[Lease],
    tokens: int,
    end: str,
    which: int,
    block: bool,
) -> bool:
    """One acquisition and what becomes of it; whether it was granted."""
    try:
        if block:
            async with limiter.acquire(tokens, timeout=0) as lease:
                if end == "less":
                    await lease.commit(tokens=tokens // 2)
                elif end == "more":
                    await lease.commit(tokens=tokens + 3)
                elif end == "release":
                    await lease.release()
        else:
            lease = await limiter.acquire(tokens, timeout=0)
            held.append(lease)
    except AcquireTimeout:
        return False
    if held and end != "hold":
        # settle an older lease: its refund is measured from its own take
        old = held.pop(which % len(held))
        if end == "less":
            await old.commit(tokens=0)
        elif end == "more":
            await old.commit(tokens=15)
        elif end == "release":
            await old.release()
        else:
            await old.commit()
    return True


class TestTheOwnersShortcut:
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        st.integers(1, 30),
        st.none() | st.integers(1, 6),
        st.lists(STEP, max_size=40),
    )
    async def test_grants_and_snapshots_match_a_limiter_that_always_locks(
        self,
        burst: int,
        requests: int | None,
        steps: list[tuple[int, int, str, int, bool]],
    ) -> None:
        limits = [Rate(tokens=PER_NS, per=1, burst=burst)]
        if requests is not None:  # a second rate: the shortcut of several rates
            limits.append(Rate(requests=PER_NS, per=1, burst=requests))
        clocks = FakeClock(), FakeClock()
        ours, locked = (Limiter(*limits, clock=clock) for clock in clocks)
        # another thread looks at ``locked`` once: from then on every call
        # on it takes the store's lock
        await anyio.to_thread.run_sync(locked.sync.snapshot)
        held: tuple[list[Lease], list[Lease]] = ([], [])
        for gap, tokens, end, which, block in steps:
            for clock in clocks:
                clock.advance_ns(gap)
            granted = [
                await _step(limiter, leases, min(tokens, burst), end, which, block)
                for limiter, leases in zip((ours, locked), held, strict=True)
            ]
            assert granted[0] == granted[1]
            assert await ours.snapshot() == await locked.snapshot()


class TestLeavingTheBlock:
    """Leaving a rate lease's block has nothing to settle, and still behaves
    as leaving any ``async with``."""

    async def test_an_exception_in_the_block_goes_through(self) -> None:
        limiter = Limiter(Rate(tokens=100, per="second"))
        with pytest.raises(KeyError):
            async with limiter.acquire(5) as lease:
                raise KeyError("boom")
        assert lease.settled
        with pytest.raises(InvalidRequest):
            await lease.commit(tokens=1)

    async def test_the_block_leaves_the_lease_settled_every_time(self) -> None:
        limiter = Limiter(Rate(tokens=100, per="second"))
        for _ in range(3):
            async with limiter.acquire(5) as lease:
                assert not lease.settled
            assert lease.settled
        snap = await limiter.snapshot()
        assert snap.limits[0].remaining == 85

    async def test_an_exit_stack_enters_and_leaves_it(self) -> None:
        limiter = Limiter(Rate(tokens=100, per="second"))
        async with contextlib.AsyncExitStack() as stack:
            lease = await stack.enter_async_context(limiter.acquire(5))
            assert not lease.settled
        assert lease.settled
