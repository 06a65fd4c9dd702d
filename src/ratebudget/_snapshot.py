"""Frozen views of a limiter's state: ``Snapshot``, ``LimitSnapshot``, ``Alert``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from ._limits import Cap, Rate

__all__ = ("Alert", "LimitSnapshot", "Snapshot")


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
    """A cap's usage reached ``threshold`` (a fraction of its limit) this period."""

    limit: Cap
    threshold: float
    used: int | Decimal
    period: str | None
    resets_at: datetime | None

    @property
    def axis(self) -> str:
        return self.limit.axis

    def __str__(self) -> str:
        scope = f" in period {self.period}" if self.period else ""
        return (
            f"{self.limit!r} reached {self.threshold:.0%} of its limit{scope}: "
            f"used {self.used} of {self.limit.limit}"
        )
