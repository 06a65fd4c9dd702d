"""The system clock's timers and timed waits.

``SystemClock.schedule`` is asyncio's ``loop.call_at``; waiters rely on it
to be woken at their turn, never before it. trio has no ``call_at``: there
``schedule`` returns ``None`` and the waiter sets its own deadline. These
tests use the real clock with short deadlines; they assert order and
"never early", and only a loose bound on lateness (a loaded machine may be
late, never early).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

from ratebudget import SystemClock

MS = 1_000_000
LATE = 2.0  # seconds: lateness that would mean the timer never fired


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.done = anyio.Event()

    def callback(self, name: str, last: bool = False) -> Callable[[], None]:
        def call() -> None:
            self.calls.append((name, time.monotonic_ns()))
            if last:
                self.done.set()

        return call


@pytest.fixture
def asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("trio has no call_at: schedule() returns None there")


@pytest.mark.usefixtures("asyncio_only")
class TestSchedule:
    async def test_calls_come_in_deadline_order_and_never_early(self) -> None:
        clock = SystemClock()
        rec = Recorder()
        now = time.monotonic_ns()
        deadlines = {"c": now + 60 * MS, "a": now + 20 * MS, "b": now + 40 * MS}
        for name in ("c", "a", "b"):  # the earliest added after a later one
            cancel = clock.schedule(
                deadlines[name], rec.callback(name, last=name == "c")
            )
            assert cancel is not None
        with anyio.fail_after(LATE):
            await rec.done.wait()
        assert [name for name, _ in rec.calls] == ["a", "b", "c"]
        for name, at in rec.calls:
            assert at >= deadlines[name], f"{name} fired early"

    async def test_a_cancelled_call_never_comes(self) -> None:
        clock = SystemClock()
        rec = Recorder()
        now = time.monotonic_ns()
        cancel = clock.schedule(now + 10 * MS, rec.callback("cancelled"))
        assert cancel is not None
        clock.schedule(now + 30 * MS, rec.callback("kept", last=True))
        cancel()
        with anyio.fail_after(LATE):
            await rec.done.wait()
        assert [name for name, _ in rec.calls] == ["kept"]

    async def test_a_deadline_already_passed_is_called_soon(self) -> None:
        clock = SystemClock()
        rec = Recorder()
        clock.schedule(time.monotonic_ns() - 5 * MS, rec.callback("past", last=True))
        with anyio.fail_after(LATE):
            await rec.done.wait()
        assert [name for name, _ in rec.calls] == ["past"]


class TestNothingToScheduleOn:
    def test_outside_an_event_loop(self) -> None:
        assert SystemClock().schedule(time.monotonic_ns(), lambda: None) is None

    async def test_on_trio(self, anyio_backend: str) -> None:
        cancel = SystemClock().schedule(time.monotonic_ns(), lambda: None)
        assert (cancel is None) == (anyio_backend == "trio")
        if cancel is not None:
            cancel()


class TestTimedWait:
    async def test_a_wait_ends_at_its_deadline_not_before(self) -> None:
        clock = SystemClock()
        deadline = time.monotonic_ns() + 30 * MS
        with anyio.fail_after(LATE):
            await clock.wait(anyio.Event(), deadline)
        assert time.monotonic_ns() >= deadline

    async def test_a_wait_ends_when_its_event_is_set(self) -> None:
        clock = SystemClock()
        event = anyio.Event()
        start = time.monotonic_ns()
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.wait, event, start + 10_000 * MS)  # 10 s away
            await anyio.sleep(0.01)
            event.set()
        assert time.monotonic_ns() - start < 5_000 * MS
