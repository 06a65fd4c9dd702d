"""Rate and Cap specs: construction, validation, immutability, equality (contract 9, §1)."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from helpers import short_id
from ratebudget import Cap, InvalidRequest, Rate

ABSTRACT_ZONE: Any = cast("Any", tzinfo)()
"""A bare ``tzinfo``: it has no UTC offset."""


class TestRateAxis:
    def test_rate_names_its_single_axis_and_limit(self) -> None:
        rate = Rate(tokens=90_000, per="minute")
        assert rate.axis == "tokens"
        assert rate.limit == 90_000
        assert isinstance(rate.limit, int)

    def test_rate_without_an_axis_is_rejected(self) -> None:
        with pytest.raises(InvalidRequest, match="exactly one axis"):
            Rate(per="minute")

    def test_rate_with_two_axes_is_rejected(self) -> None:
        with pytest.raises(InvalidRequest, match="exactly one axis"):
            Rate(tokens=10, requests=5, per="minute")

    @pytest.mark.parametrize("name", ["_hidden", "not-an-identifier", "2fast"])
    def test_rate_axis_must_be_a_public_identifier(self, name: str) -> None:
        with pytest.raises(InvalidRequest):
            Rate(per="second", **{name: 1})

    def test_custom_axis_takes_fractional_limits(self) -> None:
        rate = Rate(gpu_seconds=Decimal("2.5"), per="second")
        assert rate.axis == "gpu_seconds"
        assert rate.limit == Decimal("2.5")

    def test_usd_rate_limit_is_an_exact_decimal(self) -> None:
        rate = Rate(usd=0.1, per="minute")
        assert rate.limit == Decimal("0.1")
        assert isinstance(rate.limit, Decimal)


class TestRatePer:
    @pytest.mark.parametrize(
        ("per", "seconds"),
        [("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)],
    )
    def test_named_periods_map_to_seconds(self, per: str, seconds: int) -> None:
        rate = Rate(requests=10, per=per)
        assert rate.per_seconds == seconds
        assert rate.per == timedelta(seconds=seconds)

    @pytest.mark.parametrize("per", [60, 60.0, timedelta(minutes=1), "minute"])
    def test_per_as_seconds_timedelta_or_name_are_the_same_rate(self, per: Any) -> None:
        rate = Rate(tokens=600, per=per)
        assert rate.per == timedelta(minutes=1)
        assert rate == Rate(tokens=600, per="minute")

    def test_fractional_seconds_are_kept(self) -> None:
        rate = Rate(requests=1, per=0.25)
        assert rate.per_seconds == 0.25
        assert rate.per == timedelta(milliseconds=250)

    @pytest.mark.parametrize(
        "per",
        [
            0,
            0.0,
            -1,
            -0.5,
            math.nan,
            math.inf,
            -math.inf,
            timedelta(0),
            timedelta(seconds=-1),
            1e-12,  # rounds to zero nanoseconds
        ],
    )
    def test_zero_negative_or_non_finite_per_is_rejected(self, per: Any) -> None:
        with pytest.raises(InvalidRequest):
            Rate(tokens=10, per=per)

    @pytest.mark.parametrize(
        "per",
        [
            1e300,
            10**30,
            10**400,
            -(10**400),
            1.7976931348623157e308,
            timedelta.max,
            timedelta(days=36525, microseconds=1),
            36525 * 86400 + 0.001,
            4e-10,  # rounds to zero nanoseconds
        ],
        ids=short_id,
    )
    def test_a_period_outside_one_nanosecond_to_100_years_is_rejected(
        self, per: Any
    ) -> None:
        with pytest.raises(InvalidRequest, match=r"between 1 ns and 100 years"):
            Rate(tokens=10, per=per)

    @pytest.mark.parametrize(
        ("per", "seconds"),
        [
            (timedelta(days=36525), 36525 * 86400),
            (36525 * 86400, 36525 * 86400),
            (float(36525 * 86400), 36525 * 86400),
            (1e-9, 1e-9),
            (6e-10, 1e-9),  # rounds to one nanosecond
        ],
    )
    def test_the_period_bounds_themselves_are_accepted(
        self, per: Any, seconds: float
    ) -> None:
        assert Rate(tokens=10, per=per).per_seconds == seconds

    @pytest.mark.parametrize("per", ["week", "Minute", "", None, True, [60], "60"])
    def test_unknown_or_mistyped_per_is_rejected(self, per: Any) -> None:
        with pytest.raises(InvalidRequest):
            Rate(tokens=10, per=per)

    def test_per_is_required(self) -> None:
        with pytest.raises(TypeError):
            Rate(tokens=10)  # type: ignore[call-arg]


class TestRateLimitAndBurst:
    def test_burst_defaults_to_the_limit(self) -> None:
        rate = Rate(tokens=1_000, per="minute")
        assert rate.burst == rate.limit == 1_000

    def test_explicit_burst_is_kept(self) -> None:
        rate = Rate(requests=500, per="minute", burst=50)
        assert rate.burst == 50
        assert rate.limit == 500

    def test_burst_may_exceed_the_limit(self) -> None:
        assert Rate(tokens=10, per="second", burst=30).burst == 30

    @pytest.mark.parametrize("limit", [0, -1, math.nan, math.inf, "x", True, None])
    def test_non_positive_or_invalid_limit_is_rejected(self, limit: Any) -> None:
        with pytest.raises(InvalidRequest):
            Rate(tokens=limit, per="minute")

    @pytest.mark.parametrize("burst", [0, -5, math.nan, math.inf, "lots", True])
    def test_non_positive_or_invalid_burst_is_rejected(self, burst: Any) -> None:
        with pytest.raises(InvalidRequest):
            Rate(tokens=100, per="minute", burst=burst)

    @pytest.mark.parametrize(
        "axis", ["tokens", "requests", "input_tokens", "output_tokens"]
    )
    def test_count_axes_need_whole_numbers(self, axis: str) -> None:
        with pytest.raises(InvalidRequest, match="whole"):
            Rate(per="minute", **{axis: 10.5})
        with pytest.raises(InvalidRequest, match="whole"):
            Rate(per="minute", burst=Decimal("2.5"), **{axis: 10})

    @pytest.mark.parametrize(
        ("limit", "burst"),
        [
            (2**63, None),
            (10, 2**63),
            ("1e100000000", None),
            (10, "1e100000000"),
            (10**400, None),
        ],
        ids=short_id,
    )
    def test_a_limit_or_burst_above_2_63_units_is_rejected_at_once(
        self, limit: Any, burst: Any
    ) -> None:
        start = time.perf_counter()
        with pytest.raises(InvalidRequest, match=r"at most 9223372036854775807"):
            Rate(tokens=limit, burst=burst, per="minute")
        assert time.perf_counter() - start < 0.25

    def test_a_usd_rate_above_9_billion_dollars_is_rejected(self) -> None:
        assert Rate(usd="9223372036.854775807", per="day").limit == Decimal(
            "9223372036.854775807"
        )
        with pytest.raises(InvalidRequest, match="nano-dollars"):
            Rate(usd="1e10", per="day")

    def test_the_largest_limit_and_burst_are_accepted(self) -> None:
        rate = Rate(tokens=2**63 - 1, burst=2**63 - 1, per="second")
        assert rate.limit == rate.burst == 2**63 - 1

    def test_count_limit_given_as_string_or_integral_float_is_an_int(self) -> None:
        assert Rate(tokens="1000", per="minute").limit == 1000
        limit = Rate(tokens=1000.0, per="minute").limit
        assert limit == 1000
        assert isinstance(limit, int)


class TestRateValueSemantics:
    def test_rate_is_immutable(self) -> None:
        rate = Rate(tokens=10, per="second")
        with pytest.raises(AttributeError):
            rate.limit = 20
        with pytest.raises(AttributeError):
            del rate.axis
        with pytest.raises(AttributeError):
            rate.extra = 1
        assert rate.limit == 10

    def test_equal_specs_are_equal_and_hash_alike(self) -> None:
        a = Rate(tokens=90_000, per="minute")
        b = Rate(tokens="90000", per=timedelta(seconds=60), burst=90_000)
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    @pytest.mark.parametrize(
        "other",
        [
            Rate(tokens=90_001, per="minute"),
            Rate(tokens=90_000, per="hour"),
            Rate(tokens=90_000, per="minute", burst=10),
            Rate(input_tokens=90_000, per="minute"),
        ],
    )
    def test_any_differing_field_makes_rates_unequal(self, other: Rate) -> None:
        assert Rate(tokens=90_000, per="minute") != other

    def test_rate_is_never_equal_to_a_cap_or_other_object(self) -> None:
        rate = Rate(tokens=10, per="day")
        assert rate != Cap(tokens=10, per="day")
        assert rate != (10, "day")

    @pytest.mark.parametrize(
        ("rate", "text"),
        [
            (Rate(tokens=90_000, per="minute"), "Rate(tokens=90000, per='minute')"),
            (
                Rate(requests=500, per=60, burst=50),
                "Rate(requests=500, per='minute', burst=50)",
            ),
            (Rate(requests=3, per=1.5), "Rate(requests=3, per=1.5)"),
        ],
    )
    def test_repr_shows_axis_limit_per_and_non_default_burst(
        self, rate: Rate, text: str
    ) -> None:
        assert repr(rate) == text

    @pytest.mark.parametrize(
        "rate",
        [
            Rate(tokens=90_000, per="minute"),
            Rate(usd="0.5", per="hour", burst="0.25"),
            Rate(images=Decimal("1.5"), per=2.5),
        ],
    )
    def test_repr_round_trips(self, rate: Rate) -> None:
        assert eval(repr(rate), {"Rate": Rate, "Decimal": Decimal}) == rate


class TestCapConstruction:
    def test_cap_defaults_to_a_hard_lifetime_cap_in_utc_without_alerts(self) -> None:
        cap = Cap(usd="25")
        assert cap.axis == "usd"
        assert cap.limit == Decimal(25)
        assert cap.per is None
        assert cap.soft is False
        assert cap.alert_at == ()
        assert cap.tz.utcoffset(None) == timedelta(0)

    @pytest.mark.parametrize("per", ["hour", "day", "week", "month", "year", None])
    def test_calendar_periods_are_accepted(self, per: Any) -> None:
        assert Cap(tokens=10, per=per).per == per

    @pytest.mark.parametrize(
        "per", ["minute", "second", "Day", "fortnight", 86400, timedelta(days=1)]
    )
    def test_other_periods_are_rejected(self, per: Any) -> None:
        with pytest.raises(InvalidRequest):
            Cap(tokens=10, per=per)

    def test_cap_takes_exactly_one_axis(self) -> None:
        with pytest.raises(InvalidRequest, match="exactly one axis"):
            Cap(per="day")
        with pytest.raises(InvalidRequest, match="exactly one axis"):
            Cap(usd=1, tokens=1, per="day")

    @pytest.mark.parametrize(
        "limit", [-1, "-0.01", math.nan, math.inf, "abc", False, object()]
    )
    def test_negative_or_invalid_cap_limit_is_rejected(self, limit: Any) -> None:
        with pytest.raises(InvalidRequest):
            Cap(usd=limit)

    @pytest.mark.parametrize(
        ("axis", "limit"),
        [
            ("tokens", 2**63),
            ("usd", "1e1000000"),
            ("usd", 10**400),
            ("images", Decimal("1e999999")),
        ],
        ids=short_id,
    )
    def test_a_cap_above_2_63_units_is_rejected_at_once(
        self, axis: str, limit: Any
    ) -> None:
        start = time.perf_counter()
        with pytest.raises(InvalidRequest, match="at most"):
            Cap(**{axis: limit})
        assert time.perf_counter() - start < 0.25

    def test_a_zero_cap_is_a_valid_budget_of_nothing(self) -> None:
        assert Cap(usd=0).limit == Decimal(0)
        assert Cap(tokens=0, per="day").limit == 0

    def test_count_caps_need_whole_numbers(self) -> None:
        with pytest.raises(InvalidRequest):
            Cap(tokens=Decimal("0.5"))
        with pytest.raises(InvalidRequest):
            Cap(requests="1.5")

    def test_usd_cap_is_exact(self) -> None:
        assert Cap(usd=0.1).limit == Decimal("0.1")
        assert Cap(usd="25.10").limit == Decimal("25.1")
        assert Cap(usd=Decimal("0.000000001")).limit == Decimal("1E-9")

    def test_soft_must_be_a_bool(self) -> None:
        assert Cap(usd=1, soft=True).soft is True
        with pytest.raises(InvalidRequest):
            Cap(usd=1, soft=1)  # type: ignore[arg-type]


class TestCapTimeZone:
    def test_zone_names_resolve_to_zoneinfo(self) -> None:
        cap = Cap(usd=1, per="day", tz="Europe/Berlin")
        assert str(cap.tz) == "Europe/Berlin"

    def test_utc_spellings_and_tzinfo_objects_are_equivalent(self) -> None:
        a = Cap(usd=1, per="day", tz="UTC")
        b = Cap(usd=1, per="day", tz="utc")
        c = Cap(usd=1, per="day", tz=timezone.utc)
        assert a == b == c

    def test_a_tzinfo_object_is_used_as_is(self) -> None:
        zone = ZoneInfo("America/New_York")
        cap = Cap(usd=1, per="day", tz=zone)
        assert cap.tz is zone
        assert cap == Cap(usd=1, per="day", tz="America/New_York")

    @pytest.mark.parametrize(
        "tz",
        [
            "Mars/Olympus_Mons",
            "Europe/Berlinn",
            "",
            "../etc/passwd",
            3,
            None,
            5,
            "Europe",  # a directory of the zone database
            "zone.tab",  # a file of it that is not a zone
            "a" * 300,  # a file name too long for the OS
            "UTC\x00",
            ABSTRACT_ZONE,
        ],
    )
    def test_unknown_or_mistyped_zone_is_rejected(self, tz: Any) -> None:
        with pytest.raises(InvalidRequest):
            Cap(usd=1, per="day", tz=tz)

    def test_a_tzinfo_without_an_offset_is_rejected(self) -> None:
        class Naive(tzinfo):
            def utcoffset(self, dt: datetime | None) -> timedelta | None:
                return None

            def dst(self, dt: datetime | None) -> timedelta | None:
                return None

            def tzname(self, dt: datetime | None) -> str | None:
                return None

        with pytest.raises(InvalidRequest, match="UTC offset"):
            Cap(usd=1, per="day", tz=Naive())


class TestCapAlertAt:
    def test_thresholds_are_sorted_and_deduplicated(self) -> None:
        cap = Cap(usd=10, alert_at=(1.0, 0.5, 0.8, 0.5))
        assert cap.alert_at == (0.5, 0.8, 1.0)

    def test_list_and_int_thresholds_are_accepted(self) -> None:
        assert Cap(usd=10, alert_at=[1, 0.9]).alert_at == (0.9, 1.0)

    def test_thresholds_above_one_report_overruns(self) -> None:
        assert Cap(usd=10, soft=True, alert_at=(1.5,)).alert_at == (1.5,)

    def test_thresholds_may_be_decimals_and_reach_ten_times_the_limit(self) -> None:
        cap = Cap(usd=10, soft=True, alert_at=(Decimal("0.8"), 10, Fraction(1, 2)))
        assert cap.alert_at == (0.5, 0.8, 10.0)

    @pytest.mark.parametrize(
        "alert_at",
        [
            (10**400,),
            (1e300,),
            (10.000001,),
            (Decimal("1e1000000"),),
            (Decimal("NaN"),),
            (Decimal("sNaN"),),
            (Decimal("-0.5"),),
            (Decimal("1e-1000000"),),  # no float above zero
            (complex(0.8, 0),),
            (10**5000,),  # too long for str(): the message must not need it
            [0.8, [10**5000]],
        ],
        ids=short_id,
    )
    def test_a_threshold_not_a_fraction_in_0_to_10_is_rejected(
        self, alert_at: Any
    ) -> None:
        with pytest.raises(InvalidRequest, match=r"0\.8 means 80%"):
            Cap(usd=10, alert_at=alert_at)

    @pytest.mark.parametrize(
        ("percent", "fraction"), [(80, "0.8"), (100, "1"), (95.5, "0.955")]
    )
    def test_a_percentage_typed_by_mistake_is_refused_with_a_hint(
        self, percent: float, fraction: str
    ) -> None:
        with pytest.raises(InvalidRequest, match=rf"for {percent}% write {fraction}\b"):
            Cap(usd=10, alert_at=(0.5, percent))

    @pytest.mark.parametrize(
        "alert_at",
        [
            (0,),
            (-0.5,),
            (math.nan,),
            (math.inf,),
            (True,),
            ("0.8",),
            (0.8, None),
            "0.8",
        ],
    )
    def test_invalid_thresholds_are_rejected(self, alert_at: Any) -> None:
        with pytest.raises(InvalidRequest):
            Cap(usd=10, alert_at=alert_at)

    @pytest.mark.parametrize("alert_at", [0.8, None])
    def test_a_bare_threshold_instead_of_a_sequence_is_rejected(
        self, alert_at: Any
    ) -> None:
        with pytest.raises(InvalidRequest):
            Cap(usd=10, alert_at=alert_at)


class TestCapValueSemantics:
    def test_cap_is_immutable(self) -> None:
        cap = Cap(usd=10, per="day")
        with pytest.raises(AttributeError):
            cap.limit = Decimal(20)
        with pytest.raises(AttributeError):
            del cap.per
        assert cap.limit == Decimal(10)

    def test_equal_caps_hash_alike(self) -> None:
        a = Cap(usd="25", per="day", tz="Europe/Berlin", alert_at=(0.8, 1.0))
        b = Cap(
            usd=Decimal("25.00"),
            per="day",
            tz=ZoneInfo("Europe/Berlin"),
            alert_at=[1.0, 0.8],
        )
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    @pytest.mark.parametrize(
        "other",
        [
            Cap(usd="26", per="day"),
            Cap(usd="25", per="month"),
            Cap(usd="25", per="day", tz="Europe/Berlin"),
            Cap(usd="25", per="day", soft=True),
            Cap(usd="25", per="day", alert_at=(0.5,)),
            Cap(tokens=25, per="day"),
        ],
    )
    def test_any_differing_field_makes_caps_unequal(self, other: Cap) -> None:
        assert Cap(usd="25", per="day") != other

    @pytest.mark.parametrize(
        ("cap", "text"),
        [
            (Cap(usd="25", per="day"), "Cap(usd='25', per='day')"),
            (Cap(tokens=10), "Cap(tokens=10, per=None)"),
            (
                Cap(
                    tokens=10_000_000,
                    per="month",
                    tz="Europe/Berlin",
                    soft=True,
                    alert_at=(0.8, 1.0),
                ),
                "Cap(tokens=10000000, per='month', tz='Europe/Berlin', soft=True, alert_at=(0.8, 1.0))",
            ),
        ],
    )
    def test_repr_shows_every_non_default_field(self, cap: Cap, text: str) -> None:
        assert repr(cap) == text

    @pytest.mark.parametrize(
        "cap",
        [
            Cap(usd="25", per="day"),
            Cap(
                tokens=10_000_000,
                per="month",
                tz="America/New_York",
                soft=True,
                alert_at=(0.8, 1.0),
            ),
            Cap(images=Decimal("2.5"), per="week"),
        ],
    )
    def test_repr_round_trips(self, cap: Cap) -> None:
        assert eval(repr(cap), {"Cap": Cap, "Decimal": Decimal}) == cap


class _Opaque:
    """An object ratebudget knows nothing of."""


ANYTHING: st.SearchStrategy[Any] = st.deferred(
    lambda: st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(-4000, 4000).map(lambda n: 10**n if n >= 0 else -(10**-n)),
        st.floats(),
        st.decimals(),
        st.integers(-(10**18) + 1, 10**18 - 1).map(lambda e: Decimal((0, (1,), e))),
        st.fractions(),
        st.complex_numbers(),
        st.text(max_size=20),
        st.integers(-(10**9), 10**9).map(lambda e: f"1e{e}"),
        st.binary(max_size=8),
        st.timedeltas(),
        st.datetimes(),
        st.sampled_from(
            [
                "minute",
                "day",
                "month",
                "UTC",
                "Europe/Berlin",
                "Europe",
                "zone.tab",
                timezone.utc,
                ABSTRACT_ZONE,
                timedelta.max,
                timedelta.min,
                object(),
                _Opaque(),
                int,
                math.pi,
            ]
        ),
        st.lists(ANYTHING, max_size=3),
        st.tuples(ANYTHING),
        st.dictionaries(st.text(max_size=3), ANYTHING, max_size=2),
    )
)
"""Any argument a caller might pass by mistake (or on purpose)."""


def or_anything(*plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Plausible values of an argument most of the time, anything else the rest."""
    likely = st.one_of(*plausible)
    return st.sampled_from([ANYTHING, likely, likely, likely]).flatmap(lambda s: s)


AXES = st.sampled_from(["tokens", "requests", "usd", "images"])
AMOUNTS = or_anything(
    st.integers(0, 2**64),
    st.decimals(min_value=0, max_value=10**20),
    st.floats(min_value=0, max_value=1e20),
)
RATE_PERS = or_anything(
    st.sampled_from(["second", "minute", "hour", "day"]),
    st.floats(min_value=1e-10, max_value=4e9),
    st.integers(0, 4 * 10**9),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40_000)),
)
CAP_PERS = or_anything(st.sampled_from([None, "hour", "day", "week", "month", "year"]))
ZONES = or_anything(st.sampled_from(["UTC", "Europe/Berlin"]), st.timezones())
THRESHOLDS = st.lists(
    or_anything(
        st.floats(min_value=0, max_value=12),
        st.integers(0, 101),
        st.decimals(min_value=0, max_value=11),
    ),
    max_size=3,
)
FUZZ = settings(max_examples=500, deadline=timedelta(milliseconds=250))
"""Each case takes microseconds; the deadline catches a slow conversion."""


class TestAnyArgument:
    """Whatever the arguments, a spec is built or ``InvalidRequest`` is raised."""

    @FUZZ
    @given(
        axis=AXES,
        limit=AMOUNTS,
        per=RATE_PERS,
        burst=st.one_of(st.none(), AMOUNTS),
    )
    def test_rate_raises_only_invalid_request(
        self, axis: str, limit: Any, per: Any, burst: Any
    ) -> None:
        try:
            rate = Rate(per=per, burst=burst, **{axis: limit})
        except InvalidRequest:
            event("refused")
            return
        event("built")
        assert 0 < rate.limit <= 2**63 - 1
        assert 0 < rate.burst <= 2**63 - 1
        assert 0 < rate.per_seconds <= 36525 * 86400
        assert repr(rate).startswith("Rate(")
        assert len({rate, rate}) == 1

    @FUZZ
    @given(
        axis=AXES,
        limit=AMOUNTS,
        per=CAP_PERS,
        tz=ZONES,
        soft=or_anything(st.booleans()),
        alert_at=or_anything(THRESHOLDS, THRESHOLDS.map(tuple)),
    )
    def test_cap_raises_only_invalid_request(
        self, axis: str, limit: Any, per: Any, tz: Any, soft: Any, alert_at: Any
    ) -> None:
        try:
            cap = Cap(per=per, tz=tz, soft=soft, alert_at=alert_at, **{axis: limit})
        except InvalidRequest:
            event("refused")
            return
        event("built")
        assert 0 <= cap.limit <= 2**63 - 1
        assert all(0 < t <= 10 for t in cap.alert_at)
        assert repr(cap).startswith("Cap(")
        assert len({cap, cap}) == 1
