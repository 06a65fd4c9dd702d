"""The pure bucket arithmetic (``ratebudget._bucket``): exact, clamped, causal.

Levels are integers in unit-nanoseconds, the refill rate is the limit (unit-ns
per ns), so every quantity is an exact integer. These tests pin down the
two functions the memory store, and later SQLite and Redis, rely on, and
check through a ``Limiter`` on a ``FakeClock`` that no drift creeps in.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ratebudget import Limiter, Rate
from ratebudget._decide import refill
from ratebudget._decide import wait_ticks as wait_ns
from ratebudget.testing import FakeClock

NS = 1_000_000_000

levels = st.integers(-(10**30), 10**30)
times = st.integers(0, 10**20)
rates = st.integers(1, 10**15)
capacities = st.integers(1, 10**30)


class TestRefill:
    @given(levels, times, st.integers(0, 10**12), rates, capacities)
    def test_refill_adds_rate_times_elapsed_exactly_below_capacity(
        self, level: int, last: int, elapsed: int, rate: int, capacity: int
    ) -> None:
        now = last + elapsed
        got = refill(level, last, now, rate, capacity)
        assert type(got) is int
        if level < capacity:
            assert got == min(level + rate * elapsed, capacity)
        else:
            assert got == level

    @given(levels, times, st.integers(0, 10**12), rates, capacities)
    def test_refill_never_fills_past_capacity(
        self, level: int, last: int, elapsed: int, rate: int, capacity: int
    ) -> None:
        got = refill(level, last, last + elapsed, rate, capacity)
        assert got <= max(level, capacity)
        assert got >= level

    @given(levels, times, st.integers(1, 10**12), rates, capacities)
    def test_time_going_backwards_mints_nothing(
        self, level: int, last: int, back: int, rate: int, capacity: int
    ) -> None:
        assert refill(level, last, last - back, rate, capacity) == level

    @given(levels, times, rates, capacities)
    def test_no_elapsed_time_mints_nothing(
        self, level: int, last: int, rate: int, capacity: int
    ) -> None:
        assert refill(level, last, last, rate, capacity) == level

    @given(
        levels, times, st.integers(0, 10**12), st.integers(0, 10**12), rates, capacities
    )
    def test_refilling_in_two_steps_equals_one_step(
        self, level: int, t0: int, d1: int, d2: int, rate: int, capacity: int
    ) -> None:
        """Path independence: however often the state is touched, no drift."""
        t1, t2 = t0 + d1, t0 + d1 + d2
        two = refill(refill(level, t0, t1, rate, capacity), t1, t2, rate, capacity)
        assert two == refill(level, t0, t2, rate, capacity)

    @given(levels, levels, times, st.integers(0, 10**12), rates, capacities)
    def test_refill_is_monotone_in_the_level(
        self, a: int, b: int, last: int, elapsed: int, rate: int, capacity: int
    ) -> None:
        lo, hi = sorted((a, b))
        now = last + elapsed
        assert refill(lo, last, now, rate, capacity) <= refill(
            hi, last, now, rate, capacity
        )

    def test_debt_is_paid_off_by_refill(self) -> None:
        # 3 units per ns, 10 ns: -20 becomes +10
        assert refill(-20, 5, 15, 3, 100) == 10

    def test_full_bucket_is_clamped_exactly_at_capacity(self) -> None:
        assert refill(99, 0, 1, 7, 100) == 100
        assert refill(100, 0, 10**9, 7, 100) == 100

    def test_huge_values_stay_exact(self) -> None:
        """A float would lose the last unit here; integers do not."""
        level = 10**30 + 1
        assert refill(level, 0, 10**12, 3, 10**31) == level + 3 * 10**12


class TestWaitNs:
    @given(levels, st.integers(0, 10**30), rates)
    def test_wait_is_the_shortest_integer_wait_that_suffices(
        self, level: int, need: int, rate: int
    ) -> None:
        w = wait_ns(level, need, rate)
        assert type(w) is int
        assert w >= 0
        assert level + rate * w >= need
        if w > 0:
            assert level + rate * (w - 1) < need

    @given(levels, rates)
    def test_no_wait_when_the_level_already_holds_the_need(
        self, level: int, rate: int
    ) -> None:
        assert wait_ns(level, level, rate) == 0
        assert wait_ns(level, level - 1, rate) == 0

    @given(levels, st.integers(0, 10**20), times, rates, capacities)
    def test_after_the_wait_a_refill_holds_the_need(
        self, level: int, need: int, last: int, rate: int, capacity: int
    ) -> None:
        need = min(need, capacity)
        w = wait_ns(level, need, rate)
        assert refill(level, last, last + w, rate, capacity) >= need

    def test_wait_rounds_up_to_the_next_nanosecond(self) -> None:
        # 10 units at 3 per ns: 4 ns (3 ns give only 9)
        assert wait_ns(0, 10, 3) == 4
        assert wait_ns(1, 10, 3) == 3

    def test_debt_lengthens_the_wait(self) -> None:
        assert wait_ns(-6, 3, 3) == 3
        assert wait_ns(-6, 3, 3) > wait_ns(0, 3, 3)


class TestNoDriftThroughTheLimiter:
    @settings(max_examples=50, deadline=None)
    @given(
        st.integers(1, 1000),
        st.sampled_from([1, 3, 7, 60, 0.3]),
        st.lists(st.integers(1, 3 * NS), min_size=1, max_size=40),
    )
    def test_tokens_after_many_odd_steps_match_the_exact_formula(
        self, limit: int, per: float, steps: list[int]
    ) -> None:
        """Empty the bucket, let time pass in odd nanosecond steps: the tokens
        shown are exactly floor(limit * elapsed / per), capped at the burst.
        """
        clock = FakeClock()
        rate = Rate(tokens=limit, per=per)
        per_ns = rate._per_ns
        limiter = Limiter(rate, clock=clock)
        limiter.sync.record(tokens=limit)
        elapsed = 0
        for step in steps:
            seconds = step / NS
            clock.advance(seconds)
            elapsed = clock.monotonic_ns()
            tokens = limiter.sync.snapshot().limits[0].tokens
            assert tokens == min(limit, limit * elapsed // per_ns)

    def test_a_third_of_a_token_per_second_is_not_lost_to_rounding(self) -> None:
        clock = FakeClock()
        limiter = Limiter(Rate(tokens=1, per=3), clock=clock)
        limiter.sync.record(tokens=1)
        for _ in range(3):
            clock.advance(1)
        assert limiter.sync.snapshot().limits[0].tokens == 1
