"""Runaways: a scope's spend in a short window far above its baseline.

With a ``FakeClock``: the rule's arithmetic through the public API, the
block and its calm, scopes, the blocking facade, a property (a fresh scope
never spends past its floor by more than one call), and an agent loop
through the real transport and ``FakeProvider``, stopped within its window
while a steady workload of the same scope is never flagged.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ratebudget import (
    Alert,
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
    Runaway,
)
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.testing import FakeClock, FakeProvider

D = Decimal


def now(clock: FakeClock) -> datetime:
    return datetime.fromtimestamp(clock.time(), timezone.utc)


def watched(
    clock: FakeClock, rule: Runaway | None, **kw: Any
) -> tuple[Limiter, list[Alert]]:
    alerts: list[Alert] = []
    limiter = Limiter(
        Cap(usd="1000", per="day"),
        name="agents",
        clock=clock,
        runaway=rule,
        on_alert=alerts.append,
        **kw,
    )
    return limiter, alerts


async def spend(limiter: Limiter, usd: str) -> None:
    async with limiter.acquire(usd=usd) as lease:
        await lease.commit()


class TestRunaway:
    @pytest.mark.parametrize(
        ("kw", "match"),
        [
            ({"window": "5 minutes"}, "duration"),
            ({"window": 0}, "between"),
            ({"window": True}, "duration"),
            ({"factor": "0.5"}, "factor"),
            ({"factor": "x"}, "factor"),
            ({"min_usd": "0"}, "above 0"),
            ({"min_usd": "-1"}, "min_usd|usd"),
            ({"action": "stop"}, "'alert' or 'block'"),
            ({"window": "5m", "baseline": "1m"}, "at least the window"),
        ],
    )
    def test_bad_rules_are_invalid_requests(self, kw: Any, match: str) -> None:
        with pytest.raises(InvalidRequest, match=match):
            Runaway(**kw)

    def test_a_watch_needs_usd_to_count(self) -> None:
        with pytest.raises(InvalidRequest, match="counts no USD"):
            Limiter(Rate(tokens=10, per="second"), runaway=Runaway())
        with pytest.raises(InvalidRequest, match="expected a Runaway"):
            Limiter(Cap(usd=1), runaway="5m")  # type: ignore[arg-type]
        Limiter(Cap(usd=1, soft=True), runaway=Runaway())  # a soft cap counts

    def test_the_rule_reads_back(self) -> None:
        rule = Runaway(window="30s", factor="2.5", min_usd="0.5", action="block")
        assert (rule.window, rule.baseline, rule.min_usd) == (30.0, 360.0, D("0.5"))
        assert repr(rule) == (
            "Runaway(window='30s', factor=2.5, min_usd='0.5', action='block', "
            "baseline='6m')"
        )

    async def test_without_history_min_usd_alone_judges(self) -> None:
        clock = FakeClock()
        limiter, alerts = watched(clock, Runaway(window="5m", min_usd="1"))
        for _ in range(9):
            await spend(limiter, "0.1")
            clock.advance(1)
        await limiter.flush_alerts()
        assert alerts == []  # $0.90 in the window: under the floor
        await spend(limiter, "0.1")
        await spend(limiter, "0.1")  # still the same runaway: one alert
        await limiter.flush_alerts()
        (alert,) = alerts
        assert (alert.kind, alert.scope, alert.used, alert.baseline) == (
            "runaway",
            "agents",
            D("1.0"),
            None,
        )
        assert (alert.window, alert.blocking, alert.threshold) == ("5m", False, 5.0)
        assert "agents: runaway spend: 1 USD in the last 5m" in str(alert)
        await spend(limiter, "5")  # alert only: never refused

    async def test_a_spend_far_above_the_baseline_alerts_once_per_runaway(
        self,
    ) -> None:
        clock = FakeClock()
        limiter, alerts = watched(clock, Runaway(window="5m", factor=5, min_usd="1"))
        for _ in range(260):  # $0.80 per 5 minutes for 65 minutes: the baseline
            await spend(limiter, "0.04")
            clock.advance(15)
        await limiter.flush_alerts()
        assert alerts == []
        for _ in range(60):  # now $1 every 15 s
            await spend(limiter, "1")
            clock.advance(15)
        await limiter.flush_alerts()
        (alert,) = alerts
        assert alert.baseline == D("0.8")  # $0.80 per window before
        assert D(4) < alert.used <= D(6)  # flagged past 5x, within the window
        clock.advance(3600)  # calm again (the window empty)...
        await spend(limiter, "0")
        for _ in range(60):  # ...then another runaway: another alert
            await spend(limiter, "2")
            clock.advance(5)
        await limiter.flush_alerts()
        assert [a.kind for a in alerts] == ["runaway", "runaway"]
        assert alerts[0].id != alerts[1].id

    async def test_a_block_refuses_until_the_window_calms(self) -> None:
        clock = FakeClock()
        limiter, alerts = watched(
            clock, Runaway(window="1m", min_usd="1", action="block")
        )
        for _ in range(4):
            await spend(limiter, "0.3")
            clock.advance(2)
        with pytest.raises(BudgetExceeded) as caught:
            await spend(limiter, "0.3")
        e = caught.value
        assert (e.reason, e.axis, e.scope, e.used, e.limit) == (
            "runaway",
            "usd",
            "agents",
            D("1.2"),
            D("1"),
        )
        assert e.requested == D("0.3")
        assert e.resets_at is not None
        # calm once the window is back to half its threshold ($0.50): when
        # the third call (at 4 s) leaves it, give or take a twentieth of it
        calm = (e.resets_at - now(clock)).total_seconds()
        assert 64 - 8 - 3 <= calm <= 64 - 8
        with pytest.raises(BudgetExceeded):  # try_acquire too
            await limiter.try_acquire(usd="0.1")
        clock.advance(calm)
        await spend(limiter, "0.3")  # calm: granted
        await limiter.flush_alerts()
        assert [a.blocking for a in alerts] == [True]
        snap = await limiter.snapshot()
        assert snap[0].used == D("1.5")  # nothing refused was charged

    async def test_a_scope_counts_its_descendants_and_blocks_them(self) -> None:
        clock = FakeClock()
        org, _ = watched(clock, Runaway(window="1m", min_usd="1", action="block"))
        team = org.child("search", Cap(usd="50", per="day"))
        bot = team.child("bot", runaway=Runaway(window="1m", min_usd="5"))
        for _ in range(4):
            await spend(bot, "0.25")
        with pytest.raises(BudgetExceeded) as caught:
            await spend(team, "0.01")
        assert (caught.value.reason, caught.value.scope) == ("runaway", "agents")
        with pytest.raises(BudgetExceeded):
            await spend(bot, "0.01")

    async def test_per_key_watches_each_key_alone(self) -> None:
        """``per_key(runaway=...)``: each key's scope has a watch of its own,
        so one run spending fast is blocked while its siblings go on."""
        clock = FakeClock()
        team, alerts = watched(clock, None)
        runs = team.per_key(runaway=Runaway(window="1m", min_usd="1", action="block"))
        for _ in range(4):
            await spend(runs["loop"], "0.3")
            await spend(runs["calm"], "0.05")
        with pytest.raises(BudgetExceeded) as caught:
            await spend(runs["loop"], "0.3")
        assert (caught.value.reason, caught.value.scope) == ("runaway", "agents/loop")
        await spend(runs["calm"], "0.05")  # its sibling is not held
        await spend(runs["other"], "0.3")  # nor is a new key
        await team.flush_alerts()
        assert [(a.kind, a.scope) for a in alerts] == [("runaway", "agents/loop")]

    def test_per_key_needs_usd_to_watch(self) -> None:
        with pytest.raises(InvalidRequest, match="count no USD"):
            Limiter(Rate(tokens=10, per="second")).per_key(runaway=Runaway())
        with pytest.raises(InvalidRequest, match="expected a Runaway"):
            Limiter(Cap(usd=1)).per_key(runaway="5m")  # type: ignore[arg-type]
        Limiter(Rate(tokens=10, per="second")).per_key(
            Cap(usd=1), runaway=Runaway()
        )  # the keys' own cap counts

    def test_the_blocking_facade_counts_and_refuses(self) -> None:
        clock = FakeClock()
        limiter, alerts = watched(
            clock, Runaway(window="1m", min_usd="1", action="block")
        )
        limiter.sync.record(usd="0.6")
        with limiter.sync.acquire(usd="0.4") as lease:
            lease.commit(usd="0.5")
        with pytest.raises(BudgetExceeded, match="runaway spend"):
            limiter.sync.acquire(usd="0.1")
        with pytest.raises(BudgetExceeded):
            limiter.sync.try_acquire(usd="0.1")
        limiter.sync.flush_alerts()
        assert [a.kind for a in alerts] == ["runaway"]

    async def test_released_leases_spend_nothing(self) -> None:
        clock = FakeClock()
        limiter, alerts = watched(
            clock, Runaway(window="1m", min_usd="1", action="block")
        )
        for _ in range(20):
            async with limiter.acquire(usd="0.5") as lease:
                await lease.release()
        await spend(limiter, "0.5")
        await limiter.flush_alerts()
        assert alerts == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # past 13 minutes: a 12-minute baseline would have taken over
    calls=[(40, 100)] * 19 + [(4, 200), (6, 317), (11, 1), (39, 300)]
)
@given(
    calls=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=40),  # seconds before the call
            st.integers(min_value=1, max_value=400),  # its USD, in cents
        ),
        min_size=1,
        max_size=60,
    )
)
def test_a_blocked_scope_never_spends_a_call_past_its_floor(
    calls: list[tuple[int, int]],
) -> None:
    """Calls one after another on a fresh scope (no baseline: ``min_usd``
    judges): whatever their sizes and gaps, no window of the rule ever holds
    more than ``min_usd`` plus the one call that crossed it."""
    clock = FakeClock()
    limiter = Limiter(
        Cap(usd="100000"),
        clock=clock,
        # a baseline longer than the run (60 calls, 40 s apart at most):
        # min_usd alone judges throughout
        runaway=Runaway(window="1m", min_usd="5", action="block", baseline="1h"),
    )
    done: list[tuple[float, Decimal]] = []
    reasons: set[str] = set()
    for gap, cents in calls:
        clock.advance(gap)
        usd = D(cents) / 100
        try:
            with limiter.sync.acquire(usd=usd):
                pass
        except BudgetExceeded as e:
            reasons.add(e.reason)
            continue
        done.append((clock.seconds, usd))
    assert reasons <= {"runaway"}
    biggest = max(usd for _, usd in calls_usd(calls))
    for t, _ in done:
        # buckets of a twentieth of the window: a window judged is at least
        # 57 s of the last minute
        window = sum(u for s, u in done if t - 57 < s <= t)
        assert window < D(5) + biggest


def calls_usd(calls: list[tuple[int, int]]) -> list[tuple[int, Decimal]]:
    return [(gap, D(cents) / 100) for gap, cents in calls]


async def test_an_agent_loop_through_the_transport_is_stopped_within_its_window(
    anyio_backend: str,
) -> None:
    """A steady summariser and, later, an agent stuck in a loop share one
    scope. Hours of the steady work never trip the watch; the loop is
    refused within its 5-minute window, having spent a bounded amount; once
    it stops and the window calms, the steady work goes on."""
    clock = FakeClock()
    provider = FakeProvider()
    alerts: list[Alert] = []
    limiter = Limiter(
        Cap(usd="100", per="day"),
        name="team",
        clock=clock,
        on_alert=alerts.append,
        runaway=Runaway(window="5m", factor=5, min_usd="1", action="block"),
    )
    transport = BudgetTransport(limiter, transport=httpx.ASGITransport(app=provider))
    prompt = " ".join(["word"] * 4000)  # about $0.05 a call

    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as http:

        async def call() -> None:
            r = await http.post(
                "/v1/chat/completions",
                json={
                    "model": "gpt-4o",
                    "messages": [{"role": "user", "content": prompt}],
                },
            )
            assert r.status_code == 200

        # the steady work: a call every 20 s for three hours
        for _ in range(3 * 180):
            await call()
            clock.advance(20)
        await limiter.flush_alerts()
        assert alerts == []
        steady = D((await limiter.snapshot())[0].used)
        per_call = steady / (3 * 180)
        assert per_call > 0

        # the loop: a call a second, beside the steady work
        started = clock.seconds
        stopped: BudgetExceeded | None = None
        for second in range(600):
            try:
                await call()
                if second % 20 == 0:
                    await call()
            except BudgetExceeded as e:
                stopped = e
                break
            clock.advance(1)
        assert stopped is not None, "the loop was never stopped"
        assert stopped.reason == "runaway"
        assert clock.seconds - started < 300  # within its window
        looped = D((await limiter.snapshot())[0].used) - steady
        # what got through: factor x the usual spend per window (less what
        # the steady work spent in the window), and the call that crossed it
        usual = per_call * 15  # 15 steady calls per 5 minutes
        assert 5 * usual > 1  # the factor judges, not min_usd
        assert 4 * usual - per_call <= looped <= 5 * usual + per_call
        await limiter.flush_alerts()
        (alert,) = alerts
        assert (alert.kind, alert.blocking, alert.scope) == ("runaway", True, "team")

        # the loop gives up; once the window calms the steady work goes on
        assert stopped.resets_at is not None
        wait = (stopped.resets_at - now(clock)).total_seconds()
        assert 0 < wait <= 300 + 15
        clock.advance(wait)
        for _ in range(30):
            await call()
            clock.advance(20)
        assert len([r for r in provider.requests if r.status == 200]) > 3 * 180
        assert alerts == [alert]
        assert timedelta(seconds=wait) <= timedelta(minutes=5, seconds=15)
