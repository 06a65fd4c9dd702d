"""Forecasts: a cap's usage at the end of its period, from the ledger.

The arithmetic is checked on synthetic histories (steady, rising, spiky,
the first hours of a period) against the usage the period then really
reaches; the public path (``snapshot()``, its alert, the blocking facade,
both ledger databases) with a ``FakeClock`` and real ledgers.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from helpers import ratebudget
from ratebudget import Alert, Cap, Forecast, Limiter, Rate
from ratebudget._forecast import BUCKETS, forecast
from ratebudget._periods import PERIODS, Period, PeriodWindow, period_window
from ratebudget.testing import FakeClock

DAY = datetime(2026, 12, 1, tzinfo=timezone.utc)
DAY_END = DAY + timedelta(days=1)
WIDTH_US = 86_400_000_000 // BUCKETS


def _us(t: datetime) -> int:
    return round(t.timestamp() * 1e6)


def period_of(means: list[float], sd: float, seed: int) -> list[int]:
    """One period's spend per bucket: ``means`` with Gaussian noise (never
    negative), in tokens."""
    rng = random.Random(seed)
    return [max(0, round(m + rng.gauss(0, sd))) for m in means]


def forecast_at(
    spend: list[int], k: int, frac: float = 0.0, limit: int = 10**12
) -> Forecast:
    """The forecast ``k + frac`` buckets into a day whose buckets spend
    ``spend``: the complete buckets are its history, and the cap counts
    what was spent up to now (a fraction of the current bucket too)."""
    used = sum(spend[:k]) + (round(frac * spend[k]) if k < BUCKETS else 0)
    now = _us(DAY) + round((k + frac) * WIDTH_US)
    cap = Cap(tokens=limit, per="day")
    return forecast(cap, used, 0, DAY, DAY_END, now, spend[:k])


def contains(f: Forecast, realised: int) -> bool:
    assert f.low is not None
    assert f.high is not None
    return f.low <= realised <= f.high


STEADY = [1_000.0] * BUCKETS
RISING = [200.0 + 60.0 * i for i in range(BUCKETS)]


class TestSyntheticHistories:
    @pytest.mark.parametrize("k", [6, 12, 24, 36, 47])
    def test_steady_use_is_inside_the_interval(self, k: int) -> None:
        spend = period_of(STEADY, 200, seed=k)
        f = forecast_at(spend, k, 0.5)
        assert contains(f, sum(spend))
        assert f.expected is not None
        if k >= 24:  # half the period: the expected use is close, too
            assert abs(Decimal(f.expected) - sum(spend)) <= Decimal("0.08") * sum(spend)

    @pytest.mark.parametrize("k", [6, 12, 24, 36, 47])
    def test_rising_use_is_inside_the_interval(self, k: int) -> None:
        spend = period_of(RISING, 150, seed=100 + k)
        f = forecast_at(spend, k, 0.25)
        assert contains(f, sum(spend))
        if k >= 12:
            # a flat run rate misses a rising period by far; the trend does not
            run_rate = (sum(spend[:k]) / k) * BUCKETS
            assert f.expected is not None
            assert abs(float(f.expected) - sum(spend)) < abs(run_rate - sum(spend)) / 3

    def test_the_interval_narrows_as_the_period_goes_on(self) -> None:
        spend = period_of(STEADY, 200, seed=7)
        widths = []
        for k in (6, 12, 24, 36, 46):
            f = forecast_at(spend, k)
            assert f.high is not None
            assert f.low is not None
            widths.append(f.high - f.low)
        assert widths == sorted(widths, reverse=True)

    @pytest.mark.parametrize("means", [STEADY, RISING], ids=["steady", "rising"])
    def test_the_interval_covers_99_percent_of_histories(
        self, means: list[float]
    ) -> None:
        """A 99% interval: across 360 histories and moments it misses at
        most a few (3% at most, 1% expected)."""
        misses = 0
        cases = 0
        for seed in range(60):
            spend = period_of(means, 200, seed=seed)
            for k in (6, 12, 18, 24, 36, 46):
                cases += 1
                misses += not contains(forecast_at(spend, k, 0.5), sum(spend))
        assert misses <= 0.03 * cases, f"{misses} of {cases} outside"

    def test_a_spiky_history_gets_a_wide_interval_not_a_false_precision(
        self,
    ) -> None:
        spiky = [0.0] * BUCKETS
        for i in (3, 9, 17):
            spiky[i] = 20_000.0
        steady = forecast_at(period_of(STEADY, 200, seed=1), 20)
        spikes = forecast_at(period_of(spiky, 0, seed=1), 20)
        for f in (steady, spikes):
            assert f.low is not None
            assert f.expected is not None
            assert f.high is not None
            assert f.low <= f.expected <= f.high
        assert steady.high is not None
        assert steady.low is not None
        assert spikes.high is not None
        assert spikes.low is not None
        assert spikes.high - spikes.low > 5 * (steady.high - steady.low)

    @pytest.mark.parametrize("hours", [0, 1, 2.99])
    def test_the_first_hours_of_a_period_are_too_short_to_forecast(
        self, hours: float
    ) -> None:
        k = int(hours * 3_600_000_000 // WIDTH_US)
        f = forecast_at([500] * BUCKETS, k, 0.0)
        assert not f
        assert (f.expected, f.low, f.high, f.exhausts_at) == (None,) * 4
        assert f.reason is not None
        assert "too short" in f.reason
        assert "3.0 hours" in f.reason  # the first eighth of a day

    def test_the_first_of_the_month_is_not_a_division_by_zero(self) -> None:
        start = datetime(2026, 12, 1, tzinfo=timezone.utc)
        end = datetime(2027, 1, 1, tzinfo=timezone.utc)
        cap = Cap(usd="100", per="month")
        for now in (start, start + timedelta(seconds=1), start + timedelta(days=3)):
            f = forecast(cap, 7, 0, start, end, _us(now), [])
            assert not f
            assert f.reason is not None
            assert "too short" in f.reason

    def test_outstanding_reservations_count(self) -> None:
        cap = Cap(tokens=10**9, per="day")
        spend = [100] * BUCKETS
        now = _us(DAY) + 10 * WIDTH_US
        bare = forecast(cap, 1_000, 0, DAY, DAY_END, now, spend[:10])
        held = forecast(cap, 1_000, 250, DAY, DAY_END, now, spend[:10])
        assert bare.expected == 4_800
        assert held.expected == 5_050
        assert (held.low, held.high) == (5_050, 5_050)  # no noise: no spread

    def test_exhausts_at_is_when_the_expected_use_reaches_the_limit(self) -> None:
        # 100 tokens per bucket; 1,000 used at bucket 10; the limit 3,000 is
        # reached 20 buckets later
        f = forecast_at([100] * BUCKETS, 10, limit=3_000)
        assert f.exhausts_at is not None
        want = DAY + 30 * timedelta(microseconds=WIDTH_US)
        assert abs(f.exhausts_at - want) < timedelta(seconds=1)
        assert f.expected == 4_800  # demand, not clamped at the cap
        # a cap already reached is exhausted now; one never reached, never
        now = DAY + 10 * timedelta(microseconds=WIDTH_US)
        assert forecast_at([100] * BUCKETS, 10, limit=1_000).exhausts_at == now
        assert forecast_at([100] * BUCKETS, 10, limit=5_000).exhausts_at is None

    def test_a_falling_rate_is_not_forecast_below_zero(self) -> None:
        falling = [float(max(0, 2_000 - 250 * i)) for i in range(BUCKETS)]
        spend = period_of(falling, 0, seed=0)
        f = forecast_at(spend, 8)
        assert f.expected is not None
        assert f.low is not None
        assert f.low >= sum(spend[:8])  # nothing is ever un-spent
        assert f.expected == pytest.approx(sum(spend), rel=0.01)

    def test_a_spend_that_just_began_is_too_short_not_a_missing_ledger(
        self,
    ) -> None:
        cap = Cap(tokens=10**6, per="day")
        now = _us(DAY) + 10 * WIDTH_US + 5
        f = forecast(cap, 5_000, 0, DAY, DAY_END, now, [0] * 10, partial=5_000)
        assert not f
        assert f.reason is not None
        assert "began within its last 30 minutes" in f.reason

    def test_a_ledger_that_missed_the_period_says_so(self) -> None:
        cap = Cap(tokens=10**6, per="day")
        now = _us(DAY) + 10 * WIDTH_US
        f = forecast(cap, 5_000, 0, DAY, DAY_END, now, [0] * 10)
        assert not f
        assert f.reason is not None
        assert "ledger" in f.reason


async def spend_steadily(limiter: Limiter, clock: FakeClock, hours: int) -> None:
    """$0.125 every 15 minutes (at 7.5, 22.5... minutes past the hour)."""
    for _ in range(hours * 4):
        clock.advance(450)
        async with limiter.acquire(usd="0.125") as lease:
            await lease.commit()
        clock.advance(450)


def alerting(
    clock: FakeClock, url: str, *limits: Cap | Rate
) -> tuple[Limiter, list[Alert]]:
    """A limiter "team" with ``limits`` and a ledger at ``url``, and the
    alerts it fires."""
    alerts: list[Alert] = []
    limiter = Limiter(
        *limits, name="team", ledger=url, clock=clock, on_alert=alerts.append
    )
    return limiter, alerts


class TestSnapshots:
    async def test_a_steady_spend_is_forecast_and_alerted_once(
        self, ledger_url: str
    ) -> None:
        clock = FakeClock(DAY)
        alerts: list[Alert] = []
        cap = Cap(usd="10", per="day")
        limiter = Limiter(
            cap,
            Rate(requests=1_000, per="second"),
            name="team",
            ledger=ledger_url,
            clock=clock,
            on_alert=alerts.append,
        )
        await spend_steadily(limiter, clock, 8)  # $4 by 08:00, $0.50 an hour
        assert limiter._ledger is not None
        await limiter._ledger.flush()
        snap = await limiter.snapshot()
        f = snap[0].forecast
        assert f is not None
        assert f.reason is None
        assert (f.expected, f.low, f.high) == (Decimal("12"),) * 3
        assert f.exhausts_at is not None  # $6 more at $0.50 an hour: 20:00
        assert abs(f.exhausts_at - (DAY + timedelta(hours=20))) < timedelta(seconds=1)
        assert snap[1].forecast is None  # a rate has none
        await limiter.snapshot()  # the same period: no second alert
        await limiter.flush_alerts()
        (alert,) = alerts
        assert (alert.kind, alert.cap, alert.scope, alert.period) == (
            "forecast",
            cap,
            "team",
            "2026-12-01",
        )
        assert alert.forecast == f
        assert alert.used == Decimal("4")
        assert "forecast to use 12" in str(alert)

    async def test_the_ledger_forecasts_without_being_asked(
        self, ledger_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No snapshot asked for: the ledger's thread forecasts its
        limiters' hard caps now and then, and the alert comes."""
        monkeypatch.setattr("ratebudget._ledger._FORECAST_EVERY", 0.05)
        clock = FakeClock(DAY)
        limiter, alerts = alerting(clock, ledger_url, Cap(usd="10", per="day"))
        await spend_steadily(limiter, clock, 8)  # $12 forecast for the day
        with anyio.fail_after(10):
            while not alerts:
                await anyio.sleep(0.02)
                await limiter.flush_alerts()
        (alert,) = alerts
        assert alert.kind == "forecast"
        assert alert.forecast is not None
        assert alert.forecast.expected is not None
        assert alert.forecast.expected > Decimal("10")  # past the cap

    async def test_a_forecast_under_the_cap_alerts_nothing(
        self, ledger_url: str
    ) -> None:
        clock = FakeClock(DAY)
        limiter, alerts = alerting(
            clock,
            ledger_url,
            Cap(usd="20", per="day"),
            Cap(usd="5", per="day", soft=True),  # soft: forecast, never alerted
        )
        await spend_steadily(limiter, clock, 4)
        assert limiter._ledger is not None
        await limiter._ledger.flush()
        hard, soft = (await limiter.snapshot()).limits
        assert hard.forecast is not None
        assert hard.forecast.expected == Decimal("12")
        assert hard.forecast.exhausts_at is None
        assert soft.forecast is not None
        assert soft.forecast.expected == Decimal("12")
        await limiter.flush_alerts()
        assert alerts == []

    async def test_a_scope_is_forecast_from_its_descendants_rows(
        self, tmp_path: Path
    ) -> None:
        clock = FakeClock(DAY)
        url = f"sqlite:///{tmp_path / 'usage.db'}"
        org = Limiter(Cap(usd="100", per="day"), name="org", ledger=url, clock=clock)
        team = org.child("search", Cap(usd="50", per="day"))
        await spend_steadily(team, clock, 6)
        assert org._ledger is not None
        await org._ledger.flush()
        for limiter in (org, team):
            (f,) = [s.forecast for s in (await limiter.snapshot()).limits[:1]]
            assert f is not None
            assert f.expected == Decimal("12")

    async def test_a_spend_begun_in_the_part_under_way_is_too_short(
        self, ledger_url: str
    ) -> None:
        clock = FakeClock(DAY + timedelta(hours=14, minutes=5))
        limiter, _ = alerting(clock, ledger_url, Cap(usd="10", per="day"))
        async with limiter.acquire(usd="1"):
            pass
        assert limiter._ledger is not None
        await limiter._ledger.flush()
        (s,) = (await limiter.snapshot()).limits
        assert s.forecast is not None
        assert "began within its last 30 minutes" in (s.forecast.reason or "")

    async def test_without_a_ledger_or_a_period_it_says_why(self) -> None:
        limiter = Limiter(Cap(usd="5", per="day"), Cap(tokens=1_000))
        per_day, lifetime = (await limiter.snapshot()).limits
        assert per_day.forecast is not None
        assert not per_day.forecast
        assert "ledger" in (per_day.forecast.reason or "")
        assert lifetime.forecast is not None
        assert not lifetime.forecast
        assert "lifetime" in (lifetime.forecast.reason or "")

    def test_the_blocking_facade_forecasts_and_alerts_too(self, tmp_path: Path) -> None:
        clock = FakeClock(DAY)
        alerts: list[Alert] = []
        limiter = Limiter(
            Cap(usd="10", per="day"),
            name="team",
            ledger=f"sqlite:///{tmp_path / 'usage.db'}",
            clock=clock,
            on_alert=alerts.append,
        )
        for _ in range(32):
            clock.advance(450)
            with limiter.sync.acquire(usd="0.125") as lease:
                lease.commit()
            clock.advance(450)
        assert limiter._ledger is not None
        limiter._ledger.flush_sync()
        (s,) = limiter.sync.snapshot().limits
        assert s.forecast is not None
        assert s.forecast.expected == Decimal("12")
        limiter.sync.flush_alerts()
        assert [a.kind for a in alerts] == ["forecast"]


def _a_period_well_begun() -> tuple[Period, PeriodWindow]:
    """A calendar period (UTC) now at least a sixth through: the CLI reads
    the real clock."""
    now = time.time()
    for per in PERIODS:
        w = period_window(per, timezone.utc, now)
        done = (now - w.start.timestamp()) / (w.end_ts - w.start.timestamp())
        if 1 / 6 < done < 0.95:
            return per, w
    pytest.skip("every calendar period has just begun (or is about to end)")


class TestCommands:
    def test_status_and_report_show_forecasts(self, tmp_path: Path) -> None:
        per, window = _a_period_well_begun()
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
        limiter = Limiter(
            Cap(usd="1000", per=per),
            store=url,
            name="team",
            ledger=True,
        )
        ledger = limiter._ledger
        assert ledger is not None
        # $1 in each past bucket of the period: its history, and its counter
        start = _us(window.start)
        width = (_us(window.end) - start) // BUCKETS
        done = (round(time.time() * 1e6) - start) // width
        for i in range(done):
            ledger._post(
                (f"row-{i}", start + i * width + 1, "team", {}, "committed",
                 {"requests": 1, "usd": 10**9})
            )  # fmt: skip
        ledger.flush_sync()
        limiter.sync.record(usd=done)
        ledger_url = f"sqlite:///{ledger.sqlite_path}"

        got = ratebudget("status", "--store", url, "--ledger", ledger_url, "--json")
        assert got.returncode == 0, got.stderr
        (cap,) = json.loads(got.stdout)["limiters"][0]["limits"]
        f = cap["forecast"]
        assert f["reason"] is None
        expected, low, high = (Decimal(f[k]) for k in ("expected", "low", "high"))
        assert low <= expected <= high
        # $1 a bucket all period long: $48, within a dollar or two
        assert abs(expected - BUCKETS) <= 2

        plain = ratebudget("status", "--store", url, "--ledger", ledger_url)
        assert plain.returncode == 0, plain.stderr
        assert f"forecast usd / {per}: $" in plain.stdout

        report = ratebudget("report", "--ledger", ledger_url, "--store", url)
        assert report.returncode == 0, report.stderr
        assert "forecasts (" in report.stdout
        assert f"team: forecast usd / {per}: $" in report.stdout
        limiter.store.close()
