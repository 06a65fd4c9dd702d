"""Forecasts: a cap's usage at the end of its own period, from the ledger.

A cap's period is cut into ``BUCKETS`` equal buckets. The ledger's counted
rows (``committed`` and ``recorded``) of the scope and its descendants are
summed per complete bucket so far; a straight line fitted to those sums by
least squares is the spend rate, and what it spends from now to the end of
the period, added to what the cap holds now (used and reserved), is the
forecast. The line keeps a slope only when the history shows a trend beyond
its noise (95%); else it is flat at the mean. The interval is a 99%
prediction interval of that line with independent noise per bucket
(Student's t): it widens with noisy history, with a trend and with a long
way to go.

With fewer than ``MIN_BUCKETS`` complete buckets (the first eighth of the
period: the first 3 hours of a day, about 4 days of a month) there is no
forecast, only its reason: nothing is divided by a period just begun.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from ._amounts import from_units

if TYPE_CHECKING:
    from ._ledger import Ledger
    from ._ledger_db import Database
    from ._limits import Cap
    from ._snapshot import Snapshot

__all__ = (
    "BUCKETS",
    "MIN_BUCKETS",
    "Forecast",
    "forecast",
    "history",
    "unknown",
    "with_forecasts",
)

BUCKETS: Final = 48  # per period
MIN_BUCKETS: Final = 6  # complete ones before a forecast is made
_COUNTED: Final = "('committed', 'recorded')"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Student's t, two-sided 99% (the 0.995 quantile), by degrees of freedom
_T99: Final = (
    63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169,
    3.106, 3.055, 3.012, 2.977, 2.947, 2.921, 2.898, 2.878, 2.861, 2.845,
    2.831, 2.819, 2.807, 2.797, 2.787, 2.779, 2.771, 2.763, 2.756, 2.750,
)  # fmt: skip
_T99_FAR: Final = (2.704, 2.660)  # dof 31-40, 41-60 (the lower dof's: never narrower)
# the 0.975 quantile (a trend is kept when its slope is beyond 95% noise)
_T95: Final = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_T95_FAR: Final = (2.021, 2.000)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A cap's usage expected at the end of its period (``LimitSnapshot.forecast``).

    ``expected`` is demand, not clamped at a hard cap: what the period would
    use at the rate its history shows, counting what outstanding leases
    reserve. ``low`` and ``high`` bound it (a 99% prediction interval).
    ``exhausts_at`` is when the expected usage reaches the cap's limit
    (now, if it has; ``None`` if it does not within the period). When there
    is no forecast, every amount is ``None`` and ``reason`` says why (a
    lifetime cap, no ledger, too little history).
    """

    expected: int | Decimal | None
    low: int | Decimal | None
    high: int | Decimal | None
    exhausts_at: datetime | None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.expected is not None


def unknown(reason: str) -> Forecast:
    """No forecast, for ``reason``."""
    return Forecast(None, None, None, None, reason)


def _us(t: datetime) -> int:
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def history(
    db: Database, scope: str, axis: str, start: datetime, end: datetime, now_us: int
) -> list[int]:
    """The counted units on ``axis`` of ``scope`` and its descendants in each
    complete bucket of the period ``start``..``end`` before ``now_us``."""
    lo, hi = _us(start), _us(end)
    width = max(1, (hi - lo) // BUCKETS)
    done = min(BUCKETS, max(0, (now_us - lo) // width))
    if done == 0:
        return []
    m = db.mark
    amount, params = db.amount(axis)
    rows = db.query(
        f"SELECT (at_us - {int(lo)}) / {int(width)}, SUM({amount}) FROM rb_ledger "
        f"WHERE outcome IN {_COUNTED} AND at_us >= {m} AND at_us < {m} "
        f"AND (scope = {m} OR substr(scope, 1, {m}) = {m}) "
        f"GROUP BY (at_us - {int(lo)}) / {int(width)}",
        [*params, lo, lo + done * width, scope, len(scope) + 1, scope + "/"],
    )
    sums = [0] * done
    for bucket, total in rows:
        if total is not None and 0 <= int(bucket) < done:
            sums[int(bucket)] += int(total)
    return sums


def _area(a: float, b: float, lo: float, hi: float) -> float:
    """The integral of ``max(0, a + b x)`` from ``lo`` to ``hi``."""
    if hi <= lo:
        return 0.0
    if b != 0:
        root = -a / b
        if lo < root < hi:  # the line crosses zero inside: keep its positive part
            if b > 0:
                lo = root
            else:
                hi = root
    mid = a + b * (lo + hi) / 2
    return max(0.0, mid) * (hi - lo)


def _t(table: tuple[float, ...], far: tuple[float, float], dof: int) -> float:
    if dof <= len(table):
        return table[dof - 1]
    return far[0] if dof <= 40 else far[1]


def _fit(sums: Sequence[int], p: float) -> tuple[float, float, float, float]:
    """The spend per bucket that ``sums`` show, as ``a + b x`` (``x``:
    buckets from the period's start), and the low and high ends of the 99%
    interval of what it spends from ``p`` to the end of the period.

    The rate is a straight line ``a + b x`` when the history shows a trend
    (its slope beyond 95% noise); else it is flat, the mean, since a line
    through a few noisy buckets would send a steady spend anywhere. While a
    trend cannot be told from noise, the interval covers both: it is wide
    early in a period, and narrows as the history grows.
    """
    k = len(sums)
    xs = [i + 0.5 for i in range(k)]  # each bucket's middle
    x_bar = sum(xs) / k
    y_bar = sum(sums) / k
    sxx = sum((x - x_bar) ** 2 for x in xs)
    b = sum((x - x_bar) * (y - y_bar) for x, y in zip(xs, sums, strict=True)) / sxx
    a = y_bar - b * x_bar
    left = BUCKETS - p
    mid = (p + BUCKETS) / 2
    sigma2 = sum((y - a - b * x) ** 2 for x, y in zip(xs, sums, strict=True)) / (k - 2)
    # the line's error over what is left, and the noise of the buckets to come
    var = sigma2 * (left + left * left * (1 / k + (mid - x_bar) ** 2 / sxx))
    line = _area(a, b, p, BUCKETS)
    line_spread = _t(_T99, _T99_FAR, k - 2) * math.sqrt(var)
    low, high = line - line_spread, line + line_spread
    if abs(b) > _t(_T95, _T95_FAR, k - 2) * math.sqrt(sigma2 / sxx):
        return a, b, low, high
    flat = y_bar * left
    flat_var = sum((y - y_bar) ** 2 for y in sums) / (k - 1) * (left + left * left / k)
    flat_spread = _t(_T99, _T99_FAR, k - 1) * math.sqrt(flat_var)
    return y_bar, 0.0, min(low, flat - flat_spread), max(high, flat + flat_spread)


def forecast(
    cap: Cap,
    used: int,
    reserved: int,
    start: datetime,
    end: datetime,
    now_us: int,
    sums: Sequence[int],
    partial: int = 0,
) -> Forecast:
    """The forecast of ``cap`` (raw units: ``used``, ``reserved``) in the
    period ``start``..``end`` at ``now_us``, from ``sums`` (``history``);
    ``partial``: what the ledger holds of the part under way."""
    axis = cap.axis
    k = len(sums)
    if k < MIN_BUCKETS:
        first = (end - start) * MIN_BUCKETS / BUCKETS
        return unknown(
            f"history too short: a forecast needs the period's first {_span(first)} "
            f"(its first {MIN_BUCKETS} of {BUCKETS} parts)"
        )
    now_units = used + reserved
    if sum(sums) == 0 and used > 0:
        if partial > 0:  # the spend began in the part of the period under way
            part = (end - start) / BUCKETS
            return unknown(
                f"history too short: this period's usage began within its last "
                f"{_span(part)} (a forecast needs a trend over its parts)"
            )
        return unknown(
            "the ledger holds no usage of this period, while the cap counts "
            f"{from_units(axis, used)} (was the ledger off?)"
        )
    lo, hi = _us(start), _us(end)
    width = (hi - lo) / BUCKETS
    p = min(BUCKETS, (now_us - lo) / width)  # now, in buckets from the start
    a, b, low_ahead, high_ahead = _fit(sums, p)
    ahead = _area(a, b, p, BUCKETS)
    expected = now_units + round(ahead)
    low = now_units + max(0, round(low_ahead))
    high = now_units + round(high_ahead)
    limit = cap._limit_units
    exhausts: datetime | None = None
    if now_units >= limit:
        exhausts = _at(now_us, cap)
    elif expected > limit:
        need = limit - now_units
        x0, x1 = p, float(BUCKETS)
        for _ in range(60):  # the cumulative spend only grows: bisect
            x = (x0 + x1) / 2
            if _area(a, b, p, x) >= need:
                x1 = x
            else:
                x0 = x
        exhausts = _at(round(lo + x1 * width), cap)
    return Forecast(
        from_units(axis, expected),
        from_units(axis, low),
        from_units(axis, high),
        exhausts,
    )


def _at(us: int, cap: Cap) -> datetime:
    """UTC µs as a time in the cap's zone (as its ``resets_at``)."""
    return (_EPOCH + timedelta(microseconds=us)).astimezone(cap.tz)


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 2 * 3_600:
        return f"{seconds / 3_600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"


NO_LEDGER: Final = unknown(
    "no usage history: forecasts are made from a ledger (Limiter(ledger=...))"
)
LIFETIME: Final = unknown("a lifetime cap has no period end to forecast")


def needs_history(snap: Snapshot) -> bool:
    """Whether forecasting ``snap`` reads a ledger (a cap with a period)."""
    return any(s.kind == "cap" and s.period for s in snap.limits)


def with_forecasts(
    snap: Snapshot, ledger: Ledger | None, scope: str, now_us: int
) -> Snapshot:
    """``snap`` with a forecast for each cap, from ``ledger``'s rows of
    ``scope`` (a blocking read of the ledger: run it off the event loop)."""
    from dataclasses import replace

    from ._amounts import to_units
    from ._limits import Cap
    from ._periods import period_window

    out = []
    for s in snap.limits:
        spec = s.limit
        if not isinstance(spec, Cap):
            out.append(s)
            continue
        if spec.per is None:
            made = LIFETIME
        elif ledger is None:
            made = NO_LEDGER
        else:
            window = period_window(spec.per, spec.tz, now_us / 1e6)
            db, axis = ledger._db, spec.axis
            sums = history(db, scope, axis, window.start, window.end, now_us)
            used = to_units(axis, s.used)
            partial = 0
            if used and not any(sums):  # is its spend all in the part under way?
                width = (_us(window.end) - _us(window.start)) // BUCKETS
                ahead = now_us + width
                got = history(db, scope, axis, window.start, window.end, ahead)
                partial = sum(got) - sum(sums)
            made = forecast(
                spec,
                used,
                to_units(axis, s.reserved),
                window.start,
                window.end,
                now_us,
                sums,
                partial,
            )
        out.append(replace(s, forecast=made))
    return replace(snap, limits=tuple(out))
