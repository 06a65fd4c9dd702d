"""Calendar periods of caps: keys and bounds per time zone, DST and rollovers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratebudget import Cap, Limiter
from ratebudget._periods import PERIODS, Period, PeriodWindow, period_window
from ratebudget.testing import FakeClock

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def ts(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    tz: tzinfo = UTC,
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def bounds(w: PeriodWindow) -> tuple[float, float]:
    return w.start.timestamp(), w.end_ts


def length(period: Period, tz: tzinfo, at: float) -> timedelta:
    w = period_window(period, tz, at)
    return timedelta(seconds=w.end.timestamp() - w.start.timestamp())


class TestUtcWindows:
    def test_hour_window_is_the_clock_hour(self) -> None:
        w = period_window("hour", UTC, ts(2026, 5, 17, 13, 45, 10))
        assert w.key == "2026-05-17T13:00+00:00"
        assert w.start == utc(2026, 5, 17, 13)
        assert w.end == utc(2026, 5, 17, 14)
        assert w.end_ts == w.end.timestamp()

    def test_day_window_runs_midnight_to_midnight(self) -> None:
        w = period_window("day", UTC, ts(2026, 5, 17, 13, 45))
        assert w.key == "2026-05-17"
        assert (w.start, w.end) == (utc(2026, 5, 17), utc(2026, 5, 18))

    def test_week_starts_on_monday_with_an_iso_week_key(self) -> None:
        # 2026-05-17 is a Sunday: its week began on Monday 2026-05-11.
        w = period_window("week", UTC, ts(2026, 5, 17, 23, 59, 59))
        assert w.key == "2026-W20"
        assert (w.start, w.end) == (utc(2026, 5, 11), utc(2026, 5, 18))
        assert w.start.weekday() == 0

    def test_monday_midnight_opens_a_new_week(self) -> None:
        w = period_window("week", UTC, ts(2026, 5, 18))
        assert w.key == "2026-W21"
        assert w.start == utc(2026, 5, 18)

    def test_week_key_uses_the_iso_year_across_new_year(self) -> None:
        # Thursday 2026-01-01 belongs to ISO week 2026-W01, which began in 2025.
        w = period_window("week", UTC, ts(2026, 1, 1, 12))
        assert w.key == "2026-W01"
        assert w.start == utc(2025, 12, 29)
        # Friday 2027-01-01 still belongs to ISO week 53 of 2026.
        w = period_window("week", UTC, ts(2027, 1, 1, 12))
        assert w.key == "2026-W53"
        assert (w.start, w.end) == (utc(2026, 12, 28), utc(2027, 1, 4))

    def test_month_window(self) -> None:
        w = period_window("month", UTC, ts(2026, 5, 17))
        assert w.key == "2026-05"
        assert (w.start, w.end) == (utc(2026, 5, 1), utc(2026, 6, 1))

    def test_december_rolls_over_into_january_of_the_next_year(self) -> None:
        w = period_window("month", UTC, ts(2026, 12, 31, 23, 59, 59))
        assert w.key == "2026-12"
        assert w.end == utc(2027, 1, 1)
        nxt = period_window("month", UTC, w.end_ts)
        assert nxt.key == "2027-01"
        assert (nxt.start, nxt.end) == (utc(2027, 1, 1), utc(2027, 2, 1))

    def test_november_ends_on_december_first(self) -> None:
        assert period_window("month", UTC, ts(2026, 11, 30)).end == utc(2026, 12, 1)

    def test_leap_february_has_29_days(self) -> None:
        w = period_window("month", UTC, ts(2028, 2, 29, 12))
        assert w.key == "2028-02"
        assert w.end - w.start == timedelta(days=29)

    def test_year_window(self) -> None:
        w = period_window("year", UTC, ts(2026, 12, 31, 23, 59, 59))
        assert w.key == "2026"
        assert (w.start, w.end) == (utc(2026, 1, 1), utc(2027, 1, 1))
        assert period_window("year", UTC, w.end_ts).key == "2027"

    @pytest.mark.parametrize("period", PERIODS)
    def test_start_is_inclusive_and_end_exclusive(self, period: Period) -> None:
        w = period_window(period, UTC, ts(2026, 7, 15, 10, 30))
        assert period_window(period, UTC, w.start.timestamp()).key == w.key
        assert period_window(period, UTC, w.end_ts - 0.001).key == w.key
        after = period_window(period, UTC, w.end_ts)
        assert after.key != w.key
        assert after.start == w.end


class TestBerlinWindows:
    def test_day_boundary_is_local_midnight(self) -> None:
        # 23:30 UTC on Jan 1 is already Jan 2 in Berlin (CET, UTC+1).
        w = period_window("day", BERLIN, ts(2026, 1, 1, 23, 30))
        assert w.key == "2026-01-02"
        assert w.start == utc(2026, 1, 1, 23)
        assert w.end == utc(2026, 1, 2, 23)

    def test_spring_forward_day_has_23_hours(self) -> None:
        at = ts(2026, 3, 29, 12, tz=BERLIN)
        w = period_window("day", BERLIN, at)
        assert w.key == "2026-03-29"
        assert w.start == utc(2026, 3, 28, 23)
        assert w.end == utc(2026, 3, 29, 22)
        assert length("day", BERLIN, at) == timedelta(hours=23)

    def test_fall_back_day_has_25_hours(self) -> None:
        at = ts(2026, 10, 25, 12, tz=BERLIN)
        w = period_window("day", BERLIN, at)
        assert w.key == "2026-10-25"
        assert w.start == utc(2026, 10, 24, 22)
        assert w.end == utc(2026, 10, 25, 23)
        assert length("day", BERLIN, at) == timedelta(hours=25)

    def test_hour_before_the_spring_gap_ends_at_three_local(self) -> None:
        # 01:30 CET: the next local hour is 03:00 CEST, one real hour later.
        w = period_window("hour", BERLIN, ts(2026, 3, 29, 0, 30))
        assert w.key == "2026-03-29T01:00+01:00"
        assert bounds(w) == (ts(2026, 3, 29, 0), ts(2026, 3, 29, 1))
        assert w.end.astimezone(BERLIN).hour == 3
        nxt = period_window("hour", BERLIN, w.end_ts)
        assert nxt.key == "2026-03-29T03:00+02:00"
        assert nxt.start.timestamp() == w.end_ts

    def test_repeated_hour_gets_two_distinct_keys(self) -> None:
        first = period_window("hour", BERLIN, ts(2026, 10, 25, 0, 30))  # 02:30 CEST
        second = period_window("hour", BERLIN, ts(2026, 10, 25, 1, 30))  # 02:30 CET
        assert first.key == "2026-10-25T02:00+02:00"
        assert second.key == "2026-10-25T02:00+01:00"
        # (aware datetimes in a fold never compare equal across zones: use instants)
        assert bounds(first) == (ts(2026, 10, 25, 0), ts(2026, 10, 25, 1))
        assert bounds(second) == (ts(2026, 10, 25, 1), ts(2026, 10, 25, 2))
        assert period_window("hour", BERLIN, first.end_ts).key == second.key

    def test_every_hour_across_dst_is_one_real_hour(self) -> None:
        for day in (
            datetime(2026, 3, 29, tzinfo=BERLIN),
            datetime(2026, 10, 25, tzinfo=BERLIN),
        ):
            at = day.timestamp()
            end_of_day = period_window("day", BERLIN, at).end_ts
            keys = []
            while at < end_of_day:
                w = period_window("hour", BERLIN, at)
                assert w.end_ts - w.start.timestamp() == 3600
                keys.append(w.key)
                at = w.end_ts
            assert len(keys) == len(set(keys))
            assert len(keys) in (23, 25)

    def test_week_with_a_dst_change_is_167_hours(self) -> None:
        w = period_window("week", BERLIN, ts(2026, 3, 29, 12, tz=BERLIN))
        assert w.key == "2026-W13"
        assert w.start == datetime(2026, 3, 23, tzinfo=BERLIN)
        assert w.end.timestamp() - w.start.timestamp() == 167 * 3600

    def test_month_bounds_follow_local_time(self) -> None:
        w = period_window("month", BERLIN, ts(2026, 3, 15))
        assert w.key == "2026-03"
        assert w.start == utc(2026, 2, 28, 23)  # CET
        assert w.end == utc(2026, 3, 31, 22)  # CEST

    def test_new_year_comes_an_hour_early_in_utc(self) -> None:
        at = ts(2026, 12, 31, 23, 30)  # 00:30 on Jan 1 2027 in Berlin
        assert period_window("year", BERLIN, at).key == "2027"
        assert period_window("month", BERLIN, at).key == "2027-01"
        assert period_window("day", BERLIN, at).key == "2027-01-01"
        assert period_window("week", BERLIN, at).key == "2026-W53"
        assert period_window("year", UTC, at).key == "2026"
        assert period_window("year", BERLIN, at).start == utc(2026, 12, 31, 23)


class TestNewYorkWindows:
    def test_day_boundary_is_five_utc_in_winter(self) -> None:
        w = period_window("day", NEW_YORK, ts(2026, 1, 1, 3))
        assert w.key == "2025-12-31"
        assert w.end == utc(2026, 1, 1, 5)
        assert period_window("year", NEW_YORK, ts(2026, 1, 1, 3)).key == "2025"

    def test_day_boundary_is_four_utc_in_summer(self) -> None:
        w = period_window("day", NEW_YORK, ts(2026, 7, 4, 3, 59))
        assert w.key == "2026-07-03"
        assert w.end == utc(2026, 7, 4, 4)

    def test_dst_days_last_23_and_25_hours(self) -> None:
        assert length("day", NEW_YORK, ts(2026, 3, 8, 12, tz=NEW_YORK)) == timedelta(
            hours=23
        )
        assert length("day", NEW_YORK, ts(2026, 11, 1, 12, tz=NEW_YORK)) == timedelta(
            hours=25
        )

    def test_repeated_hour_gets_two_distinct_keys(self) -> None:
        first = period_window("hour", NEW_YORK, ts(2026, 11, 1, 5, 30))  # 01:30 EDT
        second = period_window("hour", NEW_YORK, ts(2026, 11, 1, 6, 30))  # 01:30 EST
        assert first.key == "2026-11-01T01:00-04:00"
        assert second.key == "2026-11-01T01:00-05:00"
        assert first.end_ts == second.start.timestamp() == ts(2026, 11, 1, 6)


ZONES = [UTC, BERLIN, NEW_YORK, ZoneInfo("Asia/Kolkata")]


def walk_windows(period: Period, tz: tzinfo, start: float, end: float) -> None:
    """Assert consecutive windows from ``start`` to ``end`` abut with fresh keys."""
    at = start
    seen: set[str] = set()
    w = period_window(period, tz, at)
    while at < end:
        assert w.start.timestamp() <= at < w.end_ts, w
        assert w.key not in seen, f"{w} reuses a key"
        seen.add(w.key)
        nxt = period_window(period, tz, w.end_ts)
        assert nxt.start.timestamp() == w.end_ts, f"{w} -> {nxt}"
        at, w = w.end_ts, nxt


class TestContiguity:
    @pytest.mark.parametrize("tz", ZONES, ids=str)
    @pytest.mark.parametrize("period", ["hour", "day"])
    def test_consecutive_windows_abut_and_have_distinct_keys_all_year(
        self, period: Period, tz: tzinfo
    ) -> None:
        walk_windows(period, tz, ts(2026, 1, 1), ts(2027, 1, 1))

    @pytest.mark.parametrize("period", ["hour", "day"])
    def test_half_hour_dst_zone_windows_abut_and_have_distinct_keys(
        self, period: Period
    ) -> None:
        # Lord Howe Island moves its clocks by 30 minutes: on 2026-04-05 at
        # 02:00 (+11:00) they go back to 01:30 (+10:30).
        lord_howe = ZoneInfo("Australia/Lord_Howe")
        walk_windows(period, lord_howe, ts(2026, 4, 4), ts(2026, 4, 6))

    @settings(max_examples=100, deadline=None)
    @given(
        at=st.floats(min_value=ts(2000, 1, 1), max_value=ts(2100, 1, 1)),
        period=st.sampled_from(PERIODS),
        tz=st.sampled_from([UTC, BERLIN, NEW_YORK, ZoneInfo("Asia/Kolkata")]),
    )
    def test_window_contains_its_timestamp_and_the_next_starts_at_its_end(
        self, at: float, period: Period, tz: tzinfo
    ) -> None:
        w = period_window(period, tz, at)
        assert w.start.timestamp() <= at < w.end_ts
        nxt = period_window(period, tz, w.end_ts)
        assert nxt.start == w.end
        assert nxt.key != w.key


class TestCapPeriodsThroughTheLimiter:
    async def test_snapshot_reports_the_period_key_and_reset_time_in_the_caps_zone(
        self,
    ) -> None:
        clock = FakeClock(start=utc(2026, 3, 28, 23, 30))  # 00:30 on Mar 29 in Berlin
        limiter = Limiter(
            Cap(usd=1, per="day", tz="Europe/Berlin"),
            Cap(usd=1, per="day"),
            Cap(usd=1, per="month", tz="America/New_York"),
            Cap(usd=1),
            clock=clock,
        )
        berlin, utc_day, ny_month, lifetime = (await limiter.snapshot()).limits
        assert (berlin.period, berlin.resets_at) == ("2026-03-29", utc(2026, 3, 29, 22))
        assert (utc_day.period, utc_day.resets_at) == ("2026-03-28", utc(2026, 3, 29))
        assert (ny_month.period, ny_month.resets_at) == ("2026-03", utc(2026, 4, 1, 4))
        assert (lifetime.period, lifetime.resets_at) == (None, None)
        assert berlin.used == Decimal(0)
