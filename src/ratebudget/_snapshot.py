"""Frozen views of a limiter's state: ``Snapshot``, ``LimitSnapshot``, ``Alert``."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

from ._amounts import _EXACT, from_units
from ._decide import Crossing, Exceeded, Shadowed, SlotView, TooLong
from ._exceptions import AcquireTimeout, BudgetExceeded
from ._forecast import Forecast
from ._limits import Cap, Rate
from ._plan import cap_key

__all__ = (
    "Alert",
    "LimitSnapshot",
    "Snapshot",
    "alerts_of",
    "exceeded",
    "snapshot_of",
    "timed_out",
)


@dataclass(frozen=True, slots=True)
class LimitSnapshot:
    """The state of one limit at one moment.

    For a rate, ``tokens`` is what the bucket holds now (negative while in
    debt), ``used`` what has been drawn and not yet refilled and
    ``remaining`` the tokens available now. For a cap, ``used`` is committed
    usage this period, ``reserved`` what outstanding leases hold,
    ``remaining`` what a new acquisition could still take, ``period`` the
    period's key (``"2026-11"``) and ``resets_at`` when it ends.
    """

    limit: Rate | Cap
    kind: Literal["rate", "cap"]
    axis: str
    limit_amount: int | Decimal
    used: int | Decimal
    reserved: int | Decimal
    remaining: int | Decimal
    tokens: int | Decimal | None = None
    period: str | None = None
    resets_at: datetime | None = None
    forecast: Forecast | None = None
    """A cap's usage expected at the end of its period (``None`` for a rate):
    made from the limiter's ledger; without one, or with too little history,
    its ``reason`` says why it has no amounts."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every limit of a limiter at one moment, plus how many callers wait."""

    limits: tuple[LimitSnapshot, ...]
    waiting: int

    def remaining(self, axis: str) -> int | Decimal | None:
        """What the tightest hard cap on ``axis`` has left (soft caps if none).

        ``None`` when no cap counts ``axis``.
        """
        caps = [s for s in self.limits if s.kind == "cap" and s.axis == axis]
        hard = [s for s in caps if isinstance(s.limit, Cap) and not s.limit.soft]
        pool = hard or caps
        if not pool:
            return None
        return min(s.remaining for s in pool)

    def __getitem__(self, index: int) -> LimitSnapshot:
        return self.limits[index]

    def __len__(self) -> int:
        return len(self.limits)


@dataclass(frozen=True, slots=True)
class Alert:
    """A cap's usage reached ``threshold`` (a fraction of its limit) this period.

    ``cap`` is the :class:`Cap`; ``axis``, ``limit`` (an amount, as in
    :class:`BudgetExceeded`), ``used`` and ``resets_at`` are read as
    ``BudgetExceeded`` gives them.
    """

    cap: Cap
    threshold: float
    used: int | Decimal
    period: str | None
    resets_at: datetime | None
    scope: str | None = None
    """The name of the limiter whose cap it is (``None``: an unnamed one)."""
    kind: str = "threshold"
    """What happened: ``"threshold"``, usage reached ``threshold``; or
    ``"shadow"``, a cap of a ``Limiter(shadow=True)`` would have refused
    ``requested`` (``used`` is its usage then; ``threshold`` is 1.0); or
    ``"forecast"``, the hard cap's ``forecast`` crosses its limit (once per
    period, when a snapshot makes it); or ``"runaway"``, the scope's spend in
    a short window runs far above its usual (see ``Runaway``)."""
    requested: int | Decimal | None = None
    """``"shadow"``: the amount the cap would have refused."""
    forecast: Forecast | None = None
    """``"forecast"``: the forecast that crosses the hard cap (its
    ``expected`` usage at the end of the period is above the limit; ``used``
    is the usage now; ``threshold`` is 1.0)."""
    baseline: Decimal | None = None
    """``"runaway"``: the scope's usual USD per window (``None``: too little
    history; judged against ``min_usd`` alone). ``used`` is the window's
    spend, ``threshold`` the ``Runaway``'s factor, ``period`` when the
    runaway began (UTC, ISO 8601), ``cap`` the scope's USD cap."""
    window: str | None = None
    """``"runaway"``: the window judged (``"5m"``)."""
    blocking: bool = False
    """``"runaway"``: whether the scope's acquisitions are refused until it calms."""

    @property
    def id(self) -> str:
        """A stable id: the same for the same (scope, cap, threshold, period,
        kind) in every process, for receivers that deduplicate.

        The cap is named by its counter's key (axis, period length, zone,
        hard or soft), not by its limit: raising a cap within a period does
        not make an alert already sent a new one.
        """
        parts = (
            self.scope or "",
            cap_key(self.cap),
            repr(float(self.threshold)),
            self.period or "",
            self.kind,
        )
        digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
        return "alert_" + digest[:24]

    @property
    def axis(self) -> str:
        """The cap's axis (``"usd"``, ``"tokens"``...)."""
        return self.cap.axis

    @property
    def limit(self) -> int | Decimal:
        """The cap's limit, an amount (``BudgetExceeded.limit`` likewise)."""
        return self.cap.limit

    def __str__(self) -> str:
        period = f" in period {self.period}" if self.period else ""
        where = f"{self.scope}: " if self.scope else ""
        if self.kind == "runaway":
            usual = (
                "too little history for a baseline"
                if self.baseline is None
                else f"usually {self.baseline} per {self.window}"
            )
            then = "blocked until it calms" if self.blocking else "alert only"
            return (
                f"{where}runaway spend: {self.used} USD in the last {self.window} "
                f"({usual}; factor {self.threshold:g}); {then}"
            )
        if self.kind == "forecast" and self.forecast is not None:
            f = self.forecast
            when = (
                f" (exhausted at {f.exhausts_at.isoformat()})" if f.exhausts_at else ""
            )
            return (
                f"{where}{self.cap!r} is forecast to use {f.expected} "
                f"({f.low} to {f.high}) by the end of period {self.period}, over "
                f"its limit of {self.limit}{when}: used {self.used} so far"
            )
        if self.kind == "shadow":
            return (
                f"{where}{self.cap!r} would have refused {self.axis}={self.requested}"
                f"{period} (shadow mode): used {self.used} of {self.limit}"
            )
        return (
            f"{where}{self.cap!r} reached {self.threshold:.0%} of its limit{period}: "
            f"used {self.used} of {self.limit}"
        )


# -- the one builder of views, alerts and refusals from raw counts -------------------


def _when(end_us: int | None) -> datetime | None:
    return (
        None if end_us is None else datetime.fromtimestamp(end_us / 1e6, timezone.utc)
    )


def _resets_at(cap: Cap, end_us: int | None) -> datetime | None:
    when = _when(end_us)
    return None if when is None else when.astimezone(cap.tz)


def snapshot_of(
    limits: tuple[Rate | Cap, ...],
    views: tuple[SlotView, ...],
    pers: tuple[int, ...],
    waiting: int,
) -> Snapshot:
    """A ``Snapshot`` from the store's raw view (``pers``: each rate's level
    units per unit of its axis)."""
    out: list[LimitSnapshot] = []
    for spec, view, per in zip(limits, views, pers, strict=True):
        axis = spec.axis
        if isinstance(spec, Rate):
            tokens = view.level // per
            burst = spec._burst_units
            out.append(
                LimitSnapshot(
                    limit=spec,
                    kind="rate",
                    axis=axis,
                    limit_amount=spec.limit,
                    used=from_units(axis, burst - tokens),
                    reserved=from_units(axis, 0),
                    remaining=from_units(axis, max(tokens, 0)),
                    tokens=from_units(axis, tokens),
                )
            )
        else:
            left = max(0, spec._limit_units - view.used - view.reserved)
            out.append(
                LimitSnapshot(
                    limit=spec,
                    kind="cap",
                    axis=axis,
                    limit_amount=spec.limit,
                    used=from_units(axis, view.used),
                    reserved=from_units(axis, view.reserved),
                    remaining=from_units(axis, left),
                    period=view.period or None,
                    resets_at=_resets_at(spec, view.end),
                )
            )
    return Snapshot(limits=tuple(out), waiting=waiting)


def exceeded(
    limits: tuple[Rate | Cap, ...],
    refusal: Exceeded,
    req: tuple[int, ...],
    kind: str,
    scope: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> BudgetExceeded:
    """The ``BudgetExceeded`` for a store's refusal of ``req``."""
    spec = limits[refusal.slot]
    assert isinstance(spec, Cap)
    axis = spec.axis
    used = from_units(axis, refusal.used)
    requested = from_units(axis, req[refusal.slot])
    resets_at = _resets_at(spec, refusal.end)
    period = f" this {spec.per}" if spec.per else ""
    resets = f"; it resets at {resets_at.isoformat()}" if resets_at else ""
    where = f" of {scope!r}" if scope else ""
    return BudgetExceeded(
        f"{kind} {axis}={requested} would push {spec!r}{where} past its limit: "
        f"{used} of {spec.limit} used{period}{resets}",
        axis=axis,
        limit=spec.limit,
        used=used,
        reserved=from_units(axis, refusal.reserved),
        requested=requested,
        resets_at=resets_at,
        scope=scope,
        labels=labels,
    )


def timed_out(refusal: TooLong, tick_ns: int, timeout_ns: int | None) -> AcquireTimeout:
    """The ``AcquireTimeout`` for a wait foreseen (or found) too long."""
    if refusal.wait is None:
        return AcquireTimeout(
            "acquisition was not granted within its timeout", retry_after=None
        )
    retry = refusal.wait * tick_ns / 1e9
    return AcquireTimeout(
        f"acquisition needs {retry:.3f}s; timeout is {(timeout_ns or 0) / 1e9:g}s",
        retry_after=retry,
    )


def shadow_alert(
    limits: tuple[Rate | Cap, ...], x: Shadowed, scope: str | None
) -> Alert:
    """The alert of what a shadow cap would have refused."""
    spec = limits[x.slot]
    assert isinstance(spec, Cap)
    return Alert(
        cap=spec,
        threshold=1.0,
        used=from_units(spec.axis, x.used),
        period=x.period or None,
        resets_at=_resets_at(spec, x.end),
        scope=scope,
        kind="shadow",
        requested=from_units(spec.axis, x.requested),
    )


def alerts_of(
    limits: tuple[Rate | Cap, ...],
    crossings: list[Crossing],
    scopes: Sequence[str | None],
) -> tuple[list[tuple[Crossing, Alert]], list[str]]:
    """The alerts a change of usage fired (each with its crossing), and
    notes of hard caps it overran; ``scopes``: the scope of each slot."""
    alerts: list[tuple[Crossing, Alert]] = []
    overruns: list[str] = []
    for c in crossings:
        spec = limits[c.slot]
        assert isinstance(spec, Cap)
        scope = scopes[c.slot]
        for t in spec.alert_at:
            # exact, whatever the caller's decimal context
            units = math.ceil(_EXACT.multiply(Decimal(repr(t)), spec._limit_units))
            if c.before < units <= c.after:
                alerts.append(
                    (
                        c,
                        Alert(
                            cap=spec,
                            threshold=t,
                            used=from_units(spec.axis, c.after),
                            period=c.period or None,
                            resets_at=_resets_at(spec, c.end),
                            scope=scope,
                        ),
                    )
                )
        if not spec.soft and c.after > spec._limit_units:
            where = f" of {scope!r}" if scope else ""
            overruns.append(
                f"commit pushed {spec!r}{where} over its limit: "
                f"used {from_units(spec.axis, c.after)}"
            )
    return alerts, overruns
