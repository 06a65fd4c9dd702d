"""``FakeClock`` under threads: a sleep that starts while another thread
advances time is never lost.

A thread's timed wait reads the time, then registers its deadline; an
``advance`` that lands between the two used to wake the sleepers due
before the new one was registered, and the new one, already due, then slept
forever (a sync waiter on a fake clock hung: the suite saw it once in
``test_a_thread_and_a_task_share_one_first_come_first_served_queue``).
(Tasks wait on their own loop's events, which only that loop's thread may
set: their clock is advanced from that thread, where the race cannot
happen.) ``Racing`` makes that interleaving certain: the first time the clock
compares the deadline with its time, it advances the clock past it from
another thread, before the comparison answers.
"""

from __future__ import annotations

import threading

import pytest

from ratebudget.testing import FakeClock

NS = 1_000_000_000
JOIN = 5.0  # seconds: a wait still blocked after this is lost


class Racing(int):
    """A deadline whose first ``<=`` lets another thread advance ``clock``
    past it (waiting at most 0.2 s for that thread: a clock that holds its
    lock while it compares would block it), then answers as before."""

    clock: FakeClock
    fired = False

    def __le__(self, other: object) -> bool:
        answer = int(self) <= other  # type: ignore[operator]
        if not self.fired:
            self.fired = True
            t = threading.Thread(target=self.clock.advance, args=(1.0,))
            t.start()
            t.join(0.2)
        return answer


def racing(clock: FakeClock, at: int) -> Racing:
    deadline = Racing(at)
    deadline.clock = clock
    return deadline


def test_a_threads_wait_is_not_lost_to_an_advance_as_it_starts() -> None:
    clock = FakeClock()
    event = threading.Event()
    done = threading.Event()

    def sleeper() -> None:
        clock.wait_until(event, racing(clock, NS // 2))
        done.set()

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    assert done.wait(JOIN), "the wait missed the advance and sleeps forever"
    assert clock.monotonic_ns() == NS
    assert clock.sleepers == 0


@pytest.mark.parametrize("deadline", [0, NS // 2])
def test_a_wait_already_due_returns_at_once(deadline: int) -> None:
    clock = FakeClock()
    clock.advance(0.5)
    clock.wait_until(threading.Event(), deadline)  # never set: due already
    assert clock.sleepers == 0
