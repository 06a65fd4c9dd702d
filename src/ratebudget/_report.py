"""Reports of a ledger: spend and usage grouped by scope, outcome or label.

Sums are made by the database in integer units (exact); USD per request
and per 1,000 tokens are rounded to the nano-dollar. A call the ledger has
no price for is counted as ``unpriced``, never as $0: a group with no
priced call has ``usd=None``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from ._amounts import from_units
from ._exceptions import InvalidRequest
from ._ledger import span
from ._ledger_db import Database

__all__ = ("Report", "ReportRow", "build")

_NANO: Final = Decimal("0.000000001")
_COUNTED: Final = "('committed', 'recorded')"
# the sums of a group: requests, input, output and all tokens, USD of the
# priced calls, the requests and tokens of those, unpriced calls, released
# and expired leases
_SUMS: Final = (
    f"SUM(CASE WHEN outcome IN {_COUNTED} THEN requests ELSE 0 END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} THEN input_tokens ELSE 0 END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} THEN output_tokens ELSE 0 END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} THEN tokens ELSE 0 END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} THEN usd_nano END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} AND usd_nano IS NOT NULL "
    "THEN requests ELSE 0 END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} AND usd_nano IS NOT NULL "
    "THEN tokens ELSE 0 END)",
    f"SUM(CASE WHEN outcome IN {_COUNTED} AND usd_nano IS NULL THEN 1 ELSE 0 END)",
    "SUM(CASE WHEN outcome = 'released' THEN 1 ELSE 0 END)",
    "SUM(CASE WHEN outcome = 'expired' THEN 1 ELSE 0 END)",
)
FIELDS: Final = (
    "requests",
    "input_tokens",
    "output_tokens",
    "tokens",
    "usd",
    "usd_per_request",
    "usd_per_1k_tokens",
    "unpriced",
    "released",
    "expired",
)


@dataclass(frozen=True)
class ReportRow:
    """One group's spend and usage (``group``: its key's value per group key,
    ``None`` where a row has no such label)."""

    group: Mapping[str, str | None]
    requests: int
    input_tokens: int
    output_tokens: int
    tokens: int
    usd: Decimal | None  # None: no call of the group was priced
    usd_per_request: Decimal | None  # over the priced calls
    usd_per_1k_tokens: Decimal | None
    unpriced: int  # calls counted without a price
    released: int  # leases given back ($0), not among requests
    expired: int  # leases their store reclaimed ($0)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON reports write it (USD as strings)."""
        out: dict[str, Any] = dict(self.group)
        for name in FIELDS:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Decimal) else value
        return out


@dataclass(frozen=True)
class Report:
    """A ledger's spend and usage grouped ``by``, from ``since`` to ``until``."""

    by: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    rows: tuple[ReportRow, ...]  # by spend, most first
    total: ReportRow

    def to_json(self) -> str:
        return json.dumps(
            {
                "by": list(self.by),
                "since": None if self.since is None else self.since.isoformat(),
                "until": None if self.until is None else self.until.isoformat(),
                "rows": [r.as_dict() for r in self.rows],
                "total": self.total.as_dict(),
            },
            indent=2,
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([*self.by, *FIELDS])
        for r in (*self.rows, self.total):
            d = r.as_dict()
            w.writerow(
                ["" if d[k] is None else d[k] for k in self.by]
                + ["" if d[f] is None else d[f] for f in FIELDS]
            )
        return out.getvalue()

    def table(self) -> list[list[str]]:
        """The report as rows of text: a header, the groups, the total."""
        header = [*self.by, "requests", "input tok", "output tok", "USD", "USD/req"]
        header += ["USD/1k tok", "unpriced", "released"]
        out = [header]
        for r in (*self.rows, self.total):
            keys = [
                "(total)"
                if r is self.total and i == 0
                else ""
                if r is self.total
                else "(none)"
                if r.group[k] is None
                else str(r.group[k])
                for i, k in enumerate(self.by)
            ]
            out.append(
                [
                    *keys,
                    f"{r.requests:,}",
                    f"{r.input_tokens:,}",
                    f"{r.output_tokens:,}",
                    "unpriced" if r.usd is None else f"{r.usd:,}",
                    _money(r.usd_per_request),
                    _money(r.usd_per_1k_tokens),
                    f"{r.unpriced:,}",
                    f"{r.released:,}",
                ]
            )
        return out


def _money(x: Decimal | None) -> str:
    return "-" if x is None else f"{x:,}"


def _check_by(by: Sequence[str]) -> tuple[str, ...]:
    if isinstance(by, str) or not by:
        raise InvalidRequest(f"by={by!r}: expected a sequence of group keys")
    for key in by:
        if not (
            isinstance(key, str)
            and 0 < len(key) <= 64
            and key.isprintable()
            and " " not in key
            and '"' not in key
        ):
            raise InvalidRequest(
                f"by: {key!r} is not 'scope', 'outcome' or a label name"
            )
    if len(set(by)) != len(by):
        raise InvalidRequest(f"by={list(by)!r}: a key twice")
    return tuple(by)


def _per(usd: Decimal | None, n: int, scale: int = 1) -> Decimal | None:
    if usd is None or n == 0:
        return None
    return (usd * scale / n).quantize(_NANO, rounding=ROUND_HALF_EVEN)


def _row(group: Mapping[str, str | None], sums: Sequence[object]) -> ReportRow:
    n = [0 if x is None else int(x) for x in sums]  # type: ignore[call-overload]
    requests, inp, outp, tokens, _, p_req, p_tok, unpriced, released, expired = n
    usd = None if sums[4] is None else from_units("usd", n[4])
    assert usd is None or isinstance(usd, Decimal)
    return ReportRow(
        group,
        requests,
        inp,
        outp,
        tokens,
        usd,
        _per(usd, p_req),
        _per(usd, p_tok, 1000),
        unpriced,
        released,
        expired,
    )


def build(
    db: Database,
    by: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    scope: str | None = None,
) -> Report:
    """The report of ``db`` (a blocking read): of every row, or of those of
    ``scope`` and its descendants."""
    keys = _check_by(by)
    lo, hi = span(since, until)
    m = db.mark
    cols: list[str] = []
    params: list[object] = []
    for key in keys:
        if key in ("scope", "outcome"):
            cols.append(key)
        else:
            sql, param = db.label(key)
            cols.append(sql)
            params.append(param)
    where = f"WHERE at_us >= {m} AND at_us < {m}"
    bounds: list[object] = [lo, hi]
    if scope is not None:
        if not isinstance(scope, str) or not scope:
            raise InvalidRequest(f"scope={scope!r}: expected a scope's name")
        where += f" AND (scope = {m} OR substr(scope, 1, {m}) = {m})"
        bounds += [scope, len(scope) + 1, scope + "/"]
    groups = ", ".join(str(i + 1) for i in range(len(cols)))
    rows = db.query(
        f"SELECT {', '.join(cols + list(_SUMS))} FROM rb_ledger {where} "
        f"GROUP BY {groups}",
        [*params, *bounds],
    )
    total = db.query(f"SELECT {', '.join(_SUMS)} FROM rb_ledger {where}", bounds)
    out = [
        _row(
            {k: None if v is None else str(v) for k, v in zip(keys, r, strict=False)},
            r[len(keys) :],
        )
        for r in rows
    ]
    out.sort(
        key=lambda r: (
            r.usd is None,
            -(r.usd or 0),
            -r.requests,
            [(v is None, v or "") for v in r.group.values()],
        )
    )
    return Report(keys, since, until, tuple(out), _row(dict.fromkeys(keys), total[0]))
