"""Calendar periods of caps, aligned to a time zone (weeks start on Monday)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, tzinfo
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


def _offset(ts: int, tz: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(ts, tz).utcoffset()


def _transition(lo: int, hi: int, tz: tzinfo) -> int:
    """The first second in ``(lo, hi]`` whose UTC offset differs from ``lo``'s."""
    offset = _offset(lo, tz)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(mid, tz) == offset:
            lo = mid
        else:
            hi = mid
    return hi


def _hour(sec: int, tz: tzinfo) -> PeriodWindow:
    """The local clock hour holding ``sec``, cut short where the offset changes.

    Zones that move their clocks by half an hour (Australia/Lord_Howe) make
    local hours that would overlap; cutting at the change keeps periods
    contiguous, disjoint and distinctly keyed.
    """
    now = datetime.fromtimestamp(sec, tz)
    offset = now.utcoffset()
    top = sec - now.minute * 60 - now.second
    start = top if _offset(top, tz) == offset else _transition(top, sec, tz)
    end = top + 3600
    if _offset(end - 1, tz) != offset:
        end = _transition(sec, end - 1, tz)
    begin = datetime.fromtimestamp(start, tz)
    return PeriodWindow(
        begin.isoformat(timespec="minutes"), begin, datetime.fromtimestamp(end, tz)
    )


def period_window(period: Period, tz: tzinfo, timestamp: float) -> PeriodWindow:
    """Return the period of kind ``period`` in ``tz`` that contains ``timestamp``.

    ``timestamp`` is wall-clock time in seconds since the epoch. Periods are
    contiguous: each one's ``end`` is the next one's ``start``.
    """
    sec = math.floor(timestamp)  # clock changes fall on whole seconds
    if period == "hour":
        return _hour(sec, tz)
    today = datetime.fromtimestamp(sec, tz).date()
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
