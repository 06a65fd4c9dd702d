"""The workloads: each runs one peer on one backend and returns numbers.

Every function here is called inside ``anyio.run`` (or, for threads, starts
its own) and measures one thing once; ``run.py`` repeats, interleaves and
summarizes. Times are ``time.perf_counter()`` (wall) and
``time.process_time()`` (CPU of the whole process).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from benchmarks.peers import Acquirer, Peer
from benchmarks.stats import max_in_window

__all__ = (
    "AccuracyResult",
    "CancelResult",
    "ContendedResult",
    "FairnessResult",
    "ThreadsResult",
    "accuracy",
    "cancellation",
    "contended",
    "fairness",
    "sync_threads",
    "uncontended",
)

INFINITE_RATE = 1e12
INFINITE_BURST = 10**12


# -- 1. uncontended ------------------------------------------------------------------


async def uncontended(peer: Peer, n: int) -> float:
    """ns per ``async with`` of the peer's idiomatic acquisition, one task."""
    assert peer.hot is not None
    factory = peer.hot(peer.make(INFINITE_RATE, INFINITE_BURST))
    for _ in range(min(n, 1000)):  # warm up (caches, specializing interpreter)
        async with factory():
            pass
    start = time.perf_counter()
    for _ in range(n):
        async with factory():
            pass
    return (time.perf_counter() - start) / n * 1e9


# -- 2. contended ---------------------------------------------------------------------


@dataclass(frozen=True)
class ContendedResult:
    wall: float  # seconds from the start signal to the last grant
    cpu: float  # process CPU seconds over the same stretch
    base_cpu: float  # the same for tasks that skip the acquisition
    finished: bool  # False: stopped at the time limit

    def cpu_per_grant_us(self, n: int) -> float:
        return (self.cpu - self.base_cpu) / n * 1e6


async def _start_together(
    n: int, work: Callable[[], Awaitable[None]], limit_s: float
) -> tuple[float, float, int]:
    """Spawn ``n`` tasks that wait for one signal, then run ``work`` each.

    Returns (wall, CPU) from the signal until every task is done, and how
    many finished: spawning is not timed, and every task arrives at once.
    """
    start, all_ready, all_done = anyio.Event(), anyio.Event(), anyio.Event()
    ready = done = 0
    wall = cpu = math.nan

    async def one() -> None:
        nonlocal ready, done
        ready += 1
        if ready == n:
            all_ready.set()
        await start.wait()
        await work()
        done += 1
        if done == n:
            all_done.set()

    with anyio.move_on_after(limit_s + 60):
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
            await all_ready.wait()
            with anyio.move_on_after(limit_s):
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                start.set()
                await all_done.wait()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            tg.cancel_scope.cancel()
    return wall, cpu, done


async def contended(
    peer: Peer, n: int, rate: float, burst: int, limit_s: float
) -> ContendedResult:
    """``n`` tasks, one acquisition each, all released at once."""

    async def nothing() -> None:
        await anyio.lowlevel.checkpoint()

    _, base_cpu, _ = await _start_together(n, nothing, limit_s)
    acq = peer.make(rate, burst)
    wall, cpu, done = await _start_together(n, acq.acquire, limit_s)
    return ContendedResult(wall, cpu, base_cpu, finished=done == n)


def _stamping(
    acq: Acquirer, end: float, stamps: list[float]
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A task body: acquire 1 unit at a time until ``end``, noting each grant."""

    async def loop() -> None:
        while True:
            await acq.acquire(1)
            now = time.perf_counter()
            if now > end:
                return
            stamps.append(now)  # list.append is atomic across threads

    return loop


# -- 3. accuracy ----------------------------------------------------------------------


@dataclass(frozen=True)
class AccuracyResult:
    grants: int
    duration: float
    rate: float
    burst: int
    max_window: int  # most grants in any 100 ms window
    window: float = 0.1

    @property
    def achieved_ratio(self) -> float:
        """Grants beyond the initial burst, per second, over the configured rate."""
        return (self.grants - self.burst) / self.duration / self.rate

    @property
    def window_bound(self) -> float:
        return self.burst + self.rate * self.window


async def accuracy(
    peer: Peer, tasks: int, rate: float, burst: int, duration: float
) -> AccuracyResult:
    """``tasks`` tasks acquire 1 unit in a loop for ``duration`` seconds."""
    stamps: list[float] = []
    loop = _stamping(peer.make(rate, burst), time.perf_counter() + duration, stamps)
    with anyio.move_on_after(duration + 1.0):
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(loop)
            await anyio.sleep(duration)
            tg.cancel_scope.cancel()
    return AccuracyResult(
        grants=len(stamps),
        duration=duration,
        rate=rate,
        burst=burst,
        max_window=max_in_window(stamps, 0.1),
    )


# -- 4. fairness ----------------------------------------------------------------------


@dataclass(frozen=True)
class FairnessResult:
    first_big: float | None  # seconds until the big task was first served
    big_share: float  # the big task's share of all units granted
    expected_first: float  # when FIFO serves it


async def fairness(
    peer: Peer, small: int, big: int, rate: float, burst: int, duration: float
) -> FairnessResult:
    """``small`` tasks wanting 1 unit in a loop, then one wanting ``big``."""
    acq = peer.make(rate, burst)
    start = time.perf_counter()
    end = start + duration
    units = {"small": 0, "big": 0}
    first_big: list[float] = []

    async def loop(kind: str, n: int) -> None:
        while True:
            await acq.acquire(n)
            now = time.perf_counter()
            if now > end:
                return
            units[kind] += n
            if kind == "big" and not first_big:
                first_big.append(now - start)

    with anyio.move_on_after(duration + 1.0):
        async with anyio.create_task_group() as tg:
            for _ in range(small):
                tg.start_soon(loop, "small", 1)
            await anyio.lowlevel.checkpoint()  # the small ones queue first
            tg.start_soon(loop, "big", big)
            await anyio.sleep(duration)
            tg.cancel_scope.cancel()
    total = units["small"] + units["big"]
    # FIFO, with small <= burst: each small task takes its first unit from
    # the burst and queues again before the big task arrives; what is left of
    # the burst goes to them, the bucket refills the rest, then the big one
    expected = max(0.0, 2 * small + big - burst) / rate
    return FairnessResult(
        first_big=first_big[0] if first_big else None,
        big_share=units["big"] / total if total else 0.0,
        expected_first=expected,
    )


# -- 5. cancellation --------------------------------------------------------------------


# A burst above 1 so that a timer firing a little late costs no capacity
# (with a burst of 1, every late wake-up loses rate x lateness, cancellation
# or not): what is measured is what cancellation costs.
_CANCEL_BURST = 10


@dataclass(frozen=True)
class CancelResult:
    lost: float  # units of capacity lost (negative: over-granted)
    survivors_rate: float  # grants per second after the cancellation
    rate: float
    finished: bool


async def cancellation(
    peer: Peer, waiters: int, rate: float, cancel_at: float, limit_s: float
) -> CancelResult:
    """``waiters`` on a drained bucket; half of those still waiting are
    cancelled at ``cancel_at``; the rest must be served at the full rate."""
    acq = peer.make(rate, _CANCEL_BURST)
    for _ in range(_CANCEL_BURST):  # drain the bucket
        await acq.acquire(1)
    start = time.perf_counter()
    granted: list[float] = []
    scopes: list[anyio.CancelScope] = []
    waiting: set[int] = set()

    async def waiter(i: int, scope: anyio.CancelScope) -> None:
        with scope:
            waiting.add(i)
            await acq.acquire(1)
            waiting.discard(i)
            granted.append(time.perf_counter())

    with anyio.move_on_after(limit_s):
        async with anyio.create_task_group() as tg:
            for i in range(waiters):
                scope = anyio.CancelScope()
                scopes.append(scope)
                tg.start_soon(waiter, i, scope)
            await anyio.sleep(cancel_at)
            cut = time.perf_counter()
            cancelled = 0
            for k, i in enumerate(sorted(waiting)):
                if k % 2 == 0:
                    scopes[i].cancel()
                    cancelled += 1
    after = sorted(t for t in granted if t > cut)
    finished = len(granted) + cancelled == waiters
    last = max(granted, default=start)
    # at the full rate the bucket serves rate x elapsed units from the drain
    lost = (last - start) * rate - len(granted)
    survivors = (
        (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else math.nan
    )
    return CancelResult(lost, survivors, rate, finished)


# -- 6. threads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadsResult:
    grants: int
    duration: float
    rate: float
    burst: int
    max_window: int
    errors: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.grants / self.duration

    @property
    def achieved_ratio(self) -> float:
        return (self.grants - self.burst) / self.duration / self.rate


def sync_threads(
    acquire: Callable[[int], None],
    threads: int,
    rate: float,
    burst: int,
    duration: float,
) -> ThreadsResult:
    """``threads`` plain threads call the blocking ``acquire(1)`` in a loop."""
    stamps: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    end = start + duration

    def loop() -> None:
        try:
            while True:
                acquire(1)
                now = time.perf_counter()
                if now > end:
                    return
                stamps.append(now)  # list.append is atomic
        except Exception as exc:  # reported, not raised in a thread
            errors.append(repr(exc))

    _run_threads([threading.Thread(target=loop) for _ in range(threads)], duration)
    return ThreadsResult(
        len(stamps), duration, rate, burst, max_in_window(stamps, 0.1), errors
    )


def _run_threads(pool: list[threading.Thread], duration: float) -> None:
    for t in pool:
        t.start()
    for t in pool:
        t.join(duration + 30)


def loop_threads(
    make: Callable[[], Acquirer],
    backends: list[str],
    tasks: int,
    rate: float,
    burst: int,
    duration: float,
) -> ThreadsResult:
    """One thread per backend in ``backends``, each running its own event
    loop with ``tasks`` tasks, all acquiring from one shared acquirer."""
    stamps: list[float] = []
    errors: list[str] = []
    task = _stamping(make(), time.perf_counter() + duration, stamps)

    async def loop_main() -> None:
        with anyio.move_on_after(duration + 5):
            async with anyio.create_task_group() as tg:
                for _ in range(tasks):
                    tg.start_soon(task)

    def thread_main(backend: str) -> None:
        try:
            anyio.run(loop_main, backend=backend)
        except Exception as exc:  # reported, not raised in a thread
            errors.append(repr(exc))

    _run_threads(
        [threading.Thread(target=thread_main, args=(b,)) for b in backends], duration
    )
    return ThreadsResult(
        len(stamps), duration, rate, burst, max_in_window(stamps, 0.1), errors
    )
