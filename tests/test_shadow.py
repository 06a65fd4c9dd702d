"""Shadow mode (``Limiter(..., shadow=True)``, contract 18): hard caps never
refuse; what they would have refused is reported (an alert of kind
``"shadow"`` once per cap and period, every one logged) and counted all the
same; rates still wait. The same counters as the enforced caps, so turning
shadow mode off carries the usage over.

Every test runs on the memory, SQLite and Redis stores, on asyncio and trio.
"""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal

import pytest

from conftest import Make
from helpers import settle
from ratebudget import AcquireTimeout, Alert, BudgetExceeded, Cap, InvalidRequest, Rate
from ratebudget.testing import FakeClock

D = Decimal


async def test_caps_report_what_they_would_refuse(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Alert] = []
    limiter = make(
        Cap(usd="1", per="day"),
        Cap(tokens=100),
        name="rollout",
        shadow=True,
        on_alert=got.append,
        clock=FakeClock(),
    )
    assert limiter.shadow
    with caplog.at_level(logging.INFO, logger="ratebudget"):
        async with limiter.acquire(usd="0.8", tokens=80) as lease:
            await lease.commit(usd="0.8", tokens=80)
        # both caps would refuse this one: it is granted and counted
        async with limiter.acquire(usd="0.5", tokens=50) as lease:
            await lease.commit(usd="0.5", tokens=50)
        await limiter.record(usd="0.1")  # the usd cap again: logged only
        await settle()
        await limiter.flush_alerts()
    usd, tokens = (await limiter.snapshot()).limits
    assert (usd.used, usd.reserved, tokens.used) == (D("1.4"), 0, 130)
    assert [(a.kind, a.axis, a.requested, a.used) for a in got] == [
        ("shadow", "usd", D("0.5"), D("0.8")),
        ("shadow", "tokens", 50, 80),
    ]
    assert got[0].period == usd.period
    assert got[0].scope == limiter.name
    assert "would have refused usd=0.5" in str(got[0])
    logged = [r for r in caplog.records if "would have refused" in r.getMessage()]
    assert len(logged) == 3  # two alerts, and the record's refusal


async def test_turning_shadow_off_keeps_the_usage(make: Make) -> None:
    shadow = make(Cap(tokens=100), name="caps", shadow=True)
    await shadow.record(tokens=150)
    enforced = make(Cap(tokens=100), name="caps")
    with pytest.raises(BudgetExceeded) as refused:
        await enforced.acquire(tokens=1)
    assert refused.value.used == 150
    # and the other way round: shadow mode counts what enforcement counted
    again = make(Cap(tokens=100), name="caps", shadow=True)
    assert (await again.snapshot())[0].used == 150


async def test_reservations_neither_block_nor_report(make: Make) -> None:
    got: list[Alert] = []
    limiter = make(Cap(tokens=100), shadow=True, on_alert=got.append)
    held = await limiter.acquire(tokens=60)
    # enforced, this one would wait for the reservation; in shadow it goes
    second = await limiter.try_acquire(tokens=60)
    assert second is not None
    await second.release()
    await held.release()
    await limiter.flush_alerts()
    assert got == []


async def test_rates_still_wait(make: Make) -> None:
    limiter = make(
        Rate(tokens=10, per=1), Cap(tokens=5), shadow=True, clock=FakeClock()
    )
    await limiter.acquire(tokens=10)
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(tokens=5, timeout=0.1)


async def test_soft_caps_are_left_as_they_are(make: Make) -> None:
    got: list[Alert] = []
    limiter = make(
        Cap(tokens=10, soft=True, alert_at=(1.0,)), shadow=True, on_alert=got.append
    )
    await limiter.record(tokens=20)
    await settle()
    await limiter.flush_alerts()
    assert [a.kind for a in got] == ["threshold"]


async def test_a_shadow_alert_has_its_own_stable_id(make: Make) -> None:
    got: list[Alert] = []
    limiter = make(
        Cap(tokens=10, alert_at=(1.0,)), name="ids", shadow=True, on_alert=got.append
    )
    await limiter.record(tokens=10)  # reaches 100%: a threshold alert
    await limiter.record(tokens=1)  # past it: a shadow alert
    await settle()
    await limiter.flush_alerts()
    threshold, shadow = got
    assert (threshold.kind, shadow.kind) == ("threshold", "shadow")
    assert threshold.id != shadow.id
    # the amount refused is not part of the id: one per cap and period
    assert shadow.id == dataclasses.replace(shadow, requested=99).id


def test_the_blocking_facade_reports_too(make: Make) -> None:
    got: list[Alert] = []
    limiter = make(Cap(tokens=10), shadow=True, on_alert=got.append)
    with limiter.sync.acquire(tokens=11) as lease:
        lease.commit(tokens=11)
    assert limiter.sync.flush_alerts(timeout=10)
    assert [(a.kind, a.requested) for a in got] == [("shadow", 11)]


def test_shadow_must_be_a_bool() -> None:
    from ratebudget import Limiter

    with pytest.raises(InvalidRequest, match="shadow"):
        Limiter(Cap(tokens=1), shadow="yes")  # type: ignore[arg-type]


async def test_one_shadow_alert_a_period_across_limiter_objects(make: Make) -> None:
    """The latch is in the store: limiter objects of one name (processes, on
    a shared store) send one shadow alert a cap and period in all."""
    got: list[Alert] = []
    a = make(Cap(tokens=10), name="latch", shadow=True, on_alert=got.append)
    b = make(Cap(tokens=10), name="latch", shadow=True, on_alert=got.append)
    await a.record(tokens=11)
    await b.record(tokens=5)
    async with b.acquire(tokens=3):
        pass
    await settle()
    await a.flush_alerts()
    await b.flush_alerts()
    assert [(x.kind, x.requested) for x in got] == [("shadow", 11)]
