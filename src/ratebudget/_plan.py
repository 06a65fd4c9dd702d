"""Limits -> the plan a store runs: integer parameters and state keys.

A rate's key names its whole spec, so a redeclared rate starts a fresh
bucket; a cap's key names its axis, period, zone and kind but not its
limit, so a raised or lowered cap applies at once to the usage so far, and
limiters of one name with different caps count in the same counters.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import timedelta, timezone, tzinfo
from typing import Any

from ._decide import Bucket, CapSlot, Plan, State, Window
from ._exceptions import InvalidRequest
from ._limits import Cap, Rate
from ._periods import Period, period_window

__all__ = (
    "CapSpec",
    "PlanSpec",
    "RateSpec",
    "cap_key",
    "limits_of",
    "plan_spec",
    "spec_of",
    "window_us",
)


@dataclass(frozen=True, slots=True)
class RateSpec:
    """A rate in integers: ``rate`` level units per tick, ``per`` level units
    per unit of the axis, ``cap`` the burst in level units, ``debt`` the
    deepest debt in level units (one period's refill; ``None``: unbounded)."""

    key: str
    rate: int
    per: int
    cap: int
    debt: int | None = None


@dataclass(frozen=True, slots=True)
class CapSpec:
    """A cap in integers; ``shadow``: a hard cap that only reports what it
    would have refused (its key is still the hard cap's: same counter)."""

    key: str
    limit: int
    hard: bool
    per: Period | None
    tz: tzinfo
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """A limiter's limits as a store sees them, in the limiter's order."""

    slots: tuple[RateSpec | CapSpec, ...]
    tick_ns: int

    def bind(self, st: State, now: int) -> Plan:
        """The plan over ``st``'s state (created where missing)."""
        slots: list[Bucket | CapSlot] = []
        for s in self.slots:
            if isinstance(s, RateSpec):
                slots.append(st.bucket(s.key, s.rate, s.per, s.cap, now, s.debt))
            else:
                window = None if s.per is None else window_us(s.per, s.tz)
                slots.append(
                    CapSlot(st.counter(s.key, window), s.limit, s.hard, s.shadow)
                )
        st.set_roll()
        return Plan(slots, self.tick_ns)


@functools.lru_cache(maxsize=256)
def window_us(per: Period, tz: tzinfo) -> Any:
    """The function giving the ``per`` period (in ``tz``) holding a wall time in µs."""

    def window(wall: int) -> Window:
        w = period_window(per, tz, wall / 1e6)
        return (w.key, round(w.start.timestamp() * 1e6), round(w.end_ts * 1e6))

    return window


def _tz_name(tz: object) -> str:
    """A zone's IANA key, or its fixed offset as ``UTC+02:00``."""
    return str(getattr(tz, "key", None) or tz)


def _tz_of(name: str) -> str | tzinfo:
    """The inverse of ``_tz_name``."""
    if name.startswith("UTC") and len(name) > 3:  # a fixed offset: UTC+02:00
        sign = -1 if name[3] == "-" else 1
        hours, _, minutes = name[4:].partition(":")
        return timezone(sign * timedelta(hours=int(hours), minutes=int(minutes or 0)))
    return name


def cap_key(cap: Cap) -> str:
    """The key of a cap's counter: its axis, period, zone and kind, not its
    limit (limiters of one name with different limits share the counter)."""
    kind = "soft" if cap.soft else "hard"
    return f"c:{cap.axis}:{cap.per or 'life'}:{_tz_name(cap.tz)}:{kind}"


def plan_spec(
    limits: tuple[Rate | Cap, ...], tick_ns: int, shadow: bool = False
) -> PlanSpec:
    """The store's view of ``limits`` for a clock counting ``tick_ns`` per tick
    (``shadow``: hard caps report instead of refusing)."""
    slots: list[RateSpec | CapSpec] = []
    seen: set[str] = set()
    for limit in limits:
        if isinstance(limit, Rate):
            per_ns = limit._per_ns
            if per_ns % tick_ns:
                raise InvalidRequest(
                    f"{limit!r}: a persistent store counts whole microseconds; "
                    "use a period that is a whole number of microseconds"
                )
            per_ticks = per_ns // tick_ns
            g = math.gcd(limit._limit_units, per_ticks)
            rate, per = limit._limit_units // g, per_ticks // g
            key = f"r:{limit.axis}:{limit._limit_units}:{limit._burst_units}:{per_ns // 1000}"
            slot: RateSpec | CapSpec = RateSpec(
                key, rate, per, limit._burst_units * per, limit._limit_units * per
            )
        else:
            key = cap_key(limit)
            watch = shadow and not limit.soft
            slot = CapSpec(
                key,
                limit._limit_units,
                not limit.soft and not watch,
                limit.per,
                limit.tz,
                watch,
            )
        base, k = slot.key, 1
        while slot.key in seen:
            k += 1
            slot = (
                RateSpec(f"{base}#{k}", slot.rate, slot.per, slot.cap, slot.debt)
                if isinstance(slot, RateSpec)
                else CapSpec(
                    f"{base}#{k}", slot.limit, slot.hard, slot.per, slot.tz, slot.shadow
                )
            )
        seen.add(slot.key)
        slots.append(slot)
    return PlanSpec(tuple(slots), tick_ns)


def spec_of(limits: tuple[Rate | Cap, ...]) -> dict[str, Any]:
    """A JSON description of ``limits`` that ``limits_of`` turns back into them."""
    out: list[dict[str, Any]] = []
    for x in limits:
        if isinstance(x, Rate):
            out.append(
                {
                    "kind": "rate",
                    "axis": x.axis,
                    "limit": str(x.limit),
                    "burst": str(x.burst),
                    "per": x._per_ns / 1e9,
                }
            )
        else:
            out.append(
                {
                    "kind": "cap",
                    "axis": x.axis,
                    "limit": str(x.limit),
                    "per": x.per,
                    "tz": _tz_name(x.tz),
                    "soft": x.soft,
                    "alert_at": list(x.alert_at),
                }
            )
    return {"limits": out}


def limits_of(spec: dict[str, Any]) -> tuple[Rate | Cap, ...]:
    """The limits a ``spec_of`` description names."""
    out: list[Rate | Cap] = []
    for x in spec.get("limits", ()):
        if x["kind"] == "rate":
            out.append(Rate(per=x["per"], burst=x["burst"], **{x["axis"]: x["limit"]}))
        else:
            out.append(
                Cap(
                    per=x["per"],
                    tz=_tz_of(x["tz"]),
                    soft=x["soft"],
                    alert_at=tuple(x["alert_at"]),
                    **{x["axis"]: x["limit"]},
                )
            )
    return tuple(out)
