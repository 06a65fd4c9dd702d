"""One limiter shared across tasks, event loops and threads.

The rate bound (contract 2) holds for many tasks of one loop, for four
threads each running its own event loop (asyncio, trio, or both at once) and
for eight plain threads through ``limiter.sync``; nobody deadlocks; plain
threads are served first come, first served (contract 3); a waiter is woken
by a commit made in another thread or loop. Also the blocking facade itself:
``with limiter.sync.acquire(...) as lease``, commit, release, try_acquire,
record, and what leaving the block by an exception does.

The bound tests run on the real clock for half a second at 200 tokens per
second, with honest tolerances; everything else runs on a ``FakeClock``.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal

import anyio
import pytest

from conftest import Make
from helpers import NS, settle
from ratebudget import (
    AcquireTimeout,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
    SyncLease,
)
from ratebudget.stores.memory import BiasedLock
from ratebudget.testing import FakeClock, store_busy

RATE = 200  # tokens per second
BURST = 20
RUN_FOR = 0.4  # seconds of real time per bound test
JOIN = 10.0  # seconds before a thread is declared deadlocked


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds (a bounded wait on a fact, not a nap)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never came true")
        time.sleep(0.0005)


def grants_reach(order: list[int], n: int) -> bool:
    return len(order) == n


def check_bound(granted: int, started: float, ended: float) -> None:
    """Contract 2 over the whole run, and progress past the burst (the
    bucket refilled and was drawn again: nobody deadlocked). How much past
    it depends on the machine's load, so no wall-clock floor: throughput
    is the benchmarks' to measure."""
    elapsed = ended - started
    assert granted <= BURST + RATE * elapsed + 1e-9, (granted, elapsed)
    assert granted > BURST, f"only {granted} granted in {elapsed:.3f}s"


def shared_limiter(make: Make) -> Limiter:
    return make(Rate(tokens=RATE, per=1, burst=BURST))


def time_left(deadline: float, count: list[int]) -> float:
    """Seconds left to take tokens: until ``deadline`` (``time.monotonic()``)
    and, should the burst not have been passed by then (a loaded machine,
    slow to open a store, say), on until it is, for at most ``JOIN / 2``
    more: a slow start is not a deadlock."""
    now = time.monotonic()
    if len(count) > BURST:
        return deadline - now
    return deadline + JOIN / 2 - now


async def take_until(limiter: Limiter, deadline: float, count: list[int]) -> None:
    """Acquire 1 token at a time while ``time_left``."""
    while (left := time_left(deadline, count)) > 0:
        with anyio.move_on_after(left):
            await limiter.acquire(1)
            count.append(1)  # list.append is atomic across threads


class TestRateBoundAcrossTasksLoopsAndThreads:
    async def test_many_tasks_of_one_loop_stay_within_the_rate(
        self, make: Make
    ) -> None:
        started = time.monotonic()
        limiter = shared_limiter(make)
        count: list[int] = []
        with anyio.fail_after(JOIN):
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(take_until, limiter, started + RUN_FOR, count)
        check_bound(len(count), started, time.monotonic())
        await settle()  # the leaves of callers cancelled mid store call land
        assert (await limiter.snapshot()).waiting == 0

    @pytest.mark.parametrize(
        "backends",
        [("asyncio",) * 4, ("trio",) * 4, ("asyncio", "trio", "asyncio", "trio")],
        ids=["asyncio", "trio", "mixed"],
    )
    def test_four_threads_each_with_its_own_loop_stay_within_the_rate(
        self, make: Make, backends: tuple[str, ...]
    ) -> None:
        started = time.monotonic()
        limiter = shared_limiter(make)
        count: list[int] = []
        errors: list[BaseException] = []

        async def loop_main() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(take_until, limiter, started + RUN_FOR, count)

        def thread_main(backend: str) -> None:
            try:
                anyio.run(loop_main, backend=backend)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=thread_main, args=(b,)) for b in backends]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN)
        assert not any(t.is_alive() for t in threads), "a thread deadlocked"
        if errors:  # its whole traceback, causes included
            raise errors[0]
        check_bound(len(count), started, time.monotonic())
        # a caller cancelled while its store call was on its way leaves when
        # the answer lands (on a shared store, after its loop may have ended)
        wait_for(lambda: not store_busy(limiter))
        assert limiter.sync.snapshot().waiting == 0

    def test_eight_plain_threads_through_sync_stay_within_the_rate(
        self, make: Make
    ) -> None:
        started = time.monotonic()
        limiter = shared_limiter(make)
        count: list[int] = []
        errors: list[BaseException] = []

        def thread_main() -> None:
            try:
                while (left := time_left(started + RUN_FOR, count)) > 0:
                    try:
                        with limiter.sync.acquire(1, timeout=left):
                            count.append(1)
                    except AcquireTimeout:
                        return
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=thread_main) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN)
        assert not any(t.is_alive() for t in threads), "a thread deadlocked"
        if errors:  # its whole traceback, causes included
            raise errors[0]
        check_bound(len(count), started, time.monotonic())
        assert limiter.sync.snapshot().waiting == 0


class TestSyncWaitersAreServedInOrder:
    def test_plain_threads_are_served_first_come_first_served(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1, burst=1), clock=clock)
        limiter.sync.acquire(1)  # empty: one token every 0.1 s from now
        order: list[int] = []

        def worker(i: int) -> None:
            limiter.sync.acquire(1)
            order.append(i)

        threads = []
        for i in range(8):
            thread = threading.Thread(target=worker, args=(i,), daemon=True)
            thread.start()
            threads.append(thread)
            wait_for(lambda: limiter.sync.snapshot().waiting == len(threads))
        for i in range(8):
            clock.advance(0.1)  # exactly one more token: one more grant
            wait_for(functools.partial(grants_reach, order, i + 1))
            assert order == list(range(i + 1))
        for thread in threads:
            thread.join(JOIN)
        assert not any(t.is_alive() for t in threads)

    def test_a_large_sync_request_is_not_starved_by_small_ones(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        limiter.sync.acquire(5)
        order: list[str] = []

        def worker(name: str, tokens: int) -> None:
            limiter.sync.acquire(tokens)
            order.append(name)

        threads = []
        for name, tokens in [("big", 10), ("small1", 1), ("small2", 1)]:
            thread = threading.Thread(target=worker, args=(name, tokens), daemon=True)
            thread.start()
            threads.append(thread)
            wait_for(lambda: limiter.sync.snapshot().waiting == len(threads))
        assert order == []  # the small ones fit in the 5 left, yet wait their turn
        clock.advance(0.5)
        wait_for(lambda: order == ["big"])
        clock.advance(0.1)
        wait_for(lambda: order == ["big", "small1"])
        clock.advance(0.1)
        for thread in threads:
            thread.join(JOIN)
        assert order == ["big", "small1", "small2"]

    async def test_a_thread_and_a_task_share_one_first_come_first_served_queue(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        await limiter.acquire(5)
        granted: dict[str, int] = {}

        def thread_caller() -> None:
            limiter.sync.acquire(10)
            granted["thread"] = clock.monotonic_ns()

        async def task_caller() -> None:
            await limiter.acquire(1)  # fits in the 5 left, but came second
            granted["task"] = clock.monotonic_ns()

        thread = threading.Thread(target=thread_caller)
        thread.start()
        await anyio.to_thread.run_sync(
            wait_for, lambda: limiter.sync.snapshot().waiting == 1
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(task_caller)
            await settle()
            assert granted == {}
            clock.advance(0.5)
            await anyio.to_thread.run_sync(thread.join, JOIN)
            assert granted == {"thread": NS // 2}
            await settle()  # the task, now the head, has learnt its time
            clock.advance(0.1)
        assert granted == {"thread": NS // 2, "task": 6 * NS // 10}


class TestCrossThreadWakeUp:
    async def test_a_waiter_is_woken_by_a_commit_in_another_threads_loop(
        self, make: Make, anyio_backend: str
    ) -> None:
        """Fake time never moves: only the other thread's refund can wake it."""
        other = "trio" if anyio_backend == "asyncio" else "asyncio"
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        holder = await limiter.acquire(10)
        granted = anyio.Event()

        async def waiter() -> None:
            await limiter.acquire(5)
            granted.set()

        def commit_in_another_loop() -> None:
            anyio.run(functools.partial(holder.commit, tokens=4), backend=other)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await settle()
            assert (await limiter.snapshot()).waiting == 1
            started = time.monotonic()
            await anyio.to_thread.run_sync(commit_in_another_loop)  # 6 back
            with anyio.fail_after(5):
                await granted.wait()
            assert time.monotonic() - started < 5
        assert clock.monotonic_ns() == 0
        assert (await limiter.snapshot()).limits[0].tokens == 1

    async def test_a_waiter_is_woken_by_a_plain_thread_commit(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        holder = limiter.sync.acquire(10)
        granted = anyio.Event()

        async def waiter() -> None:
            await limiter.acquire(5)
            granted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await settle()
            thread = threading.Thread(target=holder.commit, kwargs={"tokens": 0})
            thread.start()
            with anyio.fail_after(5):
                await granted.wait()
            await anyio.to_thread.run_sync(thread.join, JOIN)
        assert (await limiter.snapshot()).limits[0].tokens == 5

    async def test_a_sync_waiter_is_woken_by_a_commit_from_an_event_loop(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        holder = await limiter.acquire(10)
        got: list[SyncLease] = []
        thread = threading.Thread(target=lambda: got.append(limiter.sync.acquire(5)))
        thread.start()
        await anyio.to_thread.run_sync(
            wait_for, lambda: limiter.sync.snapshot().waiting == 1
        )
        await holder.commit(tokens=3)  # 7 back
        await anyio.to_thread.run_sync(thread.join, JOIN)
        assert not thread.is_alive()
        assert len(got) == 1
        assert (await limiter.snapshot()).limits[0].tokens == 2


class TestSyncFacade:
    def test_with_block_commits_the_real_usage(self, make: Make) -> None:
        limiter = make(Rate(tokens=100, per=1), Cap(usd="1"), clock=FakeClock())
        with limiter.sync.acquire(50, usd="0.2") as lease:
            assert lease.amounts == {"tokens": 50, "usd": Decimal("0.2"), "requests": 1}
            assert limiter.sync.snapshot().limits[1].reserved == Decimal("0.2")
            lease.commit(tokens=30, usd="0.15")
        assert lease.settled
        snap = limiter.sync.snapshot()
        assert snap.limits[0].tokens == 70
        assert snap.limits[1].used == Decimal("0.15")
        assert snap.limits[1].reserved == 0

    def test_leaving_the_block_normally_commits_the_estimate(self, make: Make) -> None:
        limiter = make(Rate(tokens=100, per=1), Cap(usd="1"), clock=FakeClock())
        with limiter.sync.acquire(50, usd="0.2"):
            pass
        snap = limiter.sync.snapshot()
        assert snap.limits[0].tokens == 50
        assert snap.limits[1].used == Decimal("0.2")
        assert snap.limits[1].reserved == 0

    def test_leaving_the_block_by_an_exception_releases_caps_and_keeps_tokens(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=100, per=1), Cap(usd="1"), clock=FakeClock())
        with pytest.raises(KeyError), limiter.sync.acquire(50, usd="0.2"):
            raise KeyError("the call failed")
        snap = limiter.sync.snapshot()
        assert snap.limits[0].tokens == 50
        assert snap.limits[1].used == 0
        assert snap.limits[1].reserved == 0

    def test_release_is_idempotent_and_a_settled_lease_cannot_commit(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=100, per=1), Cap(usd="1"), clock=FakeClock())
        lease = limiter.sync.acquire(10, usd="0.2")
        lease.release()
        lease.release()
        with pytest.raises(InvalidRequest):
            lease.commit(tokens=5)
        snap = limiter.sync.snapshot()
        assert snap.limits[0].tokens == 90
        assert snap.limits[1].reserved == 0
        assert snap.limits[1].used == 0

    def test_a_commit_in_the_block_is_not_repeated_on_exit(self, make: Make) -> None:
        limiter = make(Rate(tokens=100, per=1), Cap(usd="1"), clock=FakeClock())

        def call() -> None:
            with limiter.sync.acquire(10, usd="0.2") as lease:
                lease.commit(usd="0.05")
                raise KeyError("after the commit")

        with pytest.raises(KeyError):
            call()
        snap = limiter.sync.snapshot()
        assert snap.limits[1].used == Decimal("0.05")
        assert snap.limits[1].reserved == 0

    def test_try_acquire_returns_a_lease_or_none_without_taking(
        self, make: Make
    ) -> None:
        limiter = make(Rate(tokens=10, per=1), clock=FakeClock())
        lease = limiter.sync.try_acquire(8)
        assert isinstance(lease, SyncLease)
        before = limiter.sync.snapshot()
        assert limiter.sync.try_acquire(3) is None
        assert limiter.sync.snapshot() == before

    def test_record_puts_the_rate_into_debt_without_blocking(self, make: Make) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        limiter.sync.record(tokens=14)
        assert limiter.sync.snapshot().limits[0].tokens == -4
        assert clock.sleepers == 0

    def test_a_blocked_sync_acquire_returns_when_fake_time_refills(
        self, make: Make
    ) -> None:
        clock = FakeClock()
        limiter = make(Rate(tokens=10, per=1), clock=clock)
        limiter.sync.acquire(10)
        granted_at: list[int] = []

        def worker() -> None:
            limiter.sync.acquire(5)
            granted_at.append(clock.monotonic_ns())

        thread = threading.Thread(target=worker)
        thread.start()
        wait_for(lambda: clock.sleepers == 1)
        clock.advance(0.5)
        thread.join(JOIN)
        assert granted_at == [500_000_000]


class TestBiasedLocking:
    """The memory store's lock: the thread that made it skips the lock on the
    hot path until another thread shows up (``BiasedLock.guard``). Threads are switched every
    microsecond here so that a broken handshake would lose updates.
    """

    @pytest.mark.parametrize("others", [1, 3])
    @pytest.mark.parametrize("attempt", range(4))
    def test_the_owner_and_other_threads_never_grant_more_than_there_is(
        self, others: int, attempt: int
    ) -> None:
        """A third thread arriving after the bias was dropped, while the owner
        was still in its last lock-free section, once slipped in beside it
        (3,015 grants of 3,000); several attempts make such a race show."""
        total = 3_000
        limiter = Limiter(
            Rate(tokens=total, per="hour"), Cap(requests=2 * total), clock=FakeClock()
        )
        granted: list[int] = []
        start = threading.Barrier(others + 1)

        def drain() -> None:
            start.wait()
            n = 0
            while (lease := limiter.sync.try_acquire(1)) is not None:
                lease.commit()
                n += 1
            granted.append(n)

        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=drain) for _ in range(others)]
            for t in threads:
                t.start()
            drain()  # this thread built the limiter: it holds the bias
            for t in threads:
                t.join(JOIN)
        finally:
            sys.setswitchinterval(old)
        assert not any(t.is_alive() for t in threads), "a thread deadlocked"
        assert sum(granted) == total, granted
        snap = limiter.sync.snapshot()
        assert snap.limits[0].tokens == 0
        assert snap.limits[1].used == total
        assert snap.limits[1].reserved == 0

    def test_a_single_thread_keeps_the_bias(self) -> None:
        lock = BiasedLock()
        for _ in range(5):
            biased = lock.enter()
            assert biased
            lock.leave(biased)
        assert lock.owner == threading.get_ident()

    def test_another_thread_drops_the_bias_for_good(self) -> None:
        lock = BiasedLock()
        thread = threading.Thread(target=lambda: lock.leave(lock.enter()))
        thread.start()
        thread.join(JOIN)
        assert lock.owner is None
        biased = lock.enter()
        assert not biased  # the owner locks too from now on
        lock.leave(biased)

    def test_a_thread_arriving_after_the_bias_was_dropped_waits_for_the_owner(
        self,
    ) -> None:
        """The owner is inside its lock-free section (``_busy``) when B drops
        the bias; C, arriving after that, must wait for the owner too, not
        just take the lock that the owner is not holding."""
        lock = BiasedLock()
        lock.busy = True  # as if the owner (this thread) were mid-acquisition
        b_done, c_done = threading.Event(), threading.Event()

        def snapshot_then(done: threading.Event) -> None:
            with lock.guard():
                done.set()

        b = threading.Thread(target=snapshot_then, args=(b_done,))
        b.start()
        wait_for(lambda: lock.owner is None)  # B dropped the bias
        c = threading.Thread(target=snapshot_then, args=(c_done,))
        c.start()
        try:
            assert not c_done.wait(0.2), "C went in beside the owner"
            assert not b_done.is_set()
        finally:
            lock.busy = False  # the owner leaves its section
            b.join(JOIN)
            c.join(JOIN)
        assert b_done.is_set()
        assert c_done.is_set()
