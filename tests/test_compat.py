"""``ratebudget.compat``: the token-budget-py drop-in, over ``Limiter.sync``."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from decimal import Decimal

import pytest

import ratebudget
from ratebudget.compat import BudgetExceeded, BudgetPool, BudgetSnapshot, Reservation


def run_threads(n: int, target: Callable[[], None]) -> None:
    """Run ``target`` in ``n`` threads started together; re-raise any failure."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body() -> None:
        try:
            barrier.wait()
            target()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class TestRecord:
    def test_record_adds_to_both_totals(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        pool.record(tokens=50, usd=0.25)
        pool.record(tokens=10)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (60, 0.25)
        assert (snap.tokens_remaining, snap.usd_remaining) == (40, 0.75)

    def test_record_up_to_exactly_the_cap_is_allowed(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        pool.record(tokens=100, usd=1.0)
        snap = pool.snapshot()
        assert (snap.tokens_remaining, snap.usd_remaining) == (0, 0.0)

    def test_crossing_the_token_cap_raises_and_records_nothing(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        pool.record(tokens=80, usd=0.5)
        with pytest.raises(BudgetExceeded) as info:
            pool.record(tokens=30, usd=0.1)
        assert (info.value.axis, info.value.attempted, info.value.cap) == (
            "tokens",
            110,
            100,
        )
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (80, 0.5)

    def test_crossing_the_usd_cap_raises_and_records_nothing(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        pool.record(tokens=10, usd=0.9)
        with pytest.raises(BudgetExceeded) as info:
            pool.record(tokens=10, usd=0.2)
        assert info.value.axis == "usd"
        assert info.value.cap == 1.0
        assert info.value.attempted == pytest.approx(1.1)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (10, 0.9)

    def test_record_counts_outstanding_reservations(self) -> None:
        pool = BudgetPool(token_cap=100)
        pool.record(tokens=40)
        r = pool.try_reserve(tokens=40)
        with pytest.raises(BudgetExceeded) as info:
            pool.record(tokens=30)
        assert info.value.attempted == 110
        assert (info.value.used, info.value.reserved, info.value.requested) == (
            40,
            40,
            30,
        )
        r.release()
        pool.record(tokens=30)
        assert pool.snapshot().tokens_used == 70

    @pytest.mark.parametrize(
        "amounts",
        [{"tokens": -1}, {"usd": -0.01}, {"usd": float("nan")}, {"usd": "lots"}],
    )
    def test_bad_amounts_raise_value_error_and_record_nothing(
        self, amounts: dict[str, object]
    ) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        with pytest.raises(ValueError, match="non-negative"):
            pool.record(**amounts)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="non-negative"):
            pool.try_reserve(**amounts)  # type: ignore[arg-type]
        assert pool.snapshot().tokens_remaining == 100
        assert pool.snapshot().usd_remaining == 1.0

    def test_budget_exceeded_is_also_the_core_exception(self) -> None:
        pool = BudgetPool(usd_cap="1")
        pool.record(usd="0.9")
        with pytest.raises(ratebudget.BudgetExceeded) as info:
            pool.record(usd="0.2")
        exc = info.value
        assert isinstance(exc, BudgetExceeded)
        assert isinstance(exc, ratebudget.RateBudgetError)
        assert exc.limit == Decimal("1")
        assert exc.used == Decimal("0.9")
        assert exc.requested == Decimal("0.2")
        assert exc.resets_at is None

    def test_message_names_axis_attempt_and_cap(self) -> None:
        pool = BudgetPool(token_cap=100)
        with pytest.raises(BudgetExceeded, match=r"tokens.*150.*100"):
            pool.record(tokens=150)

    def test_budget_exceeded_can_be_raised_by_hand(self) -> None:
        exc = BudgetExceeded("usd", 1.4, 1.0)
        assert (exc.axis, exc.attempted, exc.cap) == ("usd", 1.4, 1.0)
        assert exc.limit == Decimal("1.0")
        assert str(exc) == "budget exceeded on usd: attempted 1.4 > cap 1"


class TestUnboundedAxes:
    def test_no_caps_count_without_limit_and_report_none(self) -> None:
        pool = BudgetPool()
        pool.record(tokens=10**9, usd=10**9)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (10**9, 1e9)
        assert (snap.token_cap, snap.usd_cap) == (None, None)
        assert (snap.tokens_remaining, snap.usd_remaining) == (None, None)

    def test_token_cap_alone_leaves_usd_unbounded(self) -> None:
        pool = BudgetPool(token_cap=100)
        pool.record(tokens=50, usd=1_000_000.0)
        snap = pool.snapshot()
        assert (snap.tokens_remaining, snap.usd_remaining) == (50, None)
        assert snap.usd_used == 1_000_000.0

    def test_usd_cap_alone_leaves_tokens_unbounded(self) -> None:
        pool = BudgetPool(usd_cap=1.0)
        pool.record(tokens=10**9, usd=0.5)
        snap = pool.snapshot()
        assert (snap.tokens_remaining, snap.usd_remaining) == (None, 0.5)
        assert snap.tokens_used == 10**9

    def test_zero_cap_refuses_any_amount_on_its_axis_only(self) -> None:
        pool = BudgetPool(token_cap=0, usd_cap=1.0)
        with pytest.raises(BudgetExceeded) as info:
            pool.record(tokens=1)
        assert (info.value.axis, info.value.attempted, info.value.cap) == (
            "tokens",
            1,
            0,
        )
        pool.record(usd=0.5)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.token_cap, snap.tokens_remaining) == (0, 0, 0)

    @pytest.mark.parametrize("caps", [{"token_cap": -1}, {"usd_cap": -1.0}])
    def test_negative_cap_raises_value_error(self, caps: dict[str, float]) -> None:
        with pytest.raises(ValueError, match="must be >= 0 or None"):
            BudgetPool(**caps)  # type: ignore[arg-type]


class TestReserve:
    def test_reservation_holds_room_but_is_not_used(self) -> None:
        pool = BudgetPool(token_cap=1000, usd_cap=1.0)
        with pool.reserve(tokens=500, usd=0.5) as r:
            snap = pool.snapshot()
            assert (snap.tokens_used, snap.usd_used) == (0, 0.0)
            assert (snap.tokens_remaining, snap.usd_remaining) == (500, 0.5)
            r.commit(tokens=420, usd=0.35)

    def test_commit_replaces_the_estimate_with_real_usage(self) -> None:
        pool = BudgetPool(token_cap=1000, usd_cap=1.0)
        with pool.reserve(tokens=500, usd=0.5) as r:
            r.commit(tokens=420, usd=0.35)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (420, 0.35)
        assert (snap.tokens_remaining, snap.usd_remaining) == (580, 0.65)

    def test_commit_without_amounts_commits_the_estimate(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        with pool.reserve(tokens=10, usd=0.05) as r:
            r.commit()
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (10, 0.05)

    def test_commit_of_one_axis_keeps_the_other_estimate(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        with pool.reserve(tokens=10, usd=0.05) as r:
            r.commit(tokens=7)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (7, 0.05)

    def test_normal_exit_without_commit_releases(self) -> None:
        pool = BudgetPool(token_cap=100)
        with pool.reserve(tokens=50) as r:
            assert r.reserved_tokens == 50
        assert r.completed
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.tokens_remaining) == (0, 100)

    def test_exception_exit_without_commit_releases_and_propagates(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        with pytest.raises(KeyError), pool.reserve(tokens=50, usd=0.5):
            raise KeyError("the LLM call failed")
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (0, 0.0)
        assert (snap.tokens_remaining, snap.usd_remaining) == (100, 1.0)

    def test_exception_after_commit_keeps_the_commit(self) -> None:
        pool = BudgetPool(token_cap=100)

        def call_then_fail() -> None:
            with pool.reserve(tokens=50) as r:
                r.commit(tokens=30)
                raise KeyError("after the call")

        with pytest.raises(KeyError):
            call_then_fail()
        assert pool.snapshot().tokens_used == 30

    def test_release_is_idempotent_and_ends_the_reservation(self) -> None:
        pool = BudgetPool(token_cap=100)
        r = pool.try_reserve(tokens=80)
        r.release()
        r.release()
        assert pool.snapshot().tokens_remaining == 100
        with pytest.raises(RuntimeError):
            r.commit()

    def test_second_commit_raises_runtime_error(self) -> None:
        pool = BudgetPool(token_cap=100)
        r = pool.try_reserve(tokens=10)
        r.commit()
        with pytest.raises(RuntimeError):
            r.commit()
        assert pool.snapshot().tokens_used == 10

    def test_bad_commit_amount_leaves_reservation_open(self) -> None:
        pool = BudgetPool(token_cap=100)
        with pool.reserve(tokens=10) as r:
            with pytest.raises(ValueError, match="non-negative"):
                r.commit(tokens=-1)
            assert not r.completed
        assert pool.snapshot().tokens_remaining == 100

    @pytest.mark.parametrize(
        ("amounts", "axis"), [({"tokens": 30}, "tokens"), ({"usd": 0.5}, "usd")]
    )
    def test_reserve_crossing_a_cap_raises_and_holds_nothing(
        self, amounts: dict[str, float], axis: str
    ) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        pool.record(tokens=80, usd=0.9)
        with pytest.raises(BudgetExceeded) as info:
            pool.try_reserve(**amounts)  # type: ignore[arg-type]
        assert info.value.axis == axis
        with pytest.raises(BudgetExceeded), pool.reserve(**amounts):  # type: ignore[arg-type]
            pass  # pragma: no cover
        snap = pool.snapshot()
        assert snap.tokens_remaining == 20
        assert snap.usd_remaining == pytest.approx(0.1)

    def test_reservation_exposes_its_estimate(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        r = pool.try_reserve(tokens=30, usd=0.4)
        assert isinstance(r, Reservation)
        assert (r.reserved_tokens, r.reserved_usd, r.completed) == (30, 0.4, False)
        r.commit()
        assert r.completed


class TestOverrunCommit:
    """token-budget-py raised and recorded nothing when a commit crossed a cap."""

    def test_commit_above_estimate_past_the_token_cap_records_real_usage(
        self,
    ) -> None:
        pool = BudgetPool(token_cap=100)
        with pool.reserve(tokens=50) as r:
            r.commit(tokens=150)
        snap = pool.snapshot()
        assert snap.tokens_used == 150
        assert snap.tokens_remaining == -50

    def test_commit_above_estimate_past_the_usd_cap_records_real_usage(
        self,
    ) -> None:
        pool = BudgetPool(usd_cap=1.0)
        r = pool.try_reserve(usd=0.5)
        r.commit(usd=1.5)
        assert pool.snapshot().usd_used == 1.5

    def test_after_an_overrun_the_next_record_raises(self) -> None:
        pool = BudgetPool(token_cap=100)
        with pool.reserve(tokens=50) as r:
            r.commit(tokens=120)
        with pytest.raises(BudgetExceeded):
            pool.record(tokens=1)
        with pytest.raises(BudgetExceeded):
            pool.try_reserve(tokens=1)
        assert pool.snapshot().tokens_used == 120

    def test_commit_above_estimate_within_the_cap_records_real_usage(self) -> None:
        pool = BudgetPool(token_cap=100)
        with pool.reserve(tokens=50) as r:
            r.commit(tokens=80)
        assert pool.snapshot().tokens_used == 80


class TestReset:
    def test_reset_zeroes_both_totals(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)
        pool.record(tokens=50, usd=0.5)
        pool.reset()
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (0, 0.0)
        assert (snap.tokens_remaining, snap.usd_remaining) == (100, 1.0)

    def test_reset_zeroes_unbounded_totals_too(self) -> None:
        pool = BudgetPool()
        pool.record(tokens=5, usd=0.5)
        pool.reset()
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.usd_used) == (0, 0.0)

    def test_outstanding_reservation_still_holds_room_after_reset(self) -> None:
        pool = BudgetPool(token_cap=100)
        pool.record(tokens=10)
        r = pool.try_reserve(tokens=80)
        pool.reset()
        assert pool.snapshot().tokens_remaining == 20
        with pytest.raises(BudgetExceeded):
            pool.record(tokens=21)
        r.release()

    def test_release_after_reset_never_lifts_the_pool_above_its_cap(self) -> None:
        pool = BudgetPool(token_cap=100)
        r = pool.try_reserve(tokens=80)
        pool.reset()
        r.release()
        assert pool.snapshot().tokens_remaining == 100
        pool.record(tokens=100)
        with pytest.raises(BudgetExceeded):
            pool.record(tokens=1)
        assert pool.snapshot().tokens_used == 100

    def test_commit_after_reset_charges_the_fresh_window(self) -> None:
        pool = BudgetPool(token_cap=100)
        pool.record(tokens=50)
        r = pool.try_reserve(tokens=40)
        pool.reset()
        r.commit(tokens=30)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.tokens_remaining) == (30, 70)


class TestSnapshot:
    def test_snapshot_is_a_frozen_value(self) -> None:
        pool = BudgetPool(token_cap=100)
        pool.record(tokens=10)
        snap = pool.snapshot()
        pool.record(tokens=10)
        assert isinstance(snap, BudgetSnapshot)
        assert snap.tokens_used == 10
        with pytest.raises(dataclasses.FrozenInstanceError):
            snap.tokens_used = 0  # type: ignore[misc]

    def test_values_are_int_tokens_and_float_usd(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=Decimal("2.5"))
        pool.record(tokens=3, usd=Decimal("0.25"))
        snap = pool.snapshot()
        for name in ("tokens_used", "token_cap", "tokens_remaining"):
            assert type(getattr(snap, name)) is int
        for name in ("usd_used", "usd_cap", "usd_remaining"):
            assert type(getattr(snap, name)) is float
        assert (snap.usd_used, snap.usd_cap, snap.usd_remaining) == (0.25, 2.5, 2.25)


class TestExactMoney:
    def test_tenths_add_up_to_the_cap_exactly(self) -> None:
        pool = BudgetPool(usd_cap=0.3)
        pool.record(usd=0.1)
        pool.record(usd=0.2)  # floats would make this 0.30000000000000004 > 0.3
        snap = pool.snapshot()
        assert (snap.usd_used, snap.usd_remaining) == (0.3, 0.0)

    def test_many_small_amounts_sum_exactly(self) -> None:
        pool = BudgetPool(usd_cap=1.0)
        for _ in range(10_000):
            pool.record(usd=0.0001)
        assert pool.snapshot().usd_used == 1.0
        assert pool.limiter.sync.snapshot().remaining("usd") == Decimal(0)
        used = {ls.axis: ls.used for ls in pool.limiter.sync.snapshot().limits}
        assert used["usd"] == Decimal("1")
        with pytest.raises(BudgetExceeded):
            pool.record(usd=0.0001)

    def test_decimal_and_string_amounts_are_exact(self) -> None:
        pool = BudgetPool(usd_cap="0.000003")
        pool.record(usd=Decimal("0.000001"))
        pool.record(usd="0.000001")
        with pool.reserve(usd="0.000001") as r:
            r.commit(usd=Decimal("0.000001"))
        assert pool.snapshot().usd_remaining == 0.0


class TestThreads:
    def test_threads_reserving_against_one_cap_never_exceed_it(self) -> None:
        pool = BudgetPool(token_cap=1_000)
        granted: list[int] = []
        refused: list[int] = []
        overdrawn: list[int] = []

        def worker() -> None:
            for _ in range(50):
                try:
                    with pool.reserve(tokens=10) as r:
                        left = pool.snapshot().tokens_remaining
                        assert left is not None
                        if left < 0:
                            overdrawn.append(left)  # pragma: no cover
                        r.commit()
                    granted.append(1)
                except BudgetExceeded:
                    refused.append(1)

        run_threads(8, worker)
        assert overdrawn == []
        assert (len(granted), len(refused)) == (100, 300)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.tokens_remaining) == (1_000, 0)

    def test_threads_reserving_and_releasing_leave_the_books_balanced(self) -> None:
        pool = BudgetPool(token_cap=100, usd_cap=1.0)

        def worker() -> None:
            for _ in range(200):
                try:
                    with pool.reserve(tokens=30, usd=0.3):
                        pass
                except BudgetExceeded:
                    pass

        run_threads(8, worker)
        snap = pool.snapshot()
        assert (snap.tokens_used, snap.tokens_remaining) == (0, 100)
        assert (snap.usd_used, snap.usd_remaining) == (0.0, 1.0)

    def test_threads_recording_money_stop_exactly_at_the_cap(self) -> None:
        pool = BudgetPool(usd_cap=1.0)
        granted: list[int] = []

        def worker() -> None:
            for _ in range(200):
                try:
                    pool.record(usd=0.001)
                    granted.append(1)
                except BudgetExceeded:
                    pass

        run_threads(8, worker)
        assert len(granted) == 1_000
        snap = pool.snapshot()
        assert (snap.usd_used, snap.usd_remaining) == (1.0, 0.0)


class TestMigration:
    def test_pool_limiter_shares_the_pools_state(self) -> None:
        pool = BudgetPool(token_cap=100)
        pool.record(tokens=30)
        with pool.limiter.sync.acquire(20, requests=0) as lease:
            assert pool.snapshot().tokens_remaining == 50
            lease.commit(tokens=10)
        assert pool.snapshot().tokens_used == 40
        assert pool.limiter.sync.snapshot().remaining("tokens") == 60

    def test_pool_calls_queue_behind_a_waiting_limiter_acquire(self) -> None:
        pool = BudgetPool(token_cap=100)
        held = pool.try_reserve(tokens=80)
        order: list[str] = []

        def core_caller() -> None:
            with pool.limiter.sync.acquire(50, requests=0):
                order.append("core")

        def pool_caller() -> None:
            pool.record(tokens=10)  # fits, but must not overtake the waiter
            order.append("pool")

        def wait_for_waiters(n: int) -> None:
            deadline = time.monotonic() + 10
            while pool.limiter.sync.snapshot().waiting < n:
                assert time.monotonic() < deadline, "no waiter queued"
                time.sleep(0.001)

        first = threading.Thread(target=core_caller)
        first.start()
        wait_for_waiters(1)
        second = threading.Thread(target=pool_caller)
        second.start()
        wait_for_waiters(2)  # queued behind the waiter although 80 + 10 fits
        assert order == []
        held.release()
        first.join(10)
        second.join(10)
        assert sorted(order) == ["core", "pool"]  # both granted by the one release
        assert pool.snapshot().tokens_used == 60
