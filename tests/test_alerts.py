"""Alerts: each threshold fires once per period, to on_alert and to logging.

Every test runs on the memory, SQLite and Redis stores (the ``make``
fixture).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from decimal import Decimal

import anyio
import pytest

from conftest import Make
from ratebudget import Alert, BudgetExceeded, Cap, Limiter
from ratebudget.testing import FakeClock

D = Decimal
UTC = timezone.utc


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


class Collector:
    """A plain on_alert handler that keeps what it receives."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    @property
    def thresholds(self) -> list[float]:
        return [a.threshold for a in self.alerts]


class AsyncCollector(Collector):
    """An async on_alert handler; it checkpoints before keeping the alert."""

    async def __call__(self, alert: Alert) -> None:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        self.alerts.append(alert)


def alert_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records of the "ratebudget" logger that report an alert."""
    return [
        r
        for r in caplog.records
        if r.name == "ratebudget" and "alert" in r.getMessage()
    ]


class TestThresholds:
    async def test_each_threshold_fires_once_when_usage_first_reaches_it(
        self, make: Make
    ) -> None:
        got = Collector()
        cap = Cap(usd=10, per="day", alert_at=(0.5, 0.8, 1.0))
        limiter = make(cap, clock=FakeClock(start=utc(2026, 5, 17, 12)), on_alert=got)
        await limiter.record(usd="4.99")
        await limiter.flush_alerts()
        assert got.alerts == []
        await limiter.record(usd="0.01")
        await limiter.flush_alerts()
        assert got.thresholds == [0.5]
        await limiter.record(usd=1)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5]
        await limiter.record(usd=2)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5, 0.8]
        await limiter.record(usd=1)
        await limiter.record(usd=1)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5, 0.8, 1.0]
        await limiter.flush_alerts()
        first = got.alerts[0]
        assert first.cap is cap
        assert first.axis == "usd"
        assert first.used == D(5)
        assert first.period == "2026-05-17"
        assert first.resets_at == utc(2026, 5, 18)
        await limiter.flush_alerts()
        assert got.alerts[2].used == D(10)

    async def test_one_commit_crossing_several_thresholds_fires_each_in_order(
        self,
        make: Make,
    ) -> None:
        got = Collector()
        limiter = make(
            Cap(tokens=100, alert_at=(1.0, 0.5, 0.8)), clock=FakeClock(), on_alert=got
        )
        lease = await limiter.acquire(10)
        await lease.commit(tokens=95)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5, 0.8]
        assert all(a.used == 95 for a in got.alerts)
        assert all(a.period is None and a.resets_at is None for a in got.alerts)

    async def test_reservations_do_not_fire_alerts_only_usage_does(
        self, make: Make
    ) -> None:
        got = Collector()
        limiter = make(Cap(usd=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=got)
        lease = await limiter.acquire(usd=9)
        await limiter.flush_alerts()
        assert got.alerts == []
        await lease.release()
        await limiter.flush_alerts()
        assert got.alerts == []
        async with limiter.acquire(usd=6):
            await limiter.flush_alerts()
            assert got.alerts == []
        await limiter.flush_alerts()
        assert got.thresholds == [0.5]

    async def test_thresholds_fire_again_in_the_next_period(self, make: Make) -> None:
        got = Collector()
        clock = FakeClock(start=utc(2026, 1, 1, 22, 30))  # 23:30 in Berlin
        limiter = make(
            Cap(usd=10, per="day", tz="Europe/Berlin", alert_at=(0.5,)),
            clock=clock,
            on_alert=got,
        )
        await limiter.record(usd=6)
        clock.advance(1800)
        await limiter.record(usd=1)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5]
        await limiter.record(usd=4)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5, 0.5]
        assert [a.period for a in got.alerts] == ["2026-01-01", "2026-01-02"]
        assert [a.used for a in got.alerts] == [D(6), D(5)]

    async def test_a_threshold_fires_once_a_period_even_after_reset(
        self, make: Make
    ) -> None:
        """Contract 17: once per (scope, cap, threshold, period, kind), the
        latch in the store; ``Alert.id`` names exactly that."""
        got = Collector()
        limiter = make(
            Cap(usd=10, soft=True, alert_at=(0.5, 1.0)),
            clock=FakeClock(),
            on_alert=got,
        )
        await limiter.record(usd=6)
        await limiter.reset()
        await limiter.record(usd=4)
        await limiter.flush_alerts()
        assert got.thresholds == [0.5]
        await limiter.record(usd=1)  # 5 again since the reset: 50% was sent
        await limiter.record(usd=3)  # 8: the period's peak was 6
        await limiter.flush_alerts()
        assert got.thresholds == [0.5]
        await limiter.record(usd=3)  # 11: past the peak, to 100%
        await limiter.flush_alerts()
        assert got.thresholds == [0.5, 1.0]

    async def test_each_threshold_fires_once_across_limiter_objects(
        self, make: Make
    ) -> None:
        """Limiters of one name (processes, on a shared store) share the
        latch: one alert per threshold in all, whoever crossed it."""
        got = Collector()
        a = make(Cap(usd=10, alert_at=(0.5,)), name="latch", on_alert=got)
        b = make(Cap(usd=10, alert_at=(0.5,)), name="latch", on_alert=got)
        await a.record(usd=6)
        await b.reset()
        await b.record(usd=6)
        await a.record(usd=1)
        await a.flush_alerts()
        await b.flush_alerts()
        assert got.thresholds == [0.5]

    async def test_a_soft_cap_alerts_past_its_limit_and_never_blocks(
        self, make: Make
    ) -> None:
        got = Collector()
        limiter = make(
            Cap(usd=1, soft=True, alert_at=(1.0, 2.0)), clock=FakeClock(), on_alert=got
        )
        await limiter.record(usd="1.5")
        await limiter.flush_alerts()
        assert got.thresholds == [1.0]
        lease = await limiter.acquire(usd=5)
        await lease.commit(usd=1)
        await limiter.flush_alerts()
        assert got.thresholds == [1.0, 2.0]
        await limiter.flush_alerts()
        assert got.alerts[1].used == D("2.5")

    async def test_an_alert_on_one_cap_does_not_fire_another(self, make: Make) -> None:
        got = Collector()
        day = Cap(usd=10, per="day", alert_at=(0.5,))
        month = Cap(usd=100, per="month", alert_at=(0.5,))
        limiter = make(day, month, clock=FakeClock(), on_alert=got)
        await limiter.record(usd=6)
        await limiter.flush_alerts()
        assert [a.cap for a in got.alerts] == [day]


class TestDelivery:
    async def test_an_async_handler_receives_every_alert(self, make: Make) -> None:
        got = AsyncCollector()
        limiter = make(
            Cap(usd=10, alert_at=(0.5, 1.0)), clock=FakeClock(), on_alert=got
        )
        await limiter.record(usd=5)
        async with limiter.acquire(usd=5):
            pass
        await limiter.flush_alerts()
        assert got.thresholds == [0.5, 1.0]

    async def test_alerts_are_logged_even_without_a_handler(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        limiter = make(Cap(usd=10, alert_at=(0.8,)), clock=FakeClock())
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await limiter.record(usd=9)
        (record,) = alert_logs(caplog)
        assert record.levelno == logging.WARNING
        assert "80%" in record.getMessage()
        assert "usd" in record.getMessage()

    async def test_alerts_are_logged_once_at_info_when_a_handler_gets_them(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        got = Collector()
        limiter = make(Cap(usd=10, alert_at=(0.8,)), clock=FakeClock(), on_alert=got)
        with caplog.at_level(logging.INFO, logger="ratebudget"):
            await limiter.record(usd=9)
            await limiter.record(usd="0.5")
        await limiter.flush_alerts()
        logged = [r for r in alert_logs(caplog) if r.levelno == logging.INFO]
        assert len(logged) == 1
        assert not [r for r in alert_logs(caplog) if r.levelno >= logging.WARNING]
        assert len(got.alerts) == 1

    async def test_a_failing_handler_is_logged_and_does_not_break_the_commit(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(alert: Alert) -> None:
            raise RuntimeError("pager down")

        limiter = make(Cap(usd=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=broken)
        lease = await limiter.acquire(usd=1)
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await lease.commit(usd=6)
        assert lease.settled
        snap = await limiter.snapshot()
        assert (snap.limits[0].used, snap.limits[0].reserved) == (D(6), D(0))
        await limiter.flush_alerts()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert errors[0].name == "ratebudget"
        assert errors[0].exc_info is not None
        assert isinstance(errors[0].exc_info[1], RuntimeError)

    async def test_a_failing_async_handler_is_logged_and_does_not_break_the_record(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def broken(alert: Alert) -> None:
            await anyio.lowlevel.checkpoint()
            raise RuntimeError("webhook down")

        limiter = make(
            Cap(usd=10, alert_at=(0.5, 1.0)), clock=FakeClock(), on_alert=broken
        )
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            await limiter.record(usd=10)
        assert (await limiter.snapshot()).limits[0].used == D(10)
        await limiter.flush_alerts()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2  # one per alert: the second is still delivered

    async def test_a_handler_failure_on_exit_of_async_with_does_not_escape(
        self,
        make: Make,
    ) -> None:
        calls: list[float] = []

        def broken(alert: Alert) -> None:
            calls.append(alert.threshold)
            raise ValueError("nope")

        limiter = make(
            Cap(tokens=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=broken
        )
        async with limiter.acquire(6):
            pass
        await limiter.flush_alerts()
        assert calls == [0.5]
        assert (await limiter.snapshot()).limits[0].used == 6

    async def test_an_alert_reads_like_budget_exceeded(self, make: Make) -> None:
        got = Collector()
        cap = Cap(usd="10", alert_at=(0.5,))
        limiter = make(cap, clock=FakeClock(), on_alert=got)
        await limiter.record(usd=6)
        with pytest.raises(BudgetExceeded) as refused:
            await limiter.acquire(usd=5)
        await limiter.flush_alerts()
        (alert,) = got.alerts
        assert alert.cap is cap
        assert (alert.axis, alert.limit) == (refused.value.axis, refused.value.limit)
        assert alert.limit == D(10)
        assert alert.used == refused.value.used == D(6)
        assert "used 6 of 10" in str(alert)


class TestSyncAlerts:
    def test_sync_record_and_commit_deliver_to_a_plain_handler(
        self, make: Make
    ) -> None:
        got = Collector()
        limiter = make(
            Cap(usd=10, alert_at=(0.5, 1.0)), clock=FakeClock(), on_alert=got
        )
        limiter.sync.record(usd=5)
        limiter.sync.flush_alerts()
        assert got.thresholds == [0.5]
        with limiter.sync.acquire(usd=5):
            pass
        limiter.sync.flush_alerts()
        assert got.thresholds == [0.5, 1.0]

    def test_sync_calls_deliver_to_an_async_handler(self, make: Make) -> None:
        got = AsyncCollector()
        limiter = make(
            Cap(usd=10, alert_at=(0.5, 1.0)), clock=FakeClock(), on_alert=got
        )
        limiter.sync.record(usd=5)
        lease = limiter.sync.acquire(usd=1)
        lease.commit(usd=5)
        limiter.sync.flush_alerts()
        assert got.thresholds == [0.5, 1.0]

    def test_a_failing_handler_does_not_break_a_sync_commit(
        self, make: Make, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(alert: Alert) -> None:
            raise RuntimeError("pager down")

        limiter = make(Cap(usd=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=broken)
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            lease = limiter.sync.acquire(usd=1)
            lease.commit(usd=6)
        assert lease.settled
        assert limiter.sync.snapshot().limits[0].used == D(6)
        limiter.sync.flush_alerts()
        assert len(alert_logs(caplog)) == 1
        limiter.sync.flush_alerts()
        assert [r.levelno for r in caplog.records if r.exc_info] == [logging.ERROR]

    def test_sync_alerts_fire_once_a_period_even_after_reset(self, make: Make) -> None:
        got = Collector()
        limiter = make(Cap(usd=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=got)
        limiter.sync.record(usd=5)
        limiter.sync.reset()
        limiter.sync.record(usd=5)
        limiter.sync.flush_alerts()
        assert got.thresholds == [0.5]


class TestOffThePath:
    """Handlers run off the callers' path: a slow webhook never delays a commit."""

    async def test_a_slow_async_handler_does_not_delay_the_commit(
        self, make: Make
    ) -> None:
        release = anyio.Event()
        got: list[float] = []

        async def slow(alert: Alert) -> None:
            await release.wait()
            got.append(alert.threshold)

        limiter = make(Cap(usd=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=slow)
        lease = await limiter.acquire(usd=1)
        with anyio.fail_after(10):  # were the handler awaited, this would hang
            await lease.commit(usd=6)
        assert lease.settled
        assert got == []
        release.set()
        await limiter.flush_alerts()
        assert got == [0.5]

    async def test_the_limiter_keeps_working_while_a_handler_runs(
        self, make: Make
    ) -> None:
        release = anyio.Event()
        got = AsyncCollector()

        async def slow(alert: Alert) -> None:
            await release.wait()
            await got(alert)

        limiter = make(
            Cap(usd=10, alert_at=(0.2, 0.4)), clock=FakeClock(), on_alert=slow
        )
        await limiter.record(usd=3)
        await limiter.record(usd=2)  # queued behind the first, in order
        async with limiter.acquire(usd=1):
            pass
        assert (await limiter.snapshot()).limits[0].used == D(6)
        release.set()
        await limiter.flush_alerts()
        assert got.thresholds == [0.2, 0.4]

    def test_a_slow_handler_does_not_delay_a_sync_record(self, make: Make) -> None:
        release = threading.Event()
        got: list[float] = []

        def slow(alert: Alert) -> None:
            release.wait(10)
            got.append(alert.threshold)

        limiter = make(Cap(usd=10, alert_at=(0.5,)), clock=FakeClock(), on_alert=slow)
        limiter.sync.record(usd=6)
        assert got == []
        assert limiter.sync.flush_alerts(timeout=0) is False
        release.set()
        assert limiter.sync.flush_alerts(timeout=10)
        assert got == [0.5]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_alert_fired_as_the_event_loop_ends_is_still_delivered(
    backend: str,
) -> None:
    got = Collector()
    limiter = Limiter(Cap(usd=10, alert_at=(0.5,)), on_alert=got)

    async def main() -> None:
        await limiter.record(usd=6)  # the program ends right after

    anyio.run(main, backend=backend)
    assert limiter.sync.flush_alerts(timeout=10)
    assert got.thresholds == [0.5]
