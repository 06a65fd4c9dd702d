"""``ratebudget ledger verify``: does the ledger add up to the store's counters?

For every cap of every limiter registered on a store, the usage its
counter holds for its current period is compared with the sum of the
ledger's counted rows (``committed`` and ``recorded``) of that scope and
its descendants, stamped within that period. Equal everywhere: the ledger
is complete. A difference names the scope, the cap and the two numbers.

The ledger and the counters agree only if the ledger was on since the
period began and nobody called ``reset()`` in it (a reset zeroes the
counter, never the ledger); a ledger written by its own thread may lag
behind the store by the rows not yet written (``flush()``), or miss those
of a process that was killed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Final

from ._amounts import from_units
from ._ledger import Ledger, span
from ._ledger_db import Database
from ._limits import _zone
from ._periods import period_window

__all__ = ("Check", "verify")

_COUNTED: Final = "('committed', 'recorded')"


@dataclass(frozen=True)
class Check:
    """One cap's counter against the ledger, for its current period."""

    scope: str
    axis: str
    period: str | None  # the period's key; None: a lifetime cap
    since: datetime | None  # the period's bounds (None: open)
    until: datetime | None
    store: int | Decimal  # what the counter holds
    ledger: int | Decimal  # what the ledger's rows add up to

    @property
    def ok(self) -> bool:
        return self.store == self.ledger


def _sum(
    db: Database, scope: str, axis: str, since: datetime | None, until: datetime | None
) -> int:
    m = db.mark
    amount, params = db.amount(axis)
    lo, hi = span(since, until)
    (row,) = db.query(
        f"SELECT SUM({amount}) FROM rb_ledger WHERE outcome IN {_COUNTED} "
        f"AND at_us >= {m} AND at_us < {m} "
        f"AND (scope = {m} OR substr(scope, 1, {m}) = {m})",
        [*params, lo, hi, scope, len(scope) + 1, scope + "/"],
    )
    return 0 if row[0] is None else int(row[0])


def verify(store_url: str, ledger: Ledger, name: str | None = None) -> list[Check]:
    """Every cap of the limiters on ``store_url`` (or those matching
    ``name``) against ``ledger`` (a blocking read of both)."""
    from .cli._status_reader import status

    checks: list[Check] = []
    for limiter in status(store_url, name):
        for limit in limiter.limits:
            if limit.kind != "cap":
                continue
            since = until = None
            if limit.per is not None and limit.resets_at is not None:
                tz = _zone(limit.tz or "UTC")
                window = period_window(
                    limit.per,  # type: ignore[arg-type]
                    tz,
                    limit.resets_at.timestamp() - 1,
                )
                since = window.start.astimezone(timezone.utc)
                until = window.end.astimezone(timezone.utc)
            units = _sum(ledger._db, limiter.name, limit.axis, since, until)
            checks.append(
                Check(
                    limiter.name,
                    limit.axis,
                    limit.period,
                    since,
                    until,
                    limit.used,
                    from_units(limit.axis, units),
                )
            )
    return checks


def differences(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]
