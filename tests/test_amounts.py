"""Amounts: exact money, validation at the call, axes (contracts 9 and 11)."""

from __future__ import annotations

import math
import time
from decimal import Decimal, localcontext
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import short_id
from ratebudget import Cap, InvalidRequest, Limiter, Rate
from ratebudget.testing import FakeClock


def make_limiter() -> Limiter:
    return Limiter(
        Rate(tokens=1_000, per="minute"),
        Rate(requests=10, per="minute"),
        Cap(usd=10, per="day"),
        Cap(images=5),
        clock=FakeClock(),
    )


async def cap_used(limiter: Limiter, axis: str) -> int | Decimal:
    snap = await limiter.snapshot()
    (cap,) = (s for s in snap.limits if s.kind == "cap" and s.axis == axis)
    return cap.used


MAX_UNITS = 2**63 - 1
"""The documented bound on one amount, in units: a signed 64-bit count."""

FAST = 0.25
"""Seconds a refusal may take, however absurd the input (it takes microseconds)."""


def record_units(axis: str, value: Any) -> int | Decimal:
    """Record ``value`` on a limiter that counts ``axis``; return what it charged."""
    limit: dict[str, Any] = {axis: 0}
    limiter = Limiter(Cap(soft=True, **limit), clock=FakeClock())
    limiter.sync.record(**{axis: value})
    used: int | Decimal = limiter.sync.snapshot().limits[0].used
    return used


BAD_AMOUNTS: list[tuple[str, Any]] = [
    ("usd", True),
    ("usd", False),
    ("usd", -0.01),
    ("usd", "-1"),
    ("usd", Decimal("-0.000000001")),
    ("usd", math.nan),
    ("usd", math.inf),
    ("usd", -math.inf),
    ("usd", Decimal("NaN")),
    ("usd", Decimal("sNaN")),
    ("usd", Decimal("Infinity")),
    ("usd", "nan"),
    ("usd", "inf"),
    ("usd", "ten cents"),
    ("usd", ""),
    ("usd", None),
    ("usd", [1]),
    ("usd", object()),
    ("usd", 1 + 0j),
    ("tokens", 1.5),
    ("tokens", "2.5"),
    ("tokens", Decimal("0.1")),
    ("tokens", -1),
    ("tokens", True),
    ("requests", 0.5),
    ("input_tokens", 3.25),
    ("output_tokens", -7),
    ("images", -1),
    ("images", math.nan),
    ("images", "many"),
]


class TestExactMoney:
    async def test_floats_are_read_through_str_so_a_tenth_is_a_tenth(self) -> None:
        limiter = Limiter(Cap(usd=10), clock=FakeClock())
        for _ in range(3):
            await limiter.record(usd=0.1)
        used = await cap_used(limiter, "usd")
        assert isinstance(used, Decimal)
        assert used == Decimal("0.3")
        assert 0.1 + 0.1 + 0.1 != 0.3  # what a float sum would have given

    async def test_strings_and_decimals_are_exact(self) -> None:
        limiter = Limiter(Cap(usd=10), clock=FakeClock())
        await limiter.record(usd="0.012")
        await limiter.record(usd=Decimal("0.0105"))
        await limiter.record(usd=" 1.5 ")
        assert await cap_used(limiter, "usd") == Decimal("1.5225")

    async def test_a_million_micro_dollar_records_sum_to_exactly_one(self) -> None:
        # About 2.5 s per backend on the dev machine (1e6 awaited records).
        limiter = Limiter(Cap(usd=2), clock=FakeClock())
        record = limiter.record
        for _ in range(1_000_000):
            await record(usd=0.000001)
        used = await cap_used(limiter, "usd")
        assert used == Decimal(1)
        assert isinstance(used, Decimal)

    def test_sync_records_sum_exactly_too(self) -> None:
        limiter = Limiter(Cap(usd=1), clock=FakeClock())
        for _ in range(10_000):
            limiter.sync.record(usd=0.0001)
        snap = limiter.sync.snapshot()
        assert snap.limits[0].used == Decimal(1)
        assert snap.remaining("usd") == Decimal(0)

    async def test_lease_amounts_are_exact_decimals(self) -> None:
        limiter = Limiter(clock=FakeClock())
        lease = await limiter.acquire(usd=0.1)
        assert lease.amounts["usd"] == Decimal("0.1")
        assert isinstance(lease.amounts["usd"], Decimal)
        await lease.release()


class TestRoundingUp:
    @pytest.mark.parametrize(
        ("given", "charged"),
        [
            (Decimal("0.0000000001"), Decimal("0.000000001")),
            (1e-12, Decimal("0.000000001")),
            ("0.0000000011", Decimal("0.000000002")),
            ("0.0000000010", Decimal("0.000000001")),
            ("0.1000000000001", Decimal("0.100000001")),
        ],
    )
    async def test_sub_nano_dollar_amounts_round_up_to_the_next_nano_dollar(
        self, given: Any, charged: Decimal
    ) -> None:
        limiter = Limiter(Cap(usd=1), clock=FakeClock())
        await limiter.record(usd=given)
        assert await cap_used(limiter, "usd") == charged

    async def test_other_axes_round_up_to_the_next_micro_unit(self) -> None:
        limiter = Limiter(Cap(gpu_seconds=1), clock=FakeClock())
        await limiter.record(gpu_seconds="0.0000001")
        await limiter.record(gpu_seconds=0.25)
        assert await cap_used(limiter, "gpu_seconds") == Decimal("0.250001")

    async def test_rounding_up_holds_for_decimals_finer_than_28_digits(self) -> None:
        # 1 USD plus 1e-30 USD is more than one billion nano-dollars: the
        # charge must round up to 1.000000001, never down to 1.
        limiter = Limiter(Cap(usd=10), clock=FakeClock())
        await limiter.record(usd=Decimal("1.000000000000000000000000000001"))
        assert await cap_used(limiter, "usd") == Decimal("1.000000001")

    async def test_exactness_does_not_depend_on_the_callers_decimal_context(
        self,
    ) -> None:
        limiter = Limiter(Cap(usd=10_000), clock=FakeClock())
        with localcontext() as ctx:
            ctx.prec = 6
            await limiter.record(usd="1234.567891")
        assert await cap_used(limiter, "usd") == Decimal("1234.567891")


class TestInvalidAmountsChangeNothing:
    @pytest.mark.parametrize(("axis", "value"), BAD_AMOUNTS)
    async def test_acquire_rejects_at_the_call(self, axis: str, value: Any) -> None:
        limiter = make_limiter()
        await limiter.record(usd="1")
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest):
            limiter.acquire(**{axis: value})  # raises before anything is awaited
        with pytest.raises(InvalidRequest):
            await limiter.try_acquire(**{axis: value})
        assert await limiter.snapshot() == before

    @pytest.mark.parametrize(("axis", "value"), BAD_AMOUNTS)
    async def test_record_rejects_and_records_nothing(
        self, axis: str, value: Any
    ) -> None:
        limiter = make_limiter()
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest):
            await limiter.record(**{axis: value})
        assert await limiter.snapshot() == before

    @pytest.mark.parametrize(("axis", "value"), BAD_AMOUNTS)
    async def test_commit_rejects_and_leaves_the_lease_active(
        self, axis: str, value: Any
    ) -> None:
        limiter = make_limiter()
        lease = await limiter.acquire(10, usd="0.5", images=1)
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest):
            await lease.commit(**{axis: value})
        assert await limiter.snapshot() == before
        assert not lease.settled
        await lease.commit(tokens=5, usd="0.25")
        assert await cap_used(limiter, "usd") == Decimal("0.25")
        assert await cap_used(limiter, "images") == Decimal(1)

    def test_sync_facade_rejects_the_same_amounts(self) -> None:
        limiter = make_limiter()
        before = limiter.sync.snapshot()
        for axis, value in BAD_AMOUNTS:
            with pytest.raises(InvalidRequest):
                limiter.sync.acquire(**{axis: value})
            with pytest.raises(InvalidRequest):
                limiter.sync.try_acquire(**{axis: value})
            with pytest.raises(InvalidRequest):
                limiter.sync.record(**{axis: value})
        assert limiter.sync.snapshot() == before

    @pytest.mark.parametrize("tokens", [-1, 1.5, True, "x", math.nan])
    async def test_positional_tokens_are_validated_too(self, tokens: Any) -> None:
        limiter = make_limiter()
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest):
            limiter.acquire(tokens)
        with pytest.raises(InvalidRequest):
            await limiter.record(tokens)
        assert await limiter.snapshot() == before

    async def test_integral_float_token_counts_are_accepted(self) -> None:
        limiter = make_limiter()
        lease = await limiter.acquire(2.0, requests="1")
        assert lease.amounts == {"tokens": 2, "requests": 1}
        assert isinstance(lease.amounts["tokens"], int)
        await lease.release()

    @pytest.mark.parametrize(
        ("good", "bad"),
        [
            ({"usd": 1}, {"usd": True}),
            ({"requests": 1}, {"requests": True}),
            ({"requests": 2}, {"requests": 2.5}),
            ({"usd": "0.5"}, {"usd": "-0.5"}),
        ],
    )
    async def test_an_amount_validated_once_does_not_vouch_for_a_lookalike(
        self, good: dict[str, Any], bad: dict[str, Any]
    ) -> None:
        """``acquire()`` remembers the requests it validated; ``True == 1``
        and ``hash(True) == hash(1)``, so the memory must tell them apart."""
        limiter = make_limiter()
        for _ in range(2):  # the second call is served from memory
            await (await limiter.acquire(1, **good)).release()
        with pytest.raises(InvalidRequest):
            limiter.acquire(1, **bad)
        with pytest.raises(InvalidRequest):
            limiter.acquire(True, **good)

    async def test_an_unhashable_amount_is_rejected_not_remembered(self) -> None:
        limiter = make_limiter()
        with pytest.raises(InvalidRequest):
            limiter.acquire(1, usd=[1])  # type: ignore[call-overload]

    @pytest.mark.parametrize("timeout", [-1, -0.001, math.nan, "5", True, [1]])
    async def test_bad_timeouts_are_rejected_at_the_call(self, timeout: Any) -> None:
        limiter = make_limiter()
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest):
            limiter.acquire(1, timeout=timeout)
        assert await limiter.snapshot() == before


class TestAboveBurst:
    async def test_an_amount_above_a_rates_burst_is_rejected(self) -> None:
        limiter = Limiter(
            Rate(tokens=1_000, per="minute", burst=100),
            Cap(usd=10),
            clock=FakeClock(),
        )
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="never be served"):
            limiter.acquire(101, usd=1)
        with pytest.raises(InvalidRequest):
            await limiter.try_acquire(101)
        with pytest.raises(InvalidRequest):
            limiter.sync.acquire(101)
        assert await limiter.snapshot() == before

    async def test_an_amount_equal_to_the_burst_is_served(self) -> None:
        limiter = Limiter(
            Rate(tokens=1_000, per="minute", burst=100), clock=FakeClock()
        )
        lease = await limiter.acquire(100)
        assert (await limiter.snapshot()).limits[0].tokens == 0
        await lease.release()

    async def test_requests_above_a_request_rates_burst_are_rejected(self) -> None:
        limiter = Limiter(Rate(requests=5, per="second", burst=2), clock=FakeClock())
        with pytest.raises(InvalidRequest):
            limiter.acquire(requests=3)

    async def test_custom_axis_above_burst_is_rejected(self) -> None:
        limiter = Limiter(Rate(images=Decimal("1.5"), per="second"), clock=FakeClock())
        with pytest.raises(InvalidRequest):
            limiter.acquire(images="1.500001")
        lease = await limiter.acquire(images="1.5")
        await lease.release()


class TestAxes:
    async def test_standard_axes_are_accepted_without_a_limit_on_them(self) -> None:
        limiter = Limiter(Rate(images=10, per="minute"), clock=FakeClock())
        lease = await limiter.acquire(
            3, usd="0.5", input_tokens=2, output_tokens=1, requests=2
        )
        assert lease.amounts == {
            "tokens": 3,
            "usd": Decimal("0.5"),
            "input_tokens": 2,
            "output_tokens": 1,
            "requests": 2,
        }
        await lease.commit(usd="0.75", input_tokens=4)
        await limiter.record(output_tokens=9, usd=1)

    async def test_a_limiter_without_limits_accepts_every_standard_axis(self) -> None:
        limiter = Limiter(clock=FakeClock())
        lease = await limiter.acquire(1, usd=1, input_tokens=1, output_tokens=1)
        await lease.commit(tokens=2)
        assert (await limiter.snapshot()).limits == ()

    async def test_a_custom_axis_with_a_limit_is_accepted(self) -> None:
        limiter = Limiter(Cap(images=5), clock=FakeClock())
        lease = await limiter.acquire(images=2.5)
        assert lease.amounts["images"] == Decimal("2.5")
        await lease.commit(images="1.25")
        assert await cap_used(limiter, "images") == Decimal("1.25")

    async def test_an_unknown_custom_axis_in_acquire_is_rejected(self) -> None:
        limiter = Limiter(Cap(images=5), clock=FakeClock())
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="unknown axis 'videos'"):
            limiter.acquire(videos=1)
        with pytest.raises(InvalidRequest, match="unknown axis"):
            await limiter.try_acquire(videos=1)
        with pytest.raises(InvalidRequest, match="unknown axis"):
            await limiter.record(videos=1)
        with pytest.raises(InvalidRequest, match="unknown axis"):
            limiter.sync.acquire(videos=1)
        assert await limiter.snapshot() == before

    async def test_an_unknown_custom_axis_in_commit_is_rejected_and_changes_nothing(
        self,
    ) -> None:
        limiter = Limiter(Cap(images=5), Cap(usd=1), clock=FakeClock())
        lease = await limiter.acquire(images=2, usd="0.5")
        before = await limiter.snapshot()
        with pytest.raises(InvalidRequest, match="unknown axis 'videos'"):
            await lease.commit(images=1, videos=1)
        assert await limiter.snapshot() == before
        assert not lease.settled
        await lease.commit(images=1)
        assert await cap_used(limiter, "images") == Decimal(1)
        assert await cap_used(limiter, "usd") == Decimal("0.5")

    def test_an_unknown_custom_axis_in_a_sync_commit_is_rejected(self) -> None:
        limiter = Limiter(Cap(images=5), clock=FakeClock())
        lease = limiter.sync.acquire(images=2)
        with pytest.raises(InvalidRequest):
            lease.commit(videos=1)
        assert not lease.settled
        lease.commit()
        assert limiter.sync.snapshot().limits[0].used == Decimal(2)


LIMIT_MESSAGE = {
    "tokens": r"at most 9223372036854775807 tokens \(2\*\*63 - 1\)",
    "input_tokens": r"at most 9223372036854775807 input_tokens \(2\*\*63 - 1\)",
    "usd": r"at most 9223372036\.854775807 usd \(2\*\*63 - 1 nano-dollars\)",
    "images": r"at most 9223372036854\.775807 images \(2\*\*63 - 1 micro-units\)",
}

HUGE_AMOUNTS: list[tuple[str, Any]] = [
    ("tokens", "1e100000000"),  # used to freeze the process
    ("usd", "1e1000000"),  # used to take ~50 s of CPU
    ("images", Decimal("1e999999")),
    ("usd", Decimal("1E+999999999999999999")),  # the largest decimal exponent
    ("tokens", 10**400),
    ("tokens", 10**5000),  # too long for str(): the message must not need it
    ("usd", 10**400),
    ("usd", 1e300),
    ("images", 1.7976931348623157e308),
    ("tokens", MAX_UNITS + 1),
    ("tokens", float(2**63)),
    ("input_tokens", str(MAX_UNITS + 1)),
    ("usd", MAX_UNITS // 10**9 + 1),
    ("usd", "9223372036.854775808"),  # one nano-dollar past the bound
    ("usd", "9223372036.8547758071"),  # rounds up past the bound
    ("images", "9223372036854.775808"),  # one micro-unit past the bound
]


class TestAbsurdMagnitudes:
    """One amount is at most 2**63 - 1 units; past it, a quick refusal."""

    @pytest.mark.parametrize(("axis", "value"), HUGE_AMOUNTS, ids=short_id)
    async def test_a_huge_amount_is_refused_at_once_and_says_the_limit(
        self, axis: str, value: Any
    ) -> None:
        limiter = Limiter(Cap(usd=10), Cap(images=5), clock=FakeClock())
        before = await limiter.snapshot()
        start = time.perf_counter()
        with pytest.raises(InvalidRequest, match=LIMIT_MESSAGE[axis]):
            limiter.acquire(**{axis: value})
        with pytest.raises(InvalidRequest, match="at most"):
            await limiter.record(**{axis: value})
        with pytest.raises(InvalidRequest, match="at most"):
            limiter.sync.record(**{axis: value})
        assert time.perf_counter() - start < FAST
        assert await limiter.snapshot() == before

    @pytest.mark.parametrize(("axis", "value"), HUGE_AMOUNTS, ids=short_id)
    async def test_a_huge_commit_is_refused_and_leaves_the_lease_active(
        self, axis: str, value: Any
    ) -> None:
        limiter = Limiter(Cap(usd=10), Cap(images=5), clock=FakeClock())
        lease = await limiter.acquire(10, usd="0.5")
        with pytest.raises(InvalidRequest, match="at most"):
            await lease.commit(**{axis: value})
        assert not lease.settled
        await lease.commit(usd="0.25")
        assert await cap_used(limiter, "usd") == Decimal("0.25")

    @pytest.mark.parametrize(
        "value", ["1e999999999999999999999", " -1E-9999999999999999999 "]
    )
    def test_an_exponent_no_decimal_can_hold_is_refused_at_once(
        self, value: str
    ) -> None:
        start = time.perf_counter()
        with pytest.raises(InvalidRequest, match="exponent out of range"):
            record_units("usd", value)
        assert time.perf_counter() - start < FAST

    @pytest.mark.parametrize(
        ("axis", "value", "charged"),
        [
            ("tokens", MAX_UNITS, MAX_UNITS),
            ("tokens", str(MAX_UNITS), MAX_UNITS),
            ("tokens", Decimal(f"{MAX_UNITS}.000"), MAX_UNITS),
            ("tokens", Decimal("9223372036854775.807E+3"), MAX_UNITS),
            ("requests", 4.5e18, 4_500_000_000_000_000_000),
            ("usd", "9223372036.854775807", Decimal("9223372036.854775807")),
            ("usd", "9223372036.8547758069", Decimal("9223372036.854775807")),
            ("usd", MAX_UNITS // 10**9, Decimal(MAX_UNITS // 10**9)),
            ("images", "9223372036854.775807", Decimal("9223372036854.775807")),
        ],
    )
    def test_the_bound_itself_is_accepted_exactly(
        self, axis: str, value: Any, charged: int | Decimal
    ) -> None:
        assert record_units(axis, value) == charged

    @pytest.mark.parametrize(
        ("axis", "value", "charged"),
        [
            ("usd", "1e-1000000", Decimal("1E-9")),
            ("usd", Decimal("1E-999999999999999999"), Decimal("1E-9")),
            ("images", "1e-1000000", Decimal("0.000001")),
            ("usd", "0E+1000000000", Decimal(0)),  # zero, whatever its exponent
            ("tokens", Decimal("0E+999999999999999999"), 0),
            ("usd", 5e-324, Decimal("1E-9")),
        ],
    )
    def test_tiny_amounts_round_up_at_once(
        self, axis: str, value: Any, charged: int | Decimal
    ) -> None:
        start = time.perf_counter()
        assert record_units(axis, value) == charged
        assert time.perf_counter() - start < FAST

    @pytest.mark.parametrize("value", ["1e-1000000", Decimal("1E-999999999999999999")])
    def test_a_tiny_fraction_of_a_token_is_refused_at_once(self, value: Any) -> None:
        start = time.perf_counter()
        with pytest.raises(InvalidRequest, match="whole units"):
            record_units("tokens", value)
        assert time.perf_counter() - start < FAST

    @settings(max_examples=300, deadline=None)
    @given(
        axis=st.sampled_from(["tokens", "usd", "images"]),
        sign=st.integers(0, 1),
        digits=st.lists(st.integers(0, 9), min_size=1, max_size=40),
        exponent=st.integers(-(10**18), 10**18 - 40),  # what a Decimal can hold
    )
    def test_any_decimal_exponent_is_settled_in_microseconds(
        self, axis: str, sign: int, digits: list[int], exponent: int
    ) -> None:
        value = Decimal((sign, tuple(digits), exponent))
        start = time.perf_counter()
        try:
            record_units(axis, value)
        except InvalidRequest:
            pass
        assert time.perf_counter() - start < FAST
