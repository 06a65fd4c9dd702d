"""``ratebudget check``: a CI cost gate on a ledger."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation

import anyio

from .. import InvalidRequest
from .._ledger import Ledger
from .._report import Report
from ..stores._base import redact
from ._report import plain, reading, window

__all__ = ("add_command",)


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="fail when a ledger's spend is over a limit (a CI cost gate)",
        description=(
            "Sum the USD of a ledger's committed and recorded rows (of every "
            "scope, or of --scope and its descendants) in a window, and fail "
            "when it is over --max-usd. Calls without a price are counted and "
            "named; --fail-unpriced fails on them too. Exit status: 0 within, "
            "1 over, 2 bad arguments, 3 ledger unavailable."
        ),
    )
    parser.add_argument("--ledger", metavar="URL", required=True, help="the ledger")
    parser.add_argument(
        "--max-usd", metavar="USD", required=True, help="the most it may have spent"
    )
    parser.add_argument("--scope", metavar="NAME", help="only this scope and below")
    parser.add_argument(
        "--by",
        default="scope",
        metavar="KEYS",
        help="when over, a table of the spend per group: scope, outcome or "
        "label names, comma-separated (default: scope)",
    )
    parser.add_argument(
        "--period", metavar="P", help="a UTC year, month or day (2026-11)"
    )
    parser.add_argument("--since", metavar="T", help="from this UTC date or time")
    parser.add_argument("--until", metavar="T", help="until this one (excluded)")
    parser.add_argument(
        "--fail-unpriced",
        action="store_true",
        help="fail too when a call has no price (its cost is unknown)",
    )
    parser.set_defaults(handler=_run)


def _usd(text: str) -> Decimal:
    try:
        usd = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"--max-usd {text!r}: expected an amount of USD") from None
    if not usd.is_finite() or usd < 0:
        raise InvalidRequest(f"--max-usd {text!r}: expected an amount of USD")
    return usd


async def _total(
    ledger: Ledger,
    by: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    scope: str | None,
) -> Report:
    return await ledger.report(by=by, since=since, until=until, scope=scope)


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout

    def read(ledger: Ledger) -> tuple[Decimal, Report]:
        most = _usd(args.max_usd)
        since, until = window(args)
        by = tuple(k.strip() for k in args.by.split(",") if k.strip())
        return most, anyio.run(_total, ledger, by, since, until, args.scope)

    got = reading("check", args.ledger, read)
    if isinstance(got, int):
        return got
    most, report = got
    total = report.total
    spent = total.usd or Decimal(0)
    what = f"scope {args.scope}" if args.scope else "all scopes"
    over = spent > most
    out.write(
        f"{'over' if over else 'ok'}: ${spent} spent by {what} in "
        f"{total.requests:,} requests, {'more than' if over else 'within'} ${most}\n"
    )
    if over:  # where it went
        plain(report, redact(args.ledger), out, title=False)
    if total.unpriced:
        sys.stderr.write(
            f"ratebudget check: {total.unpriced:,} calls have no price: their "
            "cost is unknown and not counted above\n"
        )
    if over or (total.unpriced and args.fail_unpriced):
        return 1
    return 0
