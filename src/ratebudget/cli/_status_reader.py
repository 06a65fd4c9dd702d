"""What ``ratebudget status`` reports: every limiter a persistent store knows.

:func:`status` reads the limiters registered on a store (SQLite, Redis), or
one of them, and returns a :class:`LimiterStatus` per limiter: the state of
each of its limits now, from the same ``snapshot`` operation a limiter's own
``snapshot()`` runs. The command line only renders these.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from .._exceptions import InvalidRequest, StoreUnavailable
from .._forecast import Forecast, with_forecasts
from .._limits import Cap, Rate
from .._plan import RateSpec, plan_spec
from .._snapshot import LimitSnapshot, snapshot_of
from ..stores import MemoryStore, Store, limits_of, open_store
from ..stores import _ops as ops
from ..stores._remote import SharedStore
from ..stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from .._ledger import Ledger

__all__ = (
    "LimitStatus",
    "LimiterStatus",
    "ScopeStatus",
    "UnknownLimiter",
    "status",
    "status_tree",
)

_NAMED_PERIODS = {60 * 60 * 24: "day", 60 * 60: "hour", 60: "minute", 1: "second"}
_LEASE_TTL = 600.0  # s: how long the snapshot keeps a lease it reclaims


class UnknownLimiter(InvalidRequest):
    """No limiter of the name asked for is registered on the store."""


def _json_value(value: object) -> object:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _per_name(per_ns: int) -> str:
    """``"minute"`` for a named period, else seconds: ``"90s"``, ``"0.5s"``."""
    if per_ns % 1_000_000_000 == 0 and per_ns // 1_000_000_000 in _NAMED_PERIODS:
        return _NAMED_PERIODS[per_ns // 1_000_000_000]
    return f"{per_ns / 1e9:g}s"


def _tz_name(tz: object) -> str:
    return str(getattr(tz, "key", None) or tz)


@dataclass(frozen=True)
class LimitStatus:
    """One limit of a limiter, now.

    For a rate, ``limit`` is what refills per ``per``, ``burst`` what the
    bucket holds at most, ``available`` what it holds now (negative while in
    debt), ``used`` the drawn part of the burst and ``remaining`` what a
    caller could take at once; ``reserved`` is always zero. For a cap,
    ``per`` is its calendar period (``None``: lifetime), ``used`` what was
    committed this period, ``reserved`` what outstanding leases hold,
    ``remaining`` what is left, ``period`` the period's key and ``resets_at``
    when it ends; ``forecast`` its usage expected at the end of the period
    (when the status was read with a ledger).
    """

    kind: Literal["rate", "cap"]
    axis: str
    limit: int | Decimal
    per: str | None
    per_seconds: float | None
    burst: int | Decimal | None
    soft: bool
    tz: str | None
    used: int | Decimal
    reserved: int | Decimal
    remaining: int | Decimal
    available: int | Decimal | None
    period: str | None
    resets_at: datetime | None
    forecast: Forecast | None = None

    @classmethod
    def from_snapshot(cls, snap: LimitSnapshot) -> LimitStatus:
        spec = snap.limit
        if isinstance(spec, Rate):
            return cls(
                kind="rate",
                axis=snap.axis,
                limit=spec.limit,
                per=_per_name(spec._per_ns),
                per_seconds=spec.per_seconds,
                burst=spec.burst,
                soft=False,
                tz=None,
                used=snap.used,
                reserved=snap.reserved,
                remaining=snap.remaining,
                available=snap.tokens,
                period=None,
                resets_at=None,
            )
        assert isinstance(spec, Cap)
        return cls(
            kind="cap",
            axis=snap.axis,
            limit=spec.limit,
            per=spec.per,
            per_seconds=None,
            burst=None,
            soft=spec.soft,
            tz=_tz_name(spec.tz),
            used=snap.used,
            reserved=snap.reserved,
            remaining=snap.remaining,
            available=None,
            period=snap.period,
            resets_at=snap.resets_at,
            forecast=snap.forecast,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: Decimals as strings, datetimes as ISO 8601."""
        return {
            "kind": self.kind,
            "axis": self.axis,
            "limit": _json_value(self.limit),
            "per": self.per,
            "per_seconds": self.per_seconds,
            "burst": _json_value(self.burst),
            "soft": self.soft,
            "tz": self.tz,
            "used": _json_value(self.used),
            "reserved": _json_value(self.reserved),
            "remaining": _json_value(self.remaining),
            "available": _json_value(self.available),
            "period": self.period,
            "resets_at": _json_value(self.resets_at),
            **({} if self.forecast is None else {"forecast": _forecast(self.forecast)}),
        }


def _forecast(f: Forecast) -> dict[str, Any]:
    return {
        "expected": _json_value(f.expected),
        "low": _json_value(f.low),
        "high": _json_value(f.high),
        "exhausts_at": _json_value(f.exhausts_at),
        "reason": f.reason,
    }


@dataclass(frozen=True)
class LimiterStatus:
    """A limiter registered on a store and the state of its limits.

    ``at`` is the store's clock when the state was read. ``error`` says why
    the limits could not be read (a spec this version cannot rebuild); then
    ``limits`` is empty.
    """

    name: str
    limits: tuple[LimitStatus, ...]
    at: datetime | None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: Decimals as strings, datetimes as ISO 8601."""
        return {
            "name": self.name,
            "at": _json_value(self.at),
            "error": self.error,
            "limits": [limit.to_json() for limit in self.limits],
        }


def _check_exists(store: Store) -> None:
    """A status must not create an SQLite file where there was none."""
    from ..stores.sqlite import SQLiteStore

    if (
        isinstance(store, SQLiteStore)
        and store.path != ":memory:"
        and not os.path.exists(store.path)
    ):
        raise StoreUnavailable(
            f"no SQLite store at {store.path}: the file does not exist"
        )


def _read(
    store: Store, name: str, spec: dict[str, Any], ledger: Ledger | None = None
) -> LimiterStatus:
    try:
        limits = limits_of(spec)
    except (InvalidRequest, KeyError, TypeError, ValueError) as e:
        return LimiterStatus(
            name, (), None, f"cannot rebuild its limits from {spec!r}: {e}"
        )
    assert isinstance(store, SharedStore)
    spec_ = plan_spec(limits, 1000)
    # store.execute, not a limiter: a status reads, so it does not register
    # the spec again over one a limiter may have just redeclared
    ttl = round(_LEASE_TTL * 1e6)
    root = spec.get("root")
    if isinstance(root, str) and root != name and store.scopes:
        # a scope: its state lies under its root's (Redis: the root's slot)
        answer = store.execute_path(
            [name], [spec_], [ops.Snapshot()], ttl=ttl, keep=ttl, root=root
        )
    else:
        answer = store.execute(name, spec_, [ops.Snapshot()], ttl=ttl, keep=ttl)
    (got,) = answer.results
    assert isinstance(got, tuple)
    views, waiting = got
    pers = tuple(s.per if isinstance(s, RateSpec) else 1 for s in spec_.slots)
    snap = snapshot_of(limits, views, pers, waiting)
    if ledger is not None:
        snap = with_forecasts(snap, ledger, name, answer.now)
    at = datetime.fromtimestamp(answer.now / 1e6, timezone.utc)
    return LimiterStatus(
        name, tuple(LimitStatus.from_snapshot(s) for s in snap.limits), at
    )


def _live(
    store: SharedStore, specs: dict[str, dict[str, Any]], every: bool = False
) -> dict[str, dict[str, Any]]:
    """``specs`` with the limits ``Limiter.update`` stored in force instead
    (``every``: and every other name's, a per-key template's ``name/`` too)."""
    _rev, live = store.read_live()
    out = dict(specs)
    for name, raw in live.items():
        if name not in out and not every:
            continue
        try:
            limits = json.loads(raw)["limits"]
        except (ValueError, TypeError, KeyError):
            continue  # the code's, as its limiters keep them too
        out[name] = {**out.get(name, {}), "limits": limits}
    return out


def status(
    store_url_or_store: str | Store | MemoryStore,
    name: str | None = None,
    ledger: Ledger | None = None,
) -> list[LimiterStatus]:
    """The state of every limiter registered on a store, or of those whose
    name is ``name`` (a glob pattern if it has ``*``, ``?`` or ``[``:
    ``"acme/*"``).

    Takes a URL (``"sqlite:///budgets.db"``, ``"redis://..."``) or a store
    object; a store this function opened from a URL is closed again, and an
    SQLite file is opened read-only (nothing in it is created or changed).
    Raises ``InvalidRequest`` for a URL it cannot use, a ``memory://`` store
    (its state lives inside one process) or a file that is not a ratebudget
    store, ``UnknownLimiter`` when no limiter is ``name``, and
    ``StoreUnavailable`` when the store cannot be read (a missing SQLite
    file included: a status creates nothing). With a ``ledger``, each cap
    carries its ``forecast``.
    """
    if isinstance(store_url_or_store, str):
        store = open_store(store_url_or_store)
        owned = True
        if isinstance(store, SQLiteStore):  # a status never writes
            store = SQLiteStore(store.path, timeout=store.timeout, readonly=True)
    else:
        store, owned = store_url_or_store, False
    if isinstance(store, MemoryStore):
        raise InvalidRequest(
            "memory:// keeps a limiter's state inside its own process: there "
            "is nothing to show from outside it; use a sqlite:/// or redis:// store"
        )
    if not isinstance(store, SharedStore):
        raise InvalidRequest(
            f"store={store_url_or_store!r}: expected a URL or a store object"
        )
    try:
        _check_exists(store)
        specs = _live(store, store.limiters())
        if name is not None:
            pattern = any(c in name for c in "*?[")
            chosen = {
                n: spec
                for n, spec in specs.items()
                if (fnmatch.fnmatchcase(n, name) if pattern else n == name)
            }
            if not chosen:
                known = ", ".join(repr(n) for n in specs) or "none"
                what = "matches" if pattern else "named"
                raise UnknownLimiter(
                    f"no limiter {what} {name!r} on {store.url} (limiters: {known})"
                )
            specs = chosen
        return [_read(store, n, spec, ledger) for n, spec in specs.items()]
    finally:
        if owned:
            store.close()


@dataclass(frozen=True)
class ScopeStatus:
    """A scope of a budgets file (or a key of its per-key scopes found on the
    store), how deep in the tree, its owner, and its state."""

    depth: int
    owner: str | None
    per_key: bool
    status: LimiterStatus

    def to_json(self) -> dict[str, Any]:
        return {
            **self.status.to_json(),
            "depth": self.depth,
            "owner": self.owner,
            "per_key": self.per_key,
        }


def status_tree(
    config: str | os.PathLike[str],
    store_url: str | None = None,
    ledger: Ledger | None = None,
) -> tuple[str, list[ScopeStatus]]:
    """The state of every scope a budgets file describes (``ratebudget.load``'s
    format), parents first, with the keys of its per-key scopes that the
    store knows; and the store's URL (``store_url``, else the file's).
    The limits shown are the file's, or those ``Limiter.update`` stored.
    With a ``ledger``, each cap carries its ``forecast``."""
    from .._budgets import read
    from .._plan import spec_of

    budgets = read(config)
    url = store_url or budgets.settings.get("store")
    if not url:
        raise InvalidRequest(f"{budgets.path} names no store: give --store URL")
    store = open_store(url)
    if isinstance(store, SQLiteStore):  # a status never writes
        store = SQLiteStore(store.path, timeout=store.timeout, readonly=True)
    if not isinstance(store, SharedStore):
        raise InvalidRequest(
            "memory:// keeps a limiter's state inside its own process: there "
            "is nothing to show from outside it; use a sqlite:/// or redis:// store"
        )
    root = budgets.root.name
    out: list[ScopeStatus] = []
    try:
        _check_exists(store)

        in_force = _live(store, {}, every=True)  # what ``update`` stored

        def show(
            name: str, limits: tuple[Rate | Cap, ...], template: str = ""
        ) -> LimiterStatus:
            # the limits stored for it, else for its template (a key), else the file's
            spec = dict(in_force.get(name) or in_force.get(template) or spec_of(limits))
            if name != root:
                spec["root"] = root
            return _read(store, name, spec, ledger)

        def walk(node: Any, depth: int) -> None:
            out.append(
                ScopeStatus(depth, node.owner, False, show(node.name, node.limits))
            )
            if node.per_key is not None:
                limits, _max, owner = node.per_key
                children = {c.name for c in node.children}
                out.extend(
                    ScopeStatus(
                        depth + 1, owner, True, show(name, limits, node.name + "/")
                    )
                    for name in store.keys_of(node.name, root)
                    if name not in children
                )
            for child in node.children:
                walk(child, depth + 1)

        walk(budgets.root, 0)
    finally:
        store.close()
    return url, out
