"""Runaways: spend in a short window far above a scope's trailing baseline.

``Runaway(window="5m", factor=5, min_usd="1", action="alert" | "block")``
on a scope watches the USD its leases commit (and ``record()`` reports),
its descendants' included. The spend of the last ``window`` is a runaway
when it is at least ``min_usd`` and more than ``factor`` times the scope's
usual spend per window over the ``baseline`` before it (12 windows unless
given). A scope with less history than that is judged against ``min_usd``
alone. A runaway alerts once (``kind="runaway"``), and with
``action="block"`` every acquisition of the scope and its descendants
raises ``BudgetExceeded(reason="runaway")`` until the window calms.

The watch counts what this process commits: a loop runs in one process,
and is caught there within the window. Spend spread thin over many
processes is what caps are for.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Final, Literal

from ._amounts import Amount, from_units, to_units
from ._exceptions import BudgetExceeded, InvalidRequest

if TYPE_CHECKING:
    from ._alerts import Dispatch
    from ._limits import Cap
    from ._snapshot import Alert

__all__ = ("Runaway", "Watch")

_PARTS: Final = 20  # buckets per window
_UNITS: Final = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_SPAN: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _seconds(name: str, value: object) -> float:
    """``"5m"``, ``"30s"``, ``"1h"``, ``"1d"`` or a number of seconds."""
    if isinstance(value, str):
        m = _SPAN.fullmatch(value.strip())
        if m is None:
            raise InvalidRequest(
                f"{name}={value!r}: use a duration like '30s', '5m', '1h' or seconds"
            )
        got = float(m.group(1)) * _UNITS[m.group(2)]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        got = float(value)
    else:
        raise InvalidRequest(
            f"{name}={value!r}: use a duration like '30s', '5m', '1h' or seconds"
        )
    if not (math.isfinite(got) and 1 <= got <= 366 * 86_400):
        raise InvalidRequest(f"{name}={value!r}: between 1 second and a year")
    return got


def _ratio(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else format(float(f), "g")


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True, init=False)
class Runaway:
    """Watch a scope's spend for runaways (``Limiter(..., runaway=...)``).

    ``window``: the span judged (``"5m"``); ``factor``: how far above the
    trailing baseline per window its spend must be; ``min_usd``: the least
    spend in a window that can be a runaway; ``action``: ``"alert"`` (an
    ``Alert`` of kind ``"runaway"``) or ``"block"`` (also refuse the scope's
    acquisitions with ``BudgetExceeded(reason="runaway")`` until it calms);
    ``baseline``: how far back the usual spend is measured, before the
    window (default 12 windows).
    """

    window: float  # seconds
    factor: Fraction
    min_usd: Decimal
    action: Literal["alert", "block"]
    baseline: float  # seconds

    def __init__(
        self,
        window: str | float = "5m",
        factor: float | str | Decimal = 5,
        min_usd: Amount = "1",
        action: Literal["alert", "block"] = "alert",
        baseline: str | float | None = None,
    ) -> None:
        span = _seconds("window", window)
        try:
            ratio = Fraction(str(factor)) if not isinstance(factor, bool) else None
        except (ValueError, ZeroDivisionError):
            ratio = None
        if ratio is None or not 1 <= ratio <= 10**6:
            raise InvalidRequest(
                f"factor={factor!r}: how many times the usual spend, from 1 to 10**6"
            )
        floor = from_units("usd", to_units("usd", min_usd))
        if floor <= 0:
            raise InvalidRequest(
                f"min_usd={min_usd!r}: above 0 (the least spend a runaway can be)"
            )
        if action not in ("alert", "block"):
            raise InvalidRequest(f"action={action!r}: use 'alert' or 'block'")
        back = 12 * span if baseline is None else _seconds("baseline", baseline)
        if back < span:
            raise InvalidRequest(
                f"baseline={baseline!r}: at least the window ({_span(span)})"
            )
        object.__setattr__(self, "window", span)
        object.__setattr__(self, "factor", ratio)
        object.__setattr__(self, "min_usd", Decimal(floor))
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "baseline", back)

    def __repr__(self) -> str:
        return (
            f"Runaway(window={_span(self.window)!r}, factor={_ratio(self.factor)}, "
            f"min_usd={str(self.min_usd)!r}, action={self.action!r}, "
            f"baseline={_span(self.baseline)!r})"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """A watch's judgement now: the window's spend, the baseline per window
    (``None``: too little history), the threshold it was held to."""

    runaway: bool
    spent: int  # usd units in the window
    per_window: Fraction | None  # usd units per window before it
    threshold: int  # usd units: about where a window becomes a runaway

    @property
    def baseline(self) -> int | None:
        return None if self.per_window is None else round(self.per_window)


def _calm(spent: int, verdict: Verdict) -> bool:
    """Whether a window that spent ``spent`` ends a runaway: half its threshold."""
    return spent * 2 <= verdict.threshold


class Watch:
    """One scope's runaway watch: its spend in buckets of a twentieth of the
    window, for the window and the baseline before it (thread-safe)."""

    def __init__(self, rule: Runaway, scope: str | None, born_ns: int) -> None:
        self.rule = rule
        self.scope = scope
        self.width = max(1, round(rule.window * 1e9 / _PARTS))  # ns
        self.back = max(1, round(rule.baseline * 1e9 / self.width))  # buckets
        self.floor = to_units("usd", rule.min_usd)
        self.born = born_ns
        self.spend: dict[int, int] = {}  # bucket -> usd units
        self.episode: int | None = None  # when the runaway began (wall µs)
        self.alerted: int | None = None  # the last alert (monotonic ns)
        self.lock = threading.Lock()
        # set by the scope's limiter: where its alerts go, the cap they name
        self.routes: tuple[Dispatch, ...] = ()
        self.cap: Cap | None = None

    def _judge(self, now_ns: int) -> Verdict:
        b = now_ns // self.width
        oldest = b - _PARTS + 1 - self.back
        for k in [k for k in self.spend if k < oldest]:
            del self.spend[k]
        spent = base = 0
        for k, units in self.spend.items():
            if k > b - _PARTS:
                spent += units
            else:
                base += units
        if now_ns - self.born < (self.back + _PARTS) * self.width:
            return Verdict(self._runs(spent, None), spent, None, self.floor)
        # the usual spend per window, and the threshold above it
        per_window = Fraction(base * _PARTS, self.back)
        threshold = max(self.floor, math.floor(self.rule.factor * per_window))
        return Verdict(self._runs(spent, per_window), spent, per_window, threshold)

    def _runs(self, spent: int, per_window: Fraction | None) -> bool:
        """Whether ``spent`` in a window is a runaway against ``per_window``
        (``None``: too little history, ``min_usd`` alone)."""
        if spent < self.floor:
            return False
        return per_window is None or spent > self.rule.factor * per_window

    def add(self, now_ns: int, wall_us: int, units: int) -> Alert | None:
        """Count ``units`` spent now; the alert of a runaway that begins."""
        with self.lock:
            if units > 0:
                b = now_ns // self.width
                self.spend[b] = self.spend.get(b, 0) + units
            return self._step(now_ns, wall_us)[2]

    def check(self, now_ns: int, wall_us: int) -> tuple[Verdict, bool, Alert | None]:
        """The verdict now, whether a runaway runs (a calm window ends it),
        and the alert of one that begins."""
        with self.lock:
            return self._step(now_ns, wall_us)

    def _step(self, now_ns: int, wall_us: int) -> tuple[Verdict, bool, Alert | None]:
        """A runaway begins (its alert), goes on, or ends: it goes on until
        the window's spend is back to half its threshold. At most one alert
        a window: a spend wavering about the threshold does not flood."""
        verdict = self._judge(now_ns)
        if self.episode is not None:
            if not _calm(verdict.spent, verdict):
                return verdict, True, None
            self.episode = None
        if not verdict.runaway:
            return verdict, False, None
        self.episode = wall_us
        if self.alerted is not None and now_ns - self.alerted < _PARTS * self.width:
            return verdict, True, None
        self.alerted = now_ns
        return verdict, True, self._alert(verdict, wall_us)

    def _alert(self, verdict: Verdict, wall_us: int) -> Alert:
        from ._snapshot import Alert

        assert self.cap is not None
        began = _EPOCH + timedelta(microseconds=wall_us)
        return Alert(
            cap=self.cap,
            threshold=float(self.rule.factor),
            used=from_units("usd", verdict.spent),
            period=began.isoformat(timespec="seconds"),
            resets_at=None,
            scope=self.scope,
            kind="runaway",
            baseline=(
                None
                if verdict.baseline is None
                else Decimal(from_units("usd", verdict.baseline))
            ),
            window=_span(self.rule.window),
            blocking=self.rule.action == "block",
        )

    def calm_at(self, now_ns: int, verdict: Verdict) -> int:
        """When the window calms (its spend back to half the threshold) if
        nothing more is spent (monotonic ns)."""
        b = now_ns // self.width
        left = verdict.spent
        for k in sorted(k for k in self.spend if k > b - _PARTS):
            left -= self.spend[k]
            if _calm(left, verdict):
                return (k + _PARTS) * self.width  # when bucket k leaves it
        return (b + 1) * self.width

    def refusal(
        self,
        verdict: Verdict,
        now_ns: int,
        wall_us: int,
        requested: int,
        labels: dict[str, str] | None,
    ) -> BudgetExceeded:
        """The ``BudgetExceeded`` of an acquisition refused while it runs away."""
        calm_us = wall_us + (self.calm_at(now_ns, verdict) - now_ns) // 1000
        calm = _EPOCH + timedelta(microseconds=calm_us)
        spent = from_units("usd", verdict.spent)
        usual = (
            "it has too little history for a baseline"
            if verdict.baseline is None
            else f"its usual spend is {from_units('usd', verdict.baseline)}"
        )
        where = f" of {self.scope!r}" if self.scope else ""
        window = _span(self.rule.window)
        return BudgetExceeded(
            f"runaway spend{where}: {spent} USD in the last {window} ({usual} "
            f"per {window}; {self.rule!r}); acquisitions are refused until the "
            f"window calms, about {calm.isoformat(timespec='seconds')}",
            axis="usd",
            limit=from_units("usd", verdict.threshold),
            used=spent,
            requested=from_units("usd", requested),
            resets_at=calm,
            scope=self.scope,
            labels=labels,
            reason="runaway",
        )
