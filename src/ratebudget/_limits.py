"""``Rate`` and ``Cap``: validated, immutable limit specs of one axis each."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import Final, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._amounts import Amount, brief, check_axis, from_units, to_units
from ._exceptions import InvalidRequest
from ._periods import PERIODS, Period

__all__ = ("Cap", "Limit", "Rate")

_PER_NAMES: Final = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_NS: Final = 1_000_000_000
_MAX_PER_DAYS: Final = 36525
_MAX_PER_S: Final = _MAX_PER_DAYS * 86400
"""The longest period of a rate: 100 years of 365.25 days (3.2e18 ns)."""
_PER_BOUNDS: Final = f"between 1 ns and 100 years ({_MAX_PER_DAYS} days)"

Threshold = float | Decimal | Fraction
"""An ``alert_at`` fraction of a cap's limit: ``0.8`` means 80%."""

_MAX_THRESHOLD: Final = 10
"""The largest ``alert_at`` fraction: ten times the limit (soft caps overrun)."""


def _one_axis(kind: str, amounts: dict[str, Amount]) -> tuple[str, Amount]:
    if len(amounts) != 1:
        got = ", ".join(sorted(amounts)) or "none"
        raise InvalidRequest(
            f"{kind} takes exactly one axis, like {kind}(tokens=90_000, ...); got {got}"
        )
    ((axis, value),) = amounts.items()
    return check_axis(axis), value


def _per_ns(per: float | timedelta | str) -> int:
    if isinstance(per, str):
        try:
            return _PER_NAMES[per] * _NS
        except KeyError:
            names = ", ".join(repr(n) for n in _PER_NAMES)
            raise InvalidRequest(
                f"per={brief(per)}: use seconds, a timedelta or one of {names}"
            ) from None
    if isinstance(per, timedelta):
        ns = (per // timedelta(microseconds=1)) * 1000
    elif isinstance(per, (int, float)) and not isinstance(per, bool):
        # compared before scaling: 1e300 seconds would overflow; NaN fails too
        ns = round(per * _NS) if 0 < per <= _MAX_PER_S else 0
    else:
        raise InvalidRequest(
            f"per={brief(per)}: use seconds, a timedelta or a name like 'minute'"
        )
    if not 0 < ns <= _MAX_PER_S * _NS:
        raise InvalidRequest(f"per={brief(per)}: the period must be {_PER_BOUNDS}")
    return ns


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)


class Rate(_Frozen):
    """A token bucket on one axis: refills at ``limit / per`` up to ``burst``.

    ``Rate(tokens=90_000, per="minute")``. ``per`` is seconds, a ``timedelta``
    or ``"second" | "minute" | "hour" | "day"``, from 1 ns to 100 years;
    ``burst`` defaults to the limit. ``limit`` and ``burst`` are at most
    2**63 - 1 units. Callers wait for a rate; a request above ``burst`` is
    rejected with ``InvalidRequest``, since it could never be served. A burst
    equal to a per-minute limit admits up to twice the limit in a rolling
    minute: size ``burst`` smaller to smooth.
    """

    __slots__ = (
        "_burst_units",
        "_limit_units",
        "_per_ns",
        "axis",
        "burst",
        "limit",
        "per",
    )
    axis: str
    limit: int | Decimal
    burst: int | Decimal
    per: timedelta
    _limit_units: int
    _burst_units: int
    _per_ns: int

    def __init__(
        self,
        *,
        per: float | timedelta | str,
        burst: Amount | None = None,
        **limit: Amount,
    ) -> None:
        axis, value = _one_axis("Rate", limit)
        limit_units = to_units(axis, value)
        if limit_units <= 0:
            raise InvalidRequest(
                f"Rate({axis}={brief(value)}): the limit must be positive"
            )
        burst_units = limit_units if burst is None else to_units(axis, burst)
        if burst_units <= 0:
            raise InvalidRequest(
                f"Rate(burst={brief(burst)}): the burst must be positive"
            )
        per_ns = _per_ns(per)
        self._set("axis", axis)
        self._set("_limit_units", limit_units)
        self._set("_burst_units", burst_units)
        self._set("_per_ns", per_ns)
        self._set("limit", from_units(axis, limit_units))
        self._set("burst", from_units(axis, burst_units))
        self._set("per", timedelta(microseconds=per_ns // 1000))

    @property
    def per_seconds(self) -> float:
        """The refill period in seconds."""
        return self._per_ns / _NS

    def _key(self) -> tuple[object, ...]:
        return (self.axis, self._limit_units, self._burst_units, self._per_ns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(("Rate", *self._key()))

    def __repr__(self) -> str:
        burst = (
            ""
            if self._burst_units == self._limit_units
            else f", burst={_amount_repr(self.burst)}"
        )
        limit = _amount_repr(self.limit)
        return f"Rate({self.axis}={limit}, per={_per_repr(self._per_ns)}{burst})"


def _amount_repr(value: int | Decimal) -> str:
    """``10`` or ``'0.025'``: what one would type (a string keeps USD exact)."""
    return repr(f"{value:f}") if isinstance(value, Decimal) else repr(value)


def _per_repr(per_ns: int) -> str:
    for name, seconds in _PER_NAMES.items():
        if per_ns == seconds * _NS:
            return repr(name)
    return f"{per_ns / _NS:g}"


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        offset: timedelta | None = None
        failure: Exception | None = None
        try:  # what finding a period does: a bare tzinfo fails here
            offset = datetime.now(tz).utcoffset()
        except Exception as exc:
            failure = exc
        if offset is None:
            raise InvalidRequest(
                f"tz={brief(tz)}: this tzinfo gives no UTC offset; "
                "use an IANA zone name like 'Europe/Berlin'"
            ) from failure
        return tz
    if not isinstance(tz, str):
        raise InvalidRequest(
            f"tz={brief(tz)}: use an IANA zone name like 'Europe/Berlin'"
        )
    if tz.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(tz)
    # OSError: a directory of the zone database ("Europe"), a name too long
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidRequest(
            f"tz={brief(tz)}: unknown time zone (on Windows, install ratebudget[tz])"
        ) from exc


def _threshold(t: object, alert_at: object) -> float:
    """One ``alert_at`` fraction as a float, or ``InvalidRequest``."""
    number: Threshold | None = None
    if isinstance(t, Decimal):
        number = t if t.is_finite() else None
    elif isinstance(t, (int, float, Fraction)) and not isinstance(t, bool):
        number = t
    hint = ""
    # compared before float(): 10**400 has no float; NaN fails the comparison
    if number is not None:
        if number > 0 and number <= _MAX_THRESHOLD and float(number) > 0:
            return float(number)  # not 0.0, as Decimal("1e-1000") would be
        if number > _MAX_THRESHOLD and number <= 100:
            percent = float(number)
            hint = f"; for {percent:g}% write {percent / 100:g}"
    raise InvalidRequest(
        f"alert_at={brief(alert_at)}: {brief(t)} is not a threshold; thresholds "
        f"are fractions of the limit, above 0 and at most {_MAX_THRESHOLD} "
        f"(0.8 means 80%){hint}"
    )


class Cap(_Frozen):
    """An absolute budget on one axis, for the lifetime or a calendar period.

    ``Cap(usd="25", per="day", tz="Europe/Berlin")``. ``per`` is ``None``
    (never resets) or ``"hour" | "day" | "week" | "month" | "year"``, aligned
    to ``tz`` (UTC by default; weeks start on Monday). A hard cap raises
    ``BudgetExceeded`` rather than let usage cross it; a ``soft`` cap never
    blocks and only reports. Each ``alert_at`` fraction of the limit (above 0,
    at most 10: ``0.8`` means 80%) fires one ``Alert`` per period when usage
    first reaches it. The limit is at most 2**63 - 1 units.
    """

    __slots__ = ("_limit_units", "alert_at", "axis", "limit", "per", "soft", "tz")
    axis: str
    limit: int | Decimal
    per: Period | None
    tz: tzinfo
    soft: bool
    alert_at: tuple[float, ...]
    _limit_units: int

    def __init__(
        self,
        *,
        per: Period | None = None,
        tz: str | tzinfo = "UTC",
        soft: bool = False,
        alert_at: tuple[Threshold, ...] | list[Threshold] = (),
        **limit: Amount,
    ) -> None:
        axis, value = _one_axis("Cap", limit)
        limit_units = to_units(axis, value)  # 0 is a valid budget: nothing allowed
        if per is not None and not (isinstance(per, str) and per in PERIODS):
            names = ", ".join(repr(p) for p in PERIODS)
            raise InvalidRequest(
                f"per={brief(per)}: use None (lifetime) or one of {names}"
            )
        if not isinstance(soft, bool):
            raise InvalidRequest(f"soft={brief(soft)}: expected a bool")
        if not isinstance(alert_at, (tuple, list)):
            raise InvalidRequest(
                f"alert_at={brief(alert_at)}: expected a tuple of fractions, "
                "like (0.8, 1.0)"
            )
        thresholds = [_threshold(t, alert_at) for t in alert_at]
        self._set("axis", axis)
        self._set("_limit_units", limit_units)
        self._set("limit", from_units(axis, limit_units))
        self._set("per", per)
        self._set("tz", _zone(tz))
        self._set("soft", soft)
        self._set("alert_at", tuple(sorted(set(thresholds))))

    def _key(self) -> tuple[object, ...]:
        return (
            self.axis,
            self._limit_units,
            self.per,
            str(self.tz),
            self.soft,
            self.alert_at,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cap) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(("Cap", *self._key()))

    def __repr__(self) -> str:
        parts = [f"{self.axis}={_amount_repr(self.limit)}", f"per={self.per!r}"]
        if str(self.tz) != "UTC":
            parts.append(f"tz={str(self.tz)!r}")
        if self.soft:
            parts.append("soft=True")
        if self.alert_at:
            parts.append(f"alert_at={self.alert_at!r}")
        return f"Cap({', '.join(parts)})"


Limit = Rate | Cap
