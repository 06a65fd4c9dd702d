"""The demo's report as a table (plain text or ``rich``), and its plain progress."""

from __future__ import annotations

import math
import textwrap
import time
from decimal import Decimal
from typing import TYPE_CHECKING, TextIO

from ._simulate import DemoProgress, DemoReport

if TYPE_CHECKING:
    from rich.console import Console

_CENT = Decimal("0.01")

_Row = tuple[str, str, str, str, str]
_HEADINGS = ("measure", "configured", "achieved", "bound", "ok")


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def format_usd(value: Decimal) -> str:
    """``$12.00`` for whole dollars, else every digit: ``$0.0315``."""
    if value == value.to_integral_value():
        value = value.quantize(_CENT)
    return f"${value:,f}"


def _verdict(value: float, bound: float, per_second: float, lateness: float) -> str:
    """``ok`` within the bound, ``late`` within it once wake-up lateness is
    allowed for (a window can gain ``per_second * lateness``), else ``over``."""
    if value <= bound * (1 + 1e-12):
        return "ok"
    if value <= bound + per_second * lateness:
        return "late"
    return "over"


def _verdicts(report: DemoReport) -> dict[str, str]:
    """The verdict of every checked row, keyed by row."""
    late = report.lateness
    verdicts = {}
    for name, rate in (("TPM", report.tokens), ("RPM", report.requests)):
        per_second = rate.limit / 60.0
        verdicts[f"{name} peak"] = _verdict(
            rate.peak, rate.peak_bound, per_second, late
        )
        verdicts[f"{name} mean"] = _verdict(
            rate.mean, rate.mean_bound, per_second, late
        )
    per_second = report.requests.limit / 60.0
    verdicts["burst"] = _verdict(report.burst, report.burst_bound, per_second, late)
    verdicts["spend"] = "ok" if report.spent <= report.cap else "over"
    verdicts["fifo"] = "ok" if report.overtaken == 0 else "over"
    return verdicts


def _rows(report: DemoReport, marks: dict[str, str]) -> list[_Row]:
    rows: list[_Row] = []
    verdicts = _verdicts(report)
    for name, rate in (("TPM", report.tokens), ("RPM", report.requests)):
        peak, mean = verdicts[f"{name} peak"], verdicts[f"{name} mean"]
        mean_bound = _n(rate.mean_bound) if math.isfinite(rate.mean_bound) else "-"
        rows += [
            (
                f"{name} peak, any {rate.window:.0f} s",
                # what the bound checked is made of: a peak above the limit
                # but within limit + burst is what a bucket allows, not an
                # overrun
                f"{rate.limit:,} + {rate.burst:,} burst",
                f"{rate.peak:,}",
                _n(rate.peak_bound),
                marks[peak],
            ),
            (
                f"{name} mean, {rate.span:,.0f} s",
                f"{rate.limit:,}",
                _n(rate.mean),
                mean_bound,
                marks[mean],
            ),
        ]
    rpm = report.requests
    burst, spend = verdicts["burst"], verdicts["spend"]
    remaining = (
        "-" if report.cap_remaining is None else format_usd(report.cap_remaining)
    )
    waits = f"{report.wait_p50:.1f} s / {report.wait_p99:.1f} s"
    rows += [
        (
            f"largest burst, {report.burst_window:.3g} s",
            f"{rpm.burst:,} requests",
            f"{report.burst:,}",
            f"{report.burst_bound:.3g}",
            marks[burst],
        ),
        (
            "calls overtaken",
            "FIFO",
            f"{report.overtaken:,}",
            "0",
            marks[verdicts["fifo"]],
        ),
        (
            "spend",
            f"cap {format_usd(report.cap)}",
            format_usd(report.spent),
            format_usd(report.cap),
            marks[spend],
        ),
        ("cap left (snapshot)", "", remaining, "", ""),
        ("calls completed", f"{report.calls:,} calls", f"{report.completed:,}", "", ""),
        ("calls refused by cap", "", f"{report.refused:,}", "", ""),
    ]
    if report.first_refusal is not None:
        rows.append(("first refusal at", "", f"{report.first_refusal:,.0f} s", "", ""))
    if report.timed_out:
        timeout = f"timeout {report.config.timeout:g} s"
        rows.append(("calls timed out", timeout, f"{report.timed_out:,}", "", ""))
    rows.append(("wait p50 / p99", "", waits, "", ""))
    return rows


def _caption(report: DemoReport, backend: str) -> list[str]:
    config = report.config
    lines = [
        f"{report.calls:,} simulated calls, seed {config.seed}, {backend}: "
        f"{report.elapsed:,.0f} s of simulated time in {report.clock_seconds:.1f} s "
        f"({config.speed:g}x).",
        "Times are simulated, stamped when a call proceeds; waits run from "
        "acquire to grant. TPM counts tokens charged (estimate at grant, less "
        "the refund at commit). Bound: burst + limit/min x window.",
    ]
    if "late" in _verdicts(report).values():
        lines.append(
            f"The event loop woke sleepers up to {report.lateness:.2f} s late; a "
            "window over its bound by no more than that allows is marked late."
        )
    return lines


def render_plain(report: DemoReport, out: TextIO, *, backend: str = "asyncio") -> None:
    """Write the report as an aligned plain-text table."""
    marks = {"ok": "ok", "late": "late", "over": "OVER"}
    rows = [_HEADINGS, *_rows(report, marks)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADINGS))]
    lines = []
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(width) if j == 0 else cell.rjust(width)
            for j, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    caption = "\n".join(textwrap.fill(line, 79) for line in _caption(report, backend))
    out.write("ratebudget demo\n\n" + "\n".join(lines) + "\n\n" + caption + "\n")


def render_rich(
    report: DemoReport, console: Console, *, backend: str = "asyncio"
) -> None:
    """Print the report as a ``rich`` table."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="ratebudget demo",
        caption=" ".join(_caption(report, backend)),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for i, heading in enumerate(_HEADINGS):
        table.add_column(heading, justify="left" if i == 0 else "right")
    marks = {"ok": "[green]✓[/]", "late": "[yellow]≈[/]", "over": "[bold red]✗[/]"}
    for row in _rows(report, marks):
        table.add_row(*row)
    console.print(table)


class PlainProgress:
    """Prints a short progress line at most every ``interval`` real seconds."""

    def __init__(self, out: TextIO, interval: float = 1.0) -> None:
        self._out = out
        self._interval = interval
        self._last = -math.inf
        self._latest: DemoProgress | None = None

    def __call__(self, state: DemoProgress) -> None:
        self._latest = state
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._print(state)

    def finish(self) -> None:
        if self._latest is not None:
            self._print(self._latest)

    def _print(self, s: DemoProgress) -> None:
        self._out.write(
            f"[{s.elapsed:6.0f} s] {s.finished:>4}/{s.calls} done: "
            f"{s.completed} completed, {s.refused} refused; "
            f"{s.waiting} waiting, {s.in_flight} in flight; "
            f"spent {format_usd(s.spent)} of {format_usd(s.cap)}\n"
        )
        self._out.flush()
