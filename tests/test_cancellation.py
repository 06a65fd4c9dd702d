"""Cancellation is free (contract 5).

A caller cancelled while it waits (anyio cancel scope, ``move_on_after``,
``fail_after``, a task group, ``asyncio.Task.cancel``, trio cancellation)
takes nothing: the callers behind it move up as if it never came. A caller
granted on its behalf but cancelled before it ran gives everything back,
exactly once. Properties: any subset of N waiters (up to 1000), cancelled in
any order, leaves the limiter exactly as a limiter that never saw them, down
to the grant time of every survivor.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from decimal import Decimal

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Make
from core_engine import Engine, Waiter
from helpers import NS, advance_to_ns, run_out, settle
from ratebudget import AcquireTimeout, Cap, Lease, Limiter, Rate, Snapshot
from ratebudget._decide import CLAIMED, FAILED
from ratebudget.testing import FakeClock


def limiter_with_empty_bucket(make: Make) -> tuple[FakeClock, Limiter]:
    clock = FakeClock()
    limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=clock)
    limiter.sync.acquire(10)  # no token left; 1 s to refill
    return clock, limiter


Victim = Callable[[Limiter], Awaitable[None]]


async def check_cancelled_waiter_takes_nothing(
    make: Make, victim: Victim, cancel: Callable[[], None] | None = None
) -> None:
    """A victim waits (5 tokens, $0.30) ahead of another caller (5 tokens).

    Once the victim is cancelled (by ``cancel``, or by its own timer), the
    state is exactly that of the other caller waiting alone, and it is
    served at 0.5 s, not at 1 s behind the victim.
    """
    clock, limiter = limiter_with_empty_bucket(make)
    granted: dict[str, int] = {}
    held: list[Lease] = []  # the lease behind holds its reservation to the end
    done = anyio.Event()

    async def run_victim() -> None:
        try:
            await victim(limiter)
        finally:
            done.set()

    async def behind() -> None:
        held.append(await limiter.acquire(5, usd="0.1"))
        granted["behind"] = clock.monotonic_ns()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_victim)
        await settle()
        tg.start_soon(behind)
        await settle()
        assert (await limiter.snapshot()).waiting == 2
        if cancel is not None:
            cancel()
        with anyio.fail_after(5):
            await done.wait()
        await settle()
        assert clock.monotonic_ns() == 0
        snap = await limiter.snapshot()
        assert snap.waiting == 1
        assert snap.limits[0].tokens == 0
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == 0
        await settle()  # the snapshot let store calls start: wait for them
        await run_out(clock)
    assert granted == {"behind": NS // 2}
    snap = await limiter.snapshot()
    assert snap.limits[0].tokens == 0
    assert snap.limits[1].reserved == Decimal("0.1")


def due(scopes: list[anyio.CancelScope]) -> None:
    """Bring the deadline of the victim's scope to now: it expires (the
    event loop's timer cancels it, as a deadline that passed does)."""
    (scope,) = scopes
    scope.deadline = anyio.current_time()


class TestCancelledWaiterTakesNothing:
    async def test_cancelled_by_an_anyio_cancel_scope(self, make: Make) -> None:
        scope = anyio.CancelScope()

        async def victim(limiter: Limiter) -> None:
            with scope:
                await limiter.acquire(5, usd="0.3")
                pytest.fail("a cancelled waiter was granted")
            assert scope.cancelled_caught

        await check_cancelled_waiter_takes_nothing(make, victim, scope.cancel)

    async def test_cancelled_while_entering_an_async_with_block(
        self, make: Make
    ) -> None:
        scope = anyio.CancelScope()

        async def victim(limiter: Limiter) -> None:
            with scope:
                async with limiter.acquire(5, usd="0.3"):
                    pytest.fail("the block of a cancelled waiter ran")
            assert scope.cancelled_caught

        await check_cancelled_waiter_takes_nothing(make, victim, scope.cancel)

    # The deadlines below are the event loop's (real time; fake time never
    # moves), due once both waiters are seen queued: a short fixed deadline
    # could pass before then on a busy machine.

    async def test_cancelled_by_move_on_after(self, make: Make) -> None:
        scopes: list[anyio.CancelScope] = []

        async def victim(limiter: Limiter) -> None:
            with anyio.move_on_after(3600) as scope:
                scopes.append(scope)
                await limiter.acquire(5, usd="0.3")
            assert scope.cancelled_caught

        await check_cancelled_waiter_takes_nothing(make, victim, lambda: due(scopes))

    async def test_cancelled_by_fail_after(self, make: Make) -> None:
        scopes: list[anyio.CancelScope] = []

        async def victim(limiter: Limiter) -> None:
            async def wait() -> None:
                with anyio.fail_after(3600) as scope:
                    scopes.append(scope)
                    await limiter.acquire(5, usd="0.3")

            with pytest.raises(TimeoutError) as info:
                await wait()
            assert not isinstance(info.value, AcquireTimeout)

        await check_cancelled_waiter_takes_nothing(make, victim, lambda: due(scopes))

    async def test_cancelled_with_its_task_group(self, make: Make) -> None:
        clock, limiter = limiter_with_empty_bucket(make)
        before = await limiter.snapshot()

        async def one() -> None:
            await limiter.acquire(1, usd="0.1")
            pytest.fail("a cancelled waiter was granted")

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
            await settle()
            assert (await limiter.snapshot()).waiting == 3
            tg.cancel_scope.cancel()
        assert await limiter.snapshot() == before
        assert clock.sleepers == 0

    async def test_cancelled_by_asyncio_task_cancel(
        self, make: Make, anyio_backend: str
    ) -> None:
        if anyio_backend != "asyncio":
            pytest.skip("asyncio.Task.cancel exists only on asyncio")
        import asyncio

        tasks: list[asyncio.Task[None]] = []

        async def victim(limiter: Limiter) -> None:
            async def acquire() -> None:
                await limiter.acquire(5, usd="0.3")

            tasks.append(asyncio.get_running_loop().create_task(acquire()))
            with pytest.raises(asyncio.CancelledError):
                await tasks[0]

        def cancel() -> None:
            tasks[0].cancel()

        await check_cancelled_waiter_takes_nothing(make, victim, cancel)

    async def test_cancelled_by_a_trio_cancel_scope(
        self, make: Make, anyio_backend: str
    ) -> None:
        if anyio_backend != "trio":
            pytest.skip("trio's own cancel scopes run only on trio")
        scope = trio.CancelScope()

        async def victim(limiter: Limiter) -> None:
            with scope:
                await limiter.acquire(5, usd="0.3")
            assert scope.cancelled_caught

        await check_cancelled_waiter_takes_nothing(make, victim, scope.cancel)

    async def test_cancelled_by_trio_move_on_after(
        self, make: Make, anyio_backend: str
    ) -> None:
        if anyio_backend != "trio":
            pytest.skip("trio's own timeouts run only on trio")

        scopes: list[trio.CancelScope] = []

        async def victim(limiter: Limiter) -> None:
            # a deadline due once both waiters are seen queued, as above
            with trio.move_on_after(3600) as scope:
                scopes.append(scope)
                await limiter.acquire(5, usd="0.3")
            assert scope.cancelled_caught

        def due() -> None:
            (scope,) = scopes
            scope.deadline = trio.current_time()

        await check_cancelled_waiter_takes_nothing(make, victim, due)


class TestTheQueueMovesUp:
    async def test_a_cancelled_head_lets_the_next_be_served_at_its_own_time(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)  # 1 token/s
        await limiter.acquire(10)
        granted: dict[str, int] = {}
        head = anyio.CancelScope()

        async def caller(name: str, tokens: int, scope: anyio.CancelScope) -> None:
            with scope:
                await limiter.acquire(tokens)
                granted[name] = clock.monotonic_ns()

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "head", 10, head)
            await settle()
            tg.start_soon(caller, "b", 10, anyio.CancelScope())
            await settle()
            tg.start_soon(caller, "c", 5, anyio.CancelScope())
            await settle()
            advance_to_ns(clock, NS)
            await settle()
            head.cancel()  # at 1 s, while b and c wait behind it
            await settle()
            await run_out(clock)
        assert granted == {"b": 10 * NS, "c": 15 * NS}  # not 20 s and 25 s

    async def test_a_cancelled_middle_waiter_lets_the_tail_move_up(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=10), clock=clock)
        await limiter.acquire(10)
        granted: dict[str, int] = {}
        scopes = {name: anyio.CancelScope() for name in "abc"}

        async def caller(name: str) -> None:
            with scopes[name]:
                await limiter.acquire(5)
                granted[name] = clock.monotonic_ns()

        async with anyio.create_task_group() as tg:
            for name in "abc":
                tg.start_soon(caller, name)
                await settle()
            scopes["b"].cancel()
            await settle()
            await run_out(clock)
        assert granted == {"a": 5 * NS, "c": 10 * NS}


class TestCancelledAfterTheGrantBeforeItRan:
    """The holder commits through the blocking facade, in the test's own thread:
    the store's answer, and the victim's wake-up with it, arrive without this
    task yielding, so the victim cannot run between its grant and its
    cancellation, on any store (awaiting a shared store's answer would let it
    run and claim its grant first)."""

    async def test_everything_granted_on_its_behalf_goes_back_exactly_once(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), Cap(usd="1"), clock=clock)
        holder = limiter.sync.acquire(10, usd="0.1")
        scope = anyio.CancelScope()
        outcome: list[str] = []

        async def victim() -> None:
            with scope:
                await limiter.acquire(5, usd="0.3")
                outcome.append("granted")
                await anyio.lowlevel.checkpoint()
                outcome.append("ran on")
            outcome.append("cancelled" if scope.cancelled_caught else "left")

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            await settle()
            holder.commit(tokens=5)  # 5 back: the victim is granted now...
            snap = limiter.sync.snapshot()
            assert snap.waiting == 0
            assert snap.limits[0].tokens == 0
            assert snap.limits[1].reserved == Decimal("0.3")
            scope.cancel()  # ...and cancelled before it runs
        assert outcome == ["cancelled"]
        snap = await limiter.snapshot()
        assert snap.limits[0].tokens == 5  # not 0 (kept) nor 10 (given back twice)
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == Decimal("0.1")
        assert clock.monotonic_ns() == 0

    async def test_what_it_gives_back_serves_the_next_waiter_at_once(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        holder = limiter.sync.acquire(10)
        scope = anyio.CancelScope()
        granted: dict[str, int] = {}

        async def caller(name: str, scope: anyio.CancelScope) -> None:
            with scope:
                await limiter.acquire(5)
                granted[name] = clock.monotonic_ns()

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "victim", scope)
            await settle()
            tg.start_soon(caller, "next", anyio.CancelScope())
            await settle()
            holder.commit(tokens=5)  # the victim is granted on its behalf
            scope.cancel()
            await settle()
            assert granted == {"next": 0}
        assert (await limiter.snapshot()).limits[0].tokens == 0


# -- properties -----------------------------------------------------------------


Crowd = tuple[int, int, list[int], list[int], bool]


@st.composite
def big_crowds(draw: st.DrawFn, most: int = 1000) -> Crowd:
    """(burst, tokens at the start, sizes of N waiters, the ones cancelled in
    cancellation order, whether all are cancelled before any of them runs).

    Up to ``most`` waiters, built from a seed so that a failure shrinks fast.
    Cancelled in one batch, a waiter may be granted on its behalf (when one
    ahead of it leaves) before its own cancellation is delivered.
    """
    burst = draw(st.integers(1, 20))
    start = draw(st.integers(0, burst))
    n = draw(st.integers(1, 12) | st.integers(1, most))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    sizes = [rnd.randint(1, burst) for _ in range(n)]
    order = rnd.sample(range(n), n)
    k = draw(st.sampled_from([0, 1, 2, n // 2, n - 1, n]) | st.integers(0, n))
    return burst, start, sizes, order[: max(k, 0)], draw(st.booleans())


async def crowd_run(
    make: Make,
    burst: int,
    start: int,
    sizes: list[int],
    cancel_order: list[int],
    batch: bool,
) -> tuple[Snapshot, dict[int, int], Snapshot, set[int]]:
    """Start waiters in order, cancel some in the given order, then run out.

    Returns the snapshot right after the cancellations, the grant time of
    every survivor, the final snapshot and the waiters really cancelled (a
    waiter granted before its turn to be cancelled came is a survivor).
    """
    clock = FakeClock()
    limiter = make(Rate(tokens=7, per=1, burst=burst), clock=clock)
    if start < burst:
        await limiter.record(tokens=burst - start)
    scopes = [anyio.CancelScope() for _ in sizes]
    granted: dict[int, int] = {}
    # callers queue in index order: each starts its acquisition once the one
    # before it has (on a shared store, waiting for every store call one by
    # one would take minutes at 1000 waiters)
    queued = [anyio.Event() for _ in sizes]

    async def caller(i: int) -> None:
        with scopes[i]:
            if i:
                await queued[i - 1].wait()
            # no checkpoint from here until the acquisition is queued (in the
            # store, or in the coalesced store call): the next caller comes after
            queued[i].set()
            await limiter.acquire(sizes[i])
            granted[i] = clock.monotonic_ns()

    async with anyio.create_task_group() as tg:
        for i in range(len(sizes)):
            tg.start_soon(caller, i)
        await settle()
        for i in cancel_order:
            scopes[i].cancel()
            if not batch:
                await settle()
        await settle()
        after_cancel = await limiter.snapshot()
        await settle()  # the snapshot let store calls start: wait for them
        await run_out(clock)
    gone = {i for i in cancel_order if scopes[i].cancelled_caught}
    return after_cancel, granted, await limiter.snapshot(), gone


SHARED_CROWD = 200  # the most waiters of a crowd on a shared store


class TestCancellationProperties:
    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.data())
    async def test_cancelled_waiters_leave_the_limiter_as_if_they_never_came(
        self, make: Make, store_kind: str, data: st.DataObject
    ) -> None:
        # up to 1000 waiters on memory; on a shared store every store call
        # reads and writes the whole queue and each waiter behind the head
        # looks again in real time, so 1000 waiters cost 10-25 s an example:
        # there, 200 (the same paths: batches, abandoned calls, deferred leaves)
        most = 1000 if store_kind == "memory" else SHARED_CROWD
        crowd = data.draw(big_crowds(most), label="crowd")
        burst, start, sizes, cancelled, batch = crowd
        snap, granted, final, gone = await crowd_run(
            make, burst, start, sizes, cancelled, batch
        )
        survivors = [i for i in range(len(sizes)) if i not in gone]
        ref_snap, ref_granted, ref_final, _ = await crowd_run(
            make, burst, start, [sizes[i] for i in survivors], [], batch
        )
        assert set(granted) <= set(survivors), "a cancelled waiter was granted"
        # right after the cancellations: the state of a limiter that never saw them
        assert snap == ref_snap
        assert {i: granted[i] for i in survivors} == {
            i: ref_granted[j] for j, i in enumerate(survivors)
        }
        assert final == ref_final


class _EngineWaiter(Waiter):
    __slots__ = ("ready",)

    def __init__(self) -> None:
        super().__init__()
        self.ready = False

    def arm(self) -> None:
        self.ready = False

    def wake(self) -> None:
        self.ready = True


def engine_run(
    burst: int, start: int, sizes: list[int], cancel_order: list[int], batch: bool
) -> tuple[Snapshot, list[tuple[int, ...]], dict[int, int], set[int]]:
    """The same on the bare engine, with thread-free waiters (fast, N up to 1000)."""
    clock = FakeClock()
    engine = Engine([Rate(tokens=7, per=1, burst=burst)], clock)
    engine.record((burst - start,))
    waiters: dict[int, _EngineWaiter] = {}
    sleeping: dict[_EngineWaiter, int | None] = {}
    granted: dict[int, int] = {}
    tags: dict[_EngineWaiter, int] = {}

    def poll(w: _EngineWaiter) -> None:
        woken, deadline = engine.poll(w)
        for other in woken:
            if other is not w and isinstance(other, Waiter):
                other.wake()
        if w.state == CLAIMED:
            sleeping.pop(w, None)
            granted[tags[w]] = clock.monotonic_ns()
        else:
            assert w.state != FAILED
            sleeping[w] = deadline

    def run_ready() -> None:
        while ready := [w for w in sleeping if w.ready]:
            for w in ready:
                if w in sleeping:
                    poll(w)

    for i, size in enumerate(sizes):
        got = engine.begin((size,), None, _EngineWaiter)
        if type(got) is int:
            granted[i] = clock.monotonic_ns()
            continue
        assert isinstance(got, _EngineWaiter)
        waiters[i] = got
        tags[got] = i
        poll(got)
        run_ready()
    gone = set()
    for i in cancel_order:
        w = waiters.get(i)
        if w is not None and w in sleeping:
            gone.add(i)
            del sleeping[w]
            for other in engine.abort(w):
                if isinstance(other, Waiter):
                    other.wake()
            if not batch:
                run_ready()
    run_ready()
    after_cancel = engine.snapshot()
    queue = [w.req for w in engine.queue]
    while deadlines := [d for d in sleeping.values() if d is not None]:
        advance_to_ns(clock, max(min(deadlines), clock.monotonic_ns()))
        for w, d in sleeping.items():
            if d is not None and d <= clock.monotonic_ns():
                w.ready = True
        run_ready()
    assert not sleeping, "a waiter was left with nobody to wake it"
    return after_cancel, queue, granted, gone


class TestCancellationPropertiesOnTheEngine:
    @settings(max_examples=100, deadline=None)
    @given(big_crowds())
    def test_any_subset_of_1000_waiters_cancelled_in_any_order_leaves_no_trace(
        self, crowd: Crowd
    ) -> None:
        burst, start, sizes, cancelled, batch = crowd
        snap, queue, granted, gone = engine_run(burst, start, sizes, cancelled, batch)
        survivors = [i for i in range(len(sizes)) if i not in gone]
        ref_snap, ref_queue, ref_granted, _ = engine_run(
            burst, start, [sizes[i] for i in survivors], [], batch
        )
        assert snap == ref_snap
        assert queue == ref_queue
        assert set(granted) <= set(survivors), "a cancelled waiter was granted"
        assert {i: granted[i] for i in survivors} == {
            i: ref_granted[j] for j, i in enumerate(survivors)
        }
