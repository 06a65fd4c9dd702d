"""Burn charts: each USD cap's spend over its current period, from the ledger.

The period is cut into the forecast's buckets (``_forecast.BUCKETS``); the
ledger's counted rows of the scope and its descendants are summed per
bucket by the forecast's own ``history`` (the bucket under way included),
and added up into a cumulative line that ends now. The chart's other lines
are the cap's limit and its forecast (``LimitStatus.forecast``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._amounts import from_units
from .._forecast import BUCKETS, history
from .._periods import period_window

if TYPE_CHECKING:
    from .._ledger import Ledger
    from ..cli._status_reader import LimitStatus, ScopeStatus

__all__ = ("burn_charts",)

_AXIS = "usd"


def _ms(t: datetime) -> int:
    return round(t.timestamp() * 1000)


def _text(units: int) -> str:
    return f"{from_units(_AXIS, units):f}"


def burn_charts(
    scopes: list[ScopeStatus], ledger: Ledger | None
) -> list[dict[str, Any]]:
    """A chart per USD cap with a calendar period (blocking: reads the ledger).

    Times are milliseconds since the epoch, USD amounts exact strings.
    """
    charts = []
    for scope in scopes:
        s = scope.status
        if s.at is None:
            continue
        for index, limit in enumerate(s.limits):
            if limit.kind == "cap" and limit.axis == _AXIS and limit.per is not None:
                charts.append(_chart(s.name, index, limit, s.at, ledger))
    return charts


def _chart(
    scope: str, index: int, limit: LimitStatus, at: datetime, ledger: Ledger | None
) -> dict[str, Any]:
    assert limit.per is not None
    assert limit.resets_at is not None
    now_us = round(at.timestamp() * 1_000_000)
    window = period_window(
        limit.per,  # type: ignore[arg-type]  # a Cap's period name
        limit.resets_at.tzinfo,  # type: ignore[arg-type]  # the cap's zone
        now_us / 1e6,
    )
    start_ms, end_ms = _ms(window.start), _ms(window.end)
    points: list[list[Any]] = []
    reason = None
    if ledger is None:
        reason = "no ledger: give --ledger URL to chart the spend"
    else:
        width_us = (end_ms - start_ms) * 1000 // BUCKETS
        # the bucket under way counts as done: its rows so far are summed too
        sums = history(
            ledger._db, scope, _AXIS, window.start, window.end, now_us + width_us
        )
        total = 0
        points.append([start_ms, "0"])
        for i, units in enumerate(sums):
            total += units
            t_ms = min(start_ms + (i + 1) * width_us // 1000, now_us // 1000)
            points.append([t_ms, _text(total)])
    forecast = limit.forecast
    return {
        "scope": scope,
        "index": index,
        "per": limit.per,
        "period": limit.period,
        "start": start_ms,
        "end": end_ms,
        "start_at": window.start.isoformat(),  # in the cap's zone, for labels
        "end_at": window.end.isoformat(),
        "now": now_us // 1000,
        "limit": f"{limit.limit:f}",
        "soft": limit.soft,
        "used": f"{limit.used:f}",
        "reserved": f"{limit.reserved:f}",
        "points": points,
        "reason": reason,
        "forecast": None
        if forecast is None
        else {
            "expected": _maybe(forecast.expected),
            "low": _maybe(forecast.low),
            "high": _maybe(forecast.high),
            "exhausts_at": None
            if forecast.exhausts_at is None
            else _ms(forecast.exhausts_at),
            "reason": forecast.reason,
        },
    }


def _maybe(value: object) -> str | None:
    return None if value is None else f"{value:f}"
