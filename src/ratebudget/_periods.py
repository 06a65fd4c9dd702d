"""Calendar periods of caps, aligned to a time zone (weeks start on Monday)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Final, Literal

__all__ = ("PERIODS", "Period", "PeriodWindow", "period_window")

Period = Literal["hour", "day", "week", "month", "year"]
PERIODS: Final[tuple[Period, ...]] = ("hour", "day", "week", "month", "year")


class PeriodWindow:
    """One calendar period: its key (``"2026-11"``) and its bounds."""

    __slots__ = ("end", "end_ts", "key", "start")

    def __init__(self, key: str, start: datetime, end: datetime) -> None:
        self.key = key
        self.start = start
        self.end = end
        self.end_ts = end.timestamp()

    def __repr__(self) -> str:
        return f"PeriodWindow({self.key!r}, {self.start.isoformat()} .. {self.end.isoformat()})"


def _midnight(d: date, tz: tzinfo) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=tz)


def period_window(period: Period, tz: tzinfo, timestamp: float) -> PeriodWindow:
    """Return the period of kind ``period`` in ``tz`` that contains ``timestamp``.

    ``timestamp`` is wall-clock time in seconds since the epoch.
    """
    now = datetime.fromtimestamp(timestamp, tz)
    if period == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        end = (start.astimezone(timezone.utc) + timedelta(hours=1)).astimezone(tz)
        if end.timestamp() <= timestamp:  # a zone whose hours are not whole (rare)
            end = (now.astimezone(timezone.utc) + timedelta(hours=1)).astimezone(tz)
        return PeriodWindow(start.isoformat(timespec="minutes"), start, end)
    today = now.date()
    if period == "day":
        first, nxt = today, today + timedelta(days=1)
        key = first.isoformat()
    elif period == "week":
        first = today - timedelta(days=today.weekday())
        nxt = first + timedelta(days=7)
        year, week, _ = first.isocalendar()
        key = f"{year}-W{week:02d}"
    elif period == "month":
        first = today.replace(day=1)
        nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        key = f"{first.year:04d}-{first.month:02d}"
    elif period == "year":
        first = date(today.year, 1, 1)
        nxt = date(today.year + 1, 1, 1)
        key = f"{first.year:04d}"
    else:  # pragma: no cover - validated by Cap
        raise ValueError(f"unknown period {period!r}")
    return PeriodWindow(key, _midnight(first, tz), _midnight(nxt, tz))
