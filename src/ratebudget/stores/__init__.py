"""Where limiter state lives: memory (default), SQLite (one host), Redis (many).

``Limiter(..., store="sqlite:///budgets.db", name="openai-prod")`` or a store
object. ``open_store(url)`` turns a URL into a store:

- ``memory://``: this process only (the default);
- ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: every
  process of one host;
- ``redis://host:6379/0``, ``rediss://...``, ``unix:///path/redis.sock``:
  every process of every host (needs the ``redis`` extra).
"""

from __future__ import annotations

import math
import threading
from datetime import timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidRequest
from .._limits import Cap, Rate
from .._periods import period_window
from ._base import Store
from ._core import CapP, Plan, RateP

if TYPE_CHECKING:
    from .._engine import Engine
    from .redis import RedisStore
    from .sqlite import SQLiteStore

__all__ = (
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "open_store",
)


class MemoryStore:
    """State in this process: limiters of one name on one ``MemoryStore`` share it."""

    url = "memory://"
    persistent = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, tuple[tuple[Rate | Cap, ...], Engine]] = {}

    def engine(self, name: str, limits: tuple[Rate | Cap, ...], make: Any) -> Engine:
        """The engine of limiter ``name``, made by ``make()`` the first time."""
        with self._lock:
            got = self._engines.get(name)
            if got is not None and got[0] == limits:
                return got[1]
            engine: Engine = make()
            self._engines[name] = (limits, engine)
            return engine

    def __repr__(self) -> str:
        return "MemoryStore()"


def __getattr__(name: str) -> Any:  # the stores import their drivers lazily
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(name)


def open_store(url: str) -> Store | MemoryStore:
    """The store a URL names (see the module's docstring)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"store={url!r}: expected a URL or a store object")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidRequest(
            f"store={url!r}: expected a URL like 'sqlite:///budgets.db' or "
            "'redis://localhost:6379/0'"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise InvalidRequest(f"store={url!r}: no file; try 'sqlite:///budgets.db'")
        from .sqlite import SQLiteStore

        return SQLiteStore(path)
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        return RedisStore(url)
    raise InvalidRequest(
        f"store={url!r}: unknown scheme {scheme!r}; use memory://, sqlite:/// or redis://"
    )


# -- what the stores know of a limiter ------------------------------------


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


def plan_of(limits: tuple[Rate | Cap, ...]) -> Plan:
    """The store's view of ``limits``: integer parameters and state keys.

    A rate's key names its whole spec, so a redeclared rate starts a fresh
    bucket; a cap's key names its axis, period, zone and kind but not its
    limit, so a raised or lowered cap applies at once to the usage so far.
    """
    slots: list[RateP | CapP] = []
    seen: set[str] = set()
    for limit in limits:
        if isinstance(limit, Rate):
            per_ns = limit._per_ns
            if per_ns % 1000:
                raise InvalidRequest(
                    f"{limit!r}: a persistent store counts whole microseconds; "
                    "use a period that is a whole number of microseconds"
                )
            per_us = per_ns // 1000
            g = math.gcd(limit._limit_units, per_us)
            rate, per = limit._limit_units // g, per_us // g
            key = f"r:{limit.axis}:{limit._limit_units}:{limit._burst_units}:{per_us}"
            slot: RateP | CapP = RateP(key, rate, per, limit._burst_units * per)
        else:
            kind = "soft" if limit.soft else "hard"
            key = f"c:{limit.axis}:{limit.per or 'life'}:{_tz_name(limit.tz)}:{kind}"
            slot = CapP(key, limit._limit_units, not limit.soft)
        base, k = slot.key, 1
        while slot.key in seen:
            k += 1
            slot = (
                RateP(f"{base}#{k}", slot.rate, slot.per, slot.cap)
                if isinstance(slot, RateP)
                else CapP(f"{base}#{k}", slot.limit, slot.hard)
            )
        seen.add(slot.key)
        slots.append(slot)
    return Plan(tuple(slots))


def periods_of(limits: tuple[Rate | Cap, ...], wall: float) -> list[str]:
    """The current period key of every cap ("" for rates and lifetime caps)."""
    return [
        period_window(x.per, x.tz, wall).key
        if isinstance(x, Cap) and x.per is not None
        else ""
        for x in limits
    ]


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
