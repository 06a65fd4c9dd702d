"""``ratebudget status`` tables: plain text with ``#`` bars, or ``rich``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TextIO

from ._status_reader import LimiterStatus, LimitStatus

if TYPE_CHECKING:
    from rich.console import Console, Group

_CENT = Decimal("0.01")

_STATUS_HEADINGS = (
    "kind",
    "axis",
    "limit",
    "period",
    "used",
    "reserved",
    "remaining",
    "usage",
    "resets",
)
_STATUS_RIGHT = frozenset({"used", "reserved", "remaining"})
_BAR_WIDTH = 20
_COMPACT_BAR_WIDTH = 10


@dataclass(frozen=True)
class _Bar:
    """A usage bar: cells used, cells reserved after them, and the percent."""

    width: int
    used: int
    reserved: int
    percent: str
    level: str  # "ok", "high" (80 % or more) or "full" (100 % or more)

    @property
    def free(self) -> int:
        return self.width - self.used - self.reserved


def _money(value: Decimal) -> str:
    if value < 0:
        return "-" + _money(-value)
    cents = value.quantize(_CENT)
    return f"${cents if cents == value else value:,f}"


def _amount(axis: str, value: int | Decimal) -> str:
    if axis == "usd":
        return _money(Decimal(value))
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,f}"


def _cells(fraction: float, width: int) -> int:
    """Cells of a bar: a non-zero amount shows, a full bar means 100 %."""
    if fraction <= 0:
        return 0
    if fraction >= 1:
        return width
    return min(width - 1, max(1, round(fraction * width)))


def _bar(limit: LimitStatus, width: int = _BAR_WIDTH) -> _Bar:
    """The bar of a limit: used (and reserved) of a cap's limit or a rate's burst."""
    whole = limit.burst if limit.kind == "rate" else limit.limit
    assert whole is not None
    used, held = Decimal(limit.used), Decimal(limit.used) + Decimal(limit.reserved)
    if whole <= 0:  # a zero cap: nothing is allowed
        used_f, held_f = (1.0 if used else 0.0), (1.0 if held else 0.0)
    else:
        used_f, held_f = float(used / whole), float(held / whole)
    used_cells = _cells(used_f, width)
    held_cells = _cells(held_f, width)
    if limit.reserved and held_cells <= used_cells:  # a reservation shows
        held_cells = min(used_cells + 1, width if held_f >= 1 else width - 1)
    level = "full" if held_f >= 1 else "high" if held_f >= 0.8 else "ok"
    percent = f"{used_f:.0%}" if whole > 0 else "-"
    return _Bar(width, used_cells, max(0, held_cells - used_cells), percent, level)


def _duration(seconds: float) -> str:
    """``"5h 12m"``: the two largest units of a span of time."""
    s = max(0, math.ceil(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (s, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n}{unit}" for n, unit in parts[:2])


def _resets(limit: LimitStatus, at: datetime | None, compact: bool) -> str:
    if limit.resets_at is None:
        return "-"
    when = f"{limit.resets_at:%Y-%m-%d %H:%M} {limit.resets_at.tzname()}"
    if at is None:
        return when
    left = _duration((limit.resets_at - at).total_seconds())
    return f"in {left}" if compact else f"{when} (in {left})"


def _status_row(
    limit: LimitStatus, at: datetime | None, *, compact: bool = False
) -> list[str]:
    """The cells of one limit's row, but the bar's (see ``_bar``).

    ``compact`` (a narrow terminal) gives the reset as ``in 5h 12m`` only.
    """
    axis = limit.axis
    if limit.kind == "rate":
        assert limit.burst is not None
        assert limit.available is not None
        spec = f"{_amount(axis, limit.limit)} / {limit.per}"
        if limit.burst != limit.limit:
            spec += f", burst {_amount(axis, limit.burst)}"
        remaining = f"{_amount(axis, limit.remaining)} of {_amount(axis, limit.burst)}"
        if not compact:
            remaining += " now"
        if limit.available < 0:
            remaining += f" (debt {_amount(axis, -limit.available)})"
        return [
            "rate",
            axis,
            spec,
            "-",
            _amount(axis, limit.used),
            "-",
            remaining,
            "",
            "-",
        ]
    if limit.per is None:
        spec = f"{_amount(axis, limit.limit)} lifetime"
    else:
        spec = f"{_amount(axis, limit.limit)} / {limit.per}"
    return [
        "soft cap" if limit.soft else "cap",
        axis,
        spec,
        limit.period or "-",
        _amount(axis, limit.used),
        _amount(axis, limit.reserved),
        _amount(axis, limit.remaining),
        "",
        _resets(limit, at, compact),
    ]


def _guess(axis: str, value: int | Decimal) -> str:
    """An estimate, shown no finer than it is: dollars to the cent."""
    if axis == "usd":
        return _money(Decimal(value).quantize(_CENT))
    return _amount(axis, value)


def forecast_lines(item: LimiterStatus) -> list[str]:
    """A line per cap with a forecast: the usage expected at the end of its
    period, its interval, and when it would cross the cap; or why none."""
    lines = []
    for limit in item.limits:
        f = limit.forecast
        if f is None:
            continue
        axis = limit.axis
        name = f"{axis} / {limit.per}" if limit.per else f"{axis} lifetime"
        if f.expected is None or f.low is None or f.high is None:
            lines.append(f"forecast {name}: none ({f.reason})")
            continue
        line = (
            f"forecast {name}: {_guess(axis, f.expected)} by the period's end "
            f"({_guess(axis, f.low)} to {_guess(axis, f.high)})"
        )
        if f.exhausts_at is not None:
            over = "soft cap" if limit.soft else "cap"
            line += (
                f"; crosses the {_amount(axis, limit.limit)} {over} at "
                f"{f.exhausts_at:%Y-%m-%d %H:%M} {f.exhausts_at.tzname()}"
            )
        lines.append(line)
    return lines


def _read_at(item: LimiterStatus) -> str:
    if item.at is None:
        return ""
    return f"read at {item.at:%Y-%m-%d %H:%M:%S} UTC"


def render_status_plain(
    statuses: Sequence[LimiterStatus], out: TextIO, *, store: str
) -> None:
    """Write a plain-text table per limiter, with ``#`` bars (``+``: reserved)."""
    out.write(f"ratebudget status: {store}\n")
    if not statuses:
        out.write("\nno limiters registered on this store yet\n")
    usage = _STATUS_HEADINGS.index("usage")
    for item in statuses:
        title = f"{item.name}  ({_read_at(item)})" if item.at else item.name
        out.write(f"\n{title}\n")
        if item.error is not None:
            out.write(f"  error: {item.error}\n")
            continue
        if not item.limits:
            out.write("  no limits\n")
            continue
        rows = [list(_STATUS_HEADINGS)]
        for limit in item.limits:
            row = _status_row(limit, item.at)
            b = _bar(limit)
            bar = "#" * b.used + "+" * b.reserved + "." * b.free
            row[usage] = f"[{bar}] {b.percent:>4}"
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for i, row in enumerate(rows):
            cells = [
                cell.rjust(width) if heading in _STATUS_RIGHT else cell.ljust(width)
                for cell, width, heading in zip(
                    row, widths, _STATUS_HEADINGS, strict=True
                )
            ]
            out.write("  ".join(cells).rstrip() + "\n")
            if i == 0:
                out.write("  ".join("-" * w for w in widths) + "\n")
        for line in forecast_lines(item):
            out.write(f"  {line}\n")


def render_status_rich(
    statuses: Sequence[LimiterStatus], console: Console, *, store: str
) -> None:
    """Print a ``rich`` table per limiter, with bars (reserved in cyan).

    A table wider than the console is drawn compact: shorter bars, the
    reset as ``in 5h 12m``, one space between columns.
    """
    console.print(status_group(statuses, console, store=store))


def status_group(
    statuses: Sequence[LimiterStatus], console: Console, *, store: str
) -> Group:
    """What ``render_status_rich`` prints, as one renderable (``--watch``
    redraws it in place)."""
    from rich import box
    from rich.console import Group
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    colors = {"ok": "green", "high": "yellow", "full": "red"}
    usage = _STATUS_HEADINGS.index("usage")

    def table_of(item: LimiterStatus, compact: bool) -> Table:
        table = Table(
            title=Text(item.name, style="bold"),
            title_justify="left",
            caption=_read_at(item) or None,
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            collapse_padding=compact,
            pad_edge=not compact,
        )
        for heading in _STATUS_HEADINGS:
            table.add_column(
                heading,
                justify="right" if heading in _STATUS_RIGHT else "left",
                no_wrap=heading == "usage",
            )
        for limit in item.limits:
            cells: list[str | Text] = list(_status_row(limit, item.at, compact=compact))
            b = _bar(limit, _COMPACT_BAR_WIDTH if compact else _BAR_WIDTH)
            bar = Text()
            bar.append("█" * b.used, style=colors[b.level])
            bar.append("█" * b.reserved, style="cyan")
            bar.append("░" * b.free, style="grey37")
            bar.append(f" {b.percent:>4}")
            cells[usage] = bar
            table.add_row(*cells)
        return table

    parts: list[Any] = [Text(f"ratebudget status: {store}", style="bold")]
    if not statuses:
        parts.append(Text("no limiters registered on this store yet"))
    for item in statuses:
        if item.error is not None:
            parts.append(Text(f"{item.name}: error: {item.error}", style="red"))
            continue
        if not item.limits:
            parts.append(Text(f"{item.name}: no limits"))
            continue
        table = table_of(item, compact=False)
        unbounded = console.options.update_width(10_000)
        wide = Measurement.get(console, unbounded, table).maximum
        parts.append(table if wide <= console.width else table_of(item, True))
        parts.extend(Text(f"  {line}") for line in forecast_lines(item))
    return Group(*parts)
