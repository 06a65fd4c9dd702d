"""``ratebudget report``: a ledger's spend and usage, grouped, as a table,
CSV or JSON."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TextIO, TypeVar

import anyio

from .. import InvalidRequest, StoreUnavailable
from .._ledger import Ledger
from .._report import Report
from ..stores._base import redact
from ._status_reader import LimiterStatus, status
from ._status_render import forecast_lines

__all__ = ("add_command", "columns", "period", "plain", "reading", "when", "window")

T = TypeVar("T")

_PERIOD = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "report",
        help="spend and usage from a ledger, grouped by scope, model or any label",
        description=(
            "Sum a ledger's rows (see Limiter(..., ledger=URL)) per group: "
            "requests, input and output tokens, USD, USD per request and per "
            "1,000 tokens, sorted by spend, with a total. Calls without a "
            "price are counted as unpriced, never as $0. Exit status: 0 "
            "shown, 2 bad arguments, 3 ledger unavailable."
        ),
    )
    parser.add_argument(
        "--ledger",
        metavar="URL",
        required=True,
        help="the ledger: sqlite:///usage.db or postgresql://host/db",
    )
    parser.add_argument(
        "--by",
        default="scope",
        metavar="KEYS",
        help="group keys, comma-separated: scope, outcome or label names "
        "(default: scope)",
    )
    parser.add_argument(
        "--period",
        metavar="P",
        help="a UTC calendar period: 2026, 2026-11 or 2026-11-05",
    )
    parser.add_argument(
        "--since", metavar="T", help="from this UTC date or time (ISO 8601)"
    )
    parser.add_argument(
        "--until", metavar="T", help="until this UTC date or time (excluded)"
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help=(
            "also forecast each cap of the limiters on this store to the end "
            "of its period, from the ledger's history (table and json)"
        ),
    )
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table (rich on a terminal, plain text when piped), csv or json",
    )
    parser.set_defaults(handler=_run)


def period(text: str) -> tuple[datetime, datetime]:
    """``--period``'s bounds: a UTC year, month or day."""
    m = _PERIOD.fullmatch(text)
    if m is None:
        raise InvalidRequest(f"--period {text!r}: use 2026, 2026-11 or 2026-11-05")
    year, month, day = (int(g) if g else None for g in m.groups())
    assert year is not None
    try:
        if month is None:
            return _utc(year, 1, 1), _utc(year + 1, 1, 1)
        if day is None:
            start = _utc(year, month, 1)
            return start, _utc(year + month // 12, month % 12 + 1, 1)
        start = _utc(year, month, day)
        return start, start.fromordinal(start.toordinal() + 1).replace(
            tzinfo=timezone.utc
        )
    except ValueError as e:
        raise InvalidRequest(f"--period {text!r}: {e}") from None


def _utc(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=timezone.utc)


def when(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{option} {text!r}: use an ISO date or time, like 2026-11-05 "
            "or 2026-11-05T14:00"
        ) from None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def window(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    """``--period``, or ``--since`` and ``--until``, as UTC bounds."""
    if args.period is not None:
        if args.since or args.until:
            raise InvalidRequest("give --period, or --since and --until, not both")
        return period(args.period)
    return when("--since", args.since), when("--until", args.until)


def reading(command: str, url: str, read: Callable[[Ledger], T]) -> T | int:
    """What ``read`` reads of the ledger at ``url`` (closed after); else,
    its error written, the exit status: 2 bad arguments, 3 unavailable."""
    err = sys.stderr
    try:
        ledger = Ledger(url)
        try:
            return read(ledger)
        finally:
            ledger.close()
    except StoreUnavailable as e:
        err.write(f"ratebudget {command}: error: unavailable: {e}\n")
        return 3
    except InvalidRequest as e:
        err.write(f"ratebudget {command}: error: {e}\n")
        return 2
    except ImportError as e:  # a driver that is not installed
        err.write(f"ratebudget {command}: error: cannot open {redact(url)}: {e}\n")
        return 2


def _run(args: argparse.Namespace) -> int:
    shown = redact(args.ledger)

    def read(ledger: Ledger) -> tuple[Report, list[LimiterStatus]]:
        since, until = window(args)
        by = tuple(k.strip() for k in args.by.split(",") if k.strip())
        report = anyio.run(_report, ledger, by, since, until)
        limiters = [] if args.store is None else status(args.store, None, ledger)
        return report, limiters

    got = reading("report", args.ledger, read)
    if isinstance(got, int):
        return got
    report, limiters = got
    if args.format == "json":
        document = json.loads(report.to_json())
        if args.store is not None:
            document["forecasts"] = [
                {"scope": item.name, **limit.to_json()}
                for item in limiters
                for limit in item.limits
                if limit.kind == "cap"
            ]
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif args.format == "csv":
        sys.stdout.write(report.to_csv())
    elif sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
        _rich(report, shown)
    else:
        plain(report, shown, sys.stdout)
    if args.format == "table" and args.store is not None:
        sys.stdout.write(f"\nforecasts ({redact(args.store)}):\n")
        for item in limiters:
            for line in forecast_lines(item):
                sys.stdout.write(f"  {item.name}: {line}\n")
    return 0


async def _report(
    ledger: Ledger, by: tuple[str, ...], since: datetime | None, until: datetime | None
) -> Report:
    return await ledger.report(by=by, since=since, until=until)


def _title(report: Report, shown: str) -> str:
    since = "the start" if report.since is None else report.since.isoformat()
    until = "now" if report.until is None else report.until.isoformat()
    return f"{shown}: from {since} until {until}, by {', '.join(report.by)}"


def columns(rows: list[list[str]], left: int, out: TextIO, total: bool = False) -> None:
    """``rows`` (a header first) in aligned columns: the first ``left`` to
    the left, the numbers to the right; ``total``: the last row under a rule."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        if total and n == len(rows) - 1:
            out.write("  ".join("-" * w for w in widths) + "\n")
        out.write("  ".join(cells).rstrip() + "\n")


def plain(report: Report, shown: str, out: TextIO, title: bool = True) -> None:
    """``report`` as a plain-text table (``title``: under its title line)."""
    if title:
        out.write(_title(report, shown) + "\n")
    columns(report.table(), len(report.by), out, total=True)


def _rich(report: Report, shown: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = report.table()
    keys = len(report.by)
    table = Table(title=_title(report, shown), box=box.SIMPLE_HEAD)
    for i, name in enumerate(rows[0]):
        table.add_column(name, justify="left" if i < keys else "right")
    for row in rows[1:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(file=sys.stdout).print(table)
