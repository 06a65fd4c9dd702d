"""The ``ratebudget`` command line.

``ratebudget demo`` runs a bursty fan-out of simulated LLM calls (no network)
through a :class:`~ratebudget.Limiter` with a TPM rate, an RPM rate and a hard
USD cap, shows live progress, and ends with a table of what actually happened:
rates achieved against their bounds, the largest burst, spend against the cap,
refusals and wait times.  The demo's engine is :func:`run_demo`, which returns
a :class:`DemoReport`; the command only renders it.

``ratebudget status --store URL [NAME]`` shows every limiter registered on a
persistent store (or limiter ``NAME``): one table per limiter, a row per
limit with its usage, reservations, what is left, a bar, and when a calendar
cap resets; ``--json`` prints the same for scripts. Its data comes from
:func:`ratebudget._status.status`.

``rich`` (the ``cli`` extra) is used when installed, and imported lazily; the
commands fall back to plain text without it.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import math
import random
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, TextIO

import anyio

from . import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    Clock,
    InvalidRequest,
    Limiter,
    Rate,
    Snapshot,
    StoreUnavailable,
    SystemClock,
)
from ._status import LimiterStatus, LimitStatus, status

if TYPE_CHECKING:
    from rich.console import Console

__all__ = (
    "DemoConfig",
    "DemoProgress",
    "DemoReport",
    "LimitStatus",
    "LimiterStatus",
    "PlannedCall",
    "RateReport",
    "main",
    "plan_calls",
    "render_status_plain",
    "render_status_rich",
    "run_demo",
    "status",
)

_MILLION = Decimal(1_000_000)
_NS = 1_000_000_000
_CENT = Decimal("0.01")


# --------------------------------------------------------------------- config


@dataclass(frozen=True)
class DemoConfig:
    """Parameters of ``ratebudget demo``.

    Times are in *simulated* seconds: the limiter's minute lasts
    ``60 / speed`` seconds of its clock, and every simulated latency, arrival
    gap and timeout is divided by ``speed`` the same way.  Prices are USD per
    million tokens.  ``cap_usd=None`` sizes the cap at ``cap_fraction`` of the
    planned calls' real cost, so the cap refuses some calls near the end.
    """

    calls: int = 300
    seed: int = 8
    speed: float = 40.0
    tpm: int = 60_000
    tpm_burst: int = 10_000
    rpm: int = 100
    rpm_burst: int = 10
    cap_usd: Decimal | None = None
    cap_fraction: Decimal = Decimal("0.9")
    input_price: Decimal = Decimal(3)
    output_price: Decimal = Decimal(15)
    timeout: float = 900.0

    def __post_init__(self) -> None:
        for name in ("calls", "tpm", "tpm_burst", "rpm", "rpm_burst"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.speed) and self.speed > 0):
            raise ValueError(f"speed must be a positive number, got {self.speed}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"timeout must be a positive number, got {self.timeout}")
        if self.cap_usd is not None and not self.cap_usd > 0:
            raise ValueError(f"cap_usd must be positive, got {self.cap_usd}")
        if not Decimal(0) < self.cap_fraction:
            raise ValueError(f"cap_fraction must be positive, got {self.cap_fraction}")
        if self.tpm_burst < LARGEST_ESTIMATE:
            raise ValueError(
                f"tpm_burst must hold the largest estimate ({LARGEST_ESTIMATE:,} "
                f"tokens), got {self.tpm_burst:,}"
            )

    @property
    def minute(self) -> float:
        """Length of the simulated minute in seconds of the limiter's clock."""
        return 60.0 / self.speed

    def cost(self, prompt_tokens: int, output_tokens: int) -> Decimal:
        """Exact USD cost of a call."""
        return (
            prompt_tokens * self.input_price + output_tokens * self.output_price
        ) / _MILLION


# ----------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Kind:
    prompt: tuple[int, int]
    max_output_tokens: int


_CHAT = _Kind(prompt=(40, 400), max_output_tokens=128)
_DOCUMENT = _Kind(prompt=(1_500, 5_000), max_output_tokens=800)
_WAVE_GAP = (8.0, 45.0)
LARGEST_ESTIMATE = _DOCUMENT.prompt[1] + _DOCUMENT.max_output_tokens
"""The largest token estimate the workload asks for (the TPM burst must hold it)."""


@dataclass(frozen=True)
class PlannedCall:
    """One simulated LLM call; ``arrival`` and ``latency`` in simulated seconds.

    The estimate is ``prompt_tokens + max_output_tokens``; the real usage is
    ``prompt_tokens + output_tokens``, never more.
    """

    index: int
    arrival: float
    prompt_tokens: int
    max_output_tokens: int
    output_tokens: int
    latency: float


def plan_calls(config: DemoConfig) -> tuple[PlannedCall, ...]:
    """The seeded workload: waves of short chats or of long documents.

    Waves of 5-40 calls land within a second, 8-45 simulated seconds
    apart; a quarter of the waves carry documents, so the load swings between
    request-bound (chats) and token-bound (documents).  Sorted by arrival.
    """
    rng = random.Random(config.seed)
    calls: list[PlannedCall] = []
    start = 0.0
    while len(calls) < config.calls:
        size = min(rng.randint(5, 40), config.calls - len(calls))
        kind = _DOCUMENT if rng.random() < 0.25 else _CHAT
        for _ in range(size):
            prompt = rng.randint(*kind.prompt)
            output = rng.randint(kind.max_output_tokens // 8, kind.max_output_tokens)
            latency = rng.uniform(0.3, 1.0) + output / rng.uniform(60.0, 120.0)
            arrival = start + rng.uniform(0.0, 1.0)
            calls.append(
                PlannedCall(
                    len(calls), arrival, prompt, kind.max_output_tokens, output, latency
                )
            )
        start += rng.uniform(*_WAVE_GAP)
    calls.sort(key=lambda call: (call.arrival, call.index))
    return tuple(calls)


def default_cap(config: DemoConfig, plan: Sequence[PlannedCall]) -> Decimal:
    """The cap: ``cap_usd``, or ``cap_fraction`` of the plan's cost, in cents."""
    if config.cap_usd is not None:
        return config.cap_usd
    total = sum(
        (config.cost(call.prompt_tokens, call.output_tokens) for call in plan),
        Decimal(0),
    )
    return max(_CENT, (total * config.cap_fraction).quantize(_CENT, ROUND_DOWN))


# -------------------------------------------------------------------- results


@dataclass(frozen=True)
class DemoProgress:
    """Live counters, passed to the ``progress`` callback on every change."""

    calls: int
    started: int
    waiting: int
    in_flight: int
    completed: int
    refused: int
    timed_out: int
    spent: Decimal
    cap: Decimal
    elapsed: float

    @property
    def finished(self) -> int:
        """Calls that are over, whatever their outcome."""
        return self.completed + self.refused + self.timed_out


@dataclass(frozen=True)
class RateReport:
    """What one rate allowed, measured from the recorded timestamps.

    ``peak`` is the most granted in any closed window of ``window`` simulated
    seconds; ``peak_bound`` is the contract's ``burst + limit/per * window``.
    ``mean`` is per simulated minute over ``span`` seconds (first grant to
    last grant, or to last commit for tokens); ``mean_bound`` the same bound
    spread over ``span``.  Tokens count as charged: the estimate at grant,
    less the refund at commit.
    """

    axis: str
    limit: int
    burst: int
    window: float
    peak: int
    peak_bound: float
    mean: float
    mean_bound: float
    span: float


@dataclass(frozen=True)
class DemoReport:
    """Everything :func:`run_demo` observed.  Times in simulated seconds.

    ``overtaken`` counts grants that came before the grant of a call that
    started waiting earlier (FIFO says none), beyond ``lateness``: how late
    the event loop woke the demo's own sleepers.
    """

    config: DemoConfig
    calls: int
    completed: int
    refused: int
    timed_out: int
    tokens: RateReport
    requests: RateReport
    burst: int
    burst_window: float
    burst_bound: float
    cap: Decimal
    spent: Decimal
    cap_used: Decimal
    cap_remaining: Decimal | None
    tokens_used: int
    wait_p50: float
    wait_p99: float
    wait_max: float
    elapsed: float
    clock_seconds: float
    lateness: float
    first_refusal: float | None
    overtaken: int


ProgressCallback = Callable[[DemoProgress], None]


# ----------------------------------------------------------------- measuring


def peak_in_window(events: Sequence[tuple[float, int]], window: float) -> int:
    """Largest sum of ``amount`` over ``(time, amount)`` in any closed window.

    The sum only changes where a window edge crosses an event, so it suffices
    to try the windows whose start or end sits on an event, each with that
    edge's event in and out (amounts may be negative).  ``O(n log n)``.
    """
    if not events:
        return 0
    ordered = sorted(events)
    times = [t for t, _ in ordered]
    prefix = [0]
    for _, amount in ordered:
        prefix.append(prefix[-1] + amount)
    left, right = bisect.bisect_left, bisect.bisect_right
    best = 0
    for t in times:
        end = right(times, t + window)
        best = max(best, prefix[end] - prefix[left(times, t)])  # [t, t + w]
        best = max(best, prefix[end] - prefix[right(times, t)])  # (t, t + w]
        start = left(times, t - window)
        best = max(best, prefix[right(times, t)] - prefix[start])  # [t - w, t]
        best = max(best, prefix[left(times, t)] - prefix[start])  # [t - w, t)
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in ``[0, 1]``; ``0.0`` when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class _Record:
    started: float
    est_tokens: int
    granted: float | None = None
    committed: float | None = None
    ended: float | None = None
    tokens: int = 0
    usd: Decimal = Decimal(0)
    refused: bool = False
    timed_out: bool = False


def _rate_report(
    axis: str, limit: int, burst: int, events: Sequence[tuple[float, int]]
) -> RateReport:
    per = 60.0
    if events:
        times = [t for t, _ in events]
        span = max(times) - min(times)
    else:
        span = 0.0
    total = sum(amount for _, amount in events)
    mean = total / span * per if span > 0 else 0.0
    mean_bound = (burst + limit * span / per) / span * per if span > 0 else math.inf
    return RateReport(
        axis=axis,
        limit=limit,
        burst=burst,
        window=per,
        peak=peak_in_window(events, per),
        peak_bound=burst + limit,
        mean=mean,
        mean_bound=mean_bound,
        span=span,
    )


# ------------------------------------------------------------------- running


async def run_demo(
    config: DemoConfig | None = None,
    *,
    clock: Clock | None = None,
    progress: ProgressCallback | None = None,
) -> DemoReport:
    """Run the demo workload through a real limiter and measure it.

    ``clock`` is handed to the :class:`Limiter` and times every simulated
    arrival and latency too: pass a ``ratebudget.testing.FakeClock`` and
    advance it to run without sleeping.  ``progress`` is called with a
    :class:`DemoProgress` whenever a call starts waiting, is granted, or ends.
    A call refused by the cap or timed out is counted, not raised.
    """
    config = config or DemoConfig()
    plan = plan_calls(config)
    cap = default_cap(config, plan)
    minute = timedelta(seconds=config.minute)
    limiter = Limiter(
        Rate(tokens=config.tpm, per=minute, burst=config.tpm_burst),
        Rate(requests=config.rpm, per=minute, burst=config.rpm_burst),
        Cap(usd=cap),
        clock=clock,
    )
    timer: Clock = SystemClock() if clock is None else clock
    scale = 1.0 / config.speed
    origin = timer.monotonic_ns()
    records: list[_Record] = []
    counts = {"waiting": 0, "in_flight": 0, "completed": 0, "refused": 0, "timeouts": 0}
    spent = Decimal(0)
    lateness = 0.0

    def sim_now() -> float:
        return (timer.monotonic_ns() - origin) / _NS * config.speed

    async def sleep_until(sim_time: float) -> None:
        nonlocal lateness
        await timer.sleep_until(origin + math.ceil(sim_time * scale * _NS))
        lateness = max(lateness, sim_now() - sim_time)

    def notify() -> None:
        if progress is not None:
            progress(
                DemoProgress(
                    calls=config.calls,
                    started=len(records),
                    waiting=counts["waiting"],
                    in_flight=counts["in_flight"],
                    completed=counts["completed"],
                    refused=counts["refused"],
                    timed_out=counts["timeouts"],
                    spent=spent,
                    cap=cap,
                    elapsed=sim_now(),
                )
            )

    async def one_call(call: PlannedCall) -> None:
        nonlocal spent
        est_tokens = call.prompt_tokens + call.max_output_tokens
        est_usd = config.cost(call.prompt_tokens, call.max_output_tokens)
        record = _Record(started=sim_now(), est_tokens=est_tokens)
        records.append(record)
        counts["waiting"] += 1
        notify()
        try:
            async with limiter.acquire(
                est_tokens, usd=est_usd, timeout=config.timeout * scale
            ) as lease:
                record.granted = sim_now()
                counts["waiting"] -= 1
                counts["in_flight"] += 1
                notify()
                await sleep_until(record.granted + call.latency)
                tokens = call.prompt_tokens + call.output_tokens
                usd = config.cost(call.prompt_tokens, call.output_tokens)
                await lease.commit(tokens=tokens, usd=usd)
                record.committed = sim_now()
                record.tokens, record.usd = tokens, usd
        except BudgetExceeded:
            record.refused = True
        except AcquireTimeout:
            record.timed_out = True
        record.ended = sim_now()
        if record.granted is None:
            counts["waiting"] -= 1
        else:
            counts["in_flight"] -= 1
        if record.refused:
            counts["refused"] += 1
        elif record.timed_out:
            counts["timeouts"] += 1
        else:
            counts["completed"] += 1
            spent += record.usd
        notify()

    async with anyio.create_task_group() as tg:
        for call in plan:
            await sleep_until(call.arrival)
            tg.start_soon(one_call, call)
    elapsed = sim_now()
    clock_seconds = (timer.monotonic_ns() - origin) / _NS
    snapshot = await limiter.snapshot()
    return _report(config, cap, records, snapshot, elapsed, clock_seconds, lateness)


def _report(
    config: DemoConfig,
    cap: Decimal,
    records: Sequence[_Record],
    snapshot: Snapshot,
    elapsed: float,
    clock_seconds: float,
    lateness: float,
) -> DemoReport:
    granted = [r for r in records if r.granted is not None]
    requests = [(r.granted, 1) for r in granted if r.granted is not None]
    tokens: list[tuple[float, int]] = []
    for r in granted:
        assert r.granted is not None
        tokens.append((r.granted, r.est_tokens))
        if r.committed is not None and r.tokens != r.est_tokens:
            tokens.append((r.committed, r.tokens - r.est_tokens))
    burst_window = 60.0 / config.rpm
    waits = [r.granted - r.started for r in granted if r.granted is not None]
    refused_at = [r.ended for r in records if r.refused and r.ended is not None]
    cap_used = Decimal(0)
    for limit in snapshot.limits:
        if limit.kind == "cap" and limit.axis == "usd":
            cap_used = Decimal(limit.used)
    remaining = snapshot.remaining("usd")
    return DemoReport(
        config=config,
        calls=len(records),
        completed=sum(1 for r in records if r.committed is not None),
        refused=sum(1 for r in records if r.refused),
        timed_out=sum(1 for r in records if r.timed_out),
        tokens=_rate_report("tokens", config.tpm, config.tpm_burst, tokens),
        requests=_rate_report("requests", config.rpm, config.rpm_burst, requests),
        burst=peak_in_window(requests, burst_window),
        burst_window=burst_window,
        burst_bound=config.rpm_burst + config.rpm * burst_window / 60.0,
        cap=cap,
        spent=sum((r.usd for r in records), Decimal(0)),
        cap_used=cap_used,
        cap_remaining=None if remaining is None else Decimal(remaining),
        tokens_used=sum(r.tokens for r in records),
        wait_p50=percentile(waits, 0.50),
        wait_p99=percentile(waits, 0.99),
        wait_max=max(waits, default=0.0),
        elapsed=elapsed,
        lateness=lateness,
        clock_seconds=clock_seconds,
        first_refusal=min(refused_at, default=None),
        overtaken=_overtaken(granted, lateness),
    )


def _overtaken(records: Sequence[_Record], lateness: float) -> int:
    """Grants earlier than a grant to a call that started waiting before."""
    count, latest = 0, -math.inf
    for r in sorted(records, key=lambda r: r.started):  # stable: start order
        assert r.granted is not None
        if r.granted < latest - lateness - 1e-9:
            count += 1
        latest = max(latest, r.granted)
    return count


# ----------------------------------------------------------------- rendering

_Row = tuple[str, str, str, str, str]
_HEADINGS = ("measure", "configured", "achieved", "bound", "ok")


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _usd(value: Decimal) -> str:
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
                f"{rate.limit:,} (burst {rate.burst:,})",
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
    remaining = "-" if report.cap_remaining is None else _usd(report.cap_remaining)
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
            f"cap {_usd(report.cap)}",
            _usd(report.spent),
            _usd(report.cap),
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


class _PlainProgress:
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
            f"spent {_usd(s.spent)} of {_usd(s.cap)}\n"
        )
        self._out.flush()


# ------------------------------------------------------------- status report

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


def render_status_rich(
    statuses: Sequence[LimiterStatus], console: Console, *, store: str
) -> None:
    """Print a ``rich`` table per limiter, with bars (reserved in cyan).

    A table wider than the console is drawn compact: shorter bars, the
    reset as ``in 5h 12m``, one space between columns.
    """
    from rich import box
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

    console.print(Text(f"ratebudget status: {store}", style="bold"))
    if not statuses:
        console.print("no limiters registered on this store yet")
    for item in statuses:
        if item.error is not None:
            console.print(Text(f"{item.name}: error: {item.error}", style="red"))
            continue
        if not item.limits:
            console.print(Text(f"{item.name}: no limits"))
            continue
        table = table_of(item, compact=False)
        unbounded = console.options.update_width(10_000)
        wide = Measurement.get(console, unbounded, table).maximum
        console.print(table if wide <= console.width else table_of(item, True))


# ----------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _usd_amount(text: str) -> Decimal:
    try:
        value = Decimal(text.lstrip("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}") from None
    if not (value.is_finite() and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive amount, got {text}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ratebudget")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``ratebudget`` argument parser; each subcommand sets ``handler``."""
    parser = argparse.ArgumentParser(
        prog="ratebudget",
        description="Keep LLM workloads inside their rate limits and spend budgets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_status(commands)
    return parser


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = DemoConfig()
    demo = commands.add_parser(
        "demo",
        help="run simulated LLM calls through a limiter and show what happened",
        description=(
            "Fan out simulated LLM calls (no network) through a Limiter with a "
            "TPM rate, an RPM rate and a hard USD cap, in compressed time, and "
            "report the rates, bursts, spend and waits that actually occurred."
        ),
    )
    demo.add_argument(
        "--calls",
        type=_positive_int,
        default=defaults.calls,
        help="number of calls (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="random seed of the workload (default: %(default)s)",
    )
    demo.add_argument(
        "--speed",
        type=_positive_float,
        default=defaults.speed,
        help="simulated seconds per real second (default: %(default)g)",
    )
    demo.add_argument(
        "--tpm",
        type=_positive_int,
        default=defaults.tpm,
        help="tokens per minute (default: %(default)s)",
    )
    demo.add_argument(
        "--tpm-burst",
        type=_positive_int,
        default=defaults.tpm_burst,
        help="token burst (default: %(default)s)",
    )
    demo.add_argument(
        "--rpm",
        type=_positive_int,
        default=defaults.rpm,
        help="requests per minute (default: %(default)s)",
    )
    demo.add_argument(
        "--rpm-burst",
        type=_positive_int,
        default=defaults.rpm_burst,
        help="request burst (default: %(default)s)",
    )
    demo.add_argument(
        "--cap",
        type=_usd_amount,
        default=None,
        metavar="USD",
        help="hard spend cap (default: 90%% of the workload's cost)",
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="anyio backend (default: %(default)s)",
    )
    demo.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no live progress, only the final table",
    )
    demo.add_argument(
        "--plain", action="store_true", help="plain text even when rich is installed"
    )
    demo.add_argument(
        "--http",
        action="store_true",
        help="drive the real openai SDK against a fake provider on loopback "
        "(needs openai and genai-prices)",
    )
    demo.set_defaults(handler=_run_demo_command)


def _run_http_demo(args: argparse.Namespace) -> int:
    missing = [
        m for m in ("openai", "genai_prices") if importlib.util.find_spec(m) is None
    ]
    if missing:
        sys.stderr.write(
            f"ratebudget demo --http: error: needs {', '.join(missing)} "
            "(pip install openai 'ratebudget[prices]')\n"
        )
        return 2
    from ._http_demo import render, run_http_demo

    report = anyio.run(run_http_demo, min(args.calls, 200))
    render(report, sys.stdout)
    return 0 if report.throttled == 0 else 1


def _run_demo_command(args: argparse.Namespace) -> int:
    if args.http:
        return _run_http_demo(args)
    err = sys.stderr
    try:
        config = DemoConfig(
            calls=args.calls,
            seed=args.seed,
            speed=args.speed,
            tpm=args.tpm,
            tpm_burst=args.tpm_burst,
            rpm=args.rpm,
            rpm_burst=args.rpm_burst,
            cap_usd=args.cap,
        )
    except ValueError as exc:
        err.write(f"ratebudget demo: error: {exc}\n")
        return 2
    backend: str = args.backend
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        err.write("ratebudget demo: error: trio is not installed (pip install trio)\n")
        return 2
    console: Console | None = None
    if not args.plain and importlib.util.find_spec("rich") is not None:
        from rich.console import Console

        console = Console(file=sys.stdout)
    if console is not None and not args.quiet and sys.stdout.isatty():
        report = _run_live(config, backend, console)
    elif args.quiet:
        report = anyio.run(run_demo, config, backend=backend)
    else:
        plain = _PlainProgress(err)
        report = anyio.run(lambda: run_demo(config, progress=plain), backend=backend)
        plain.finish()
    if console is not None:
        render_rich(report, console, backend=backend)
    else:
        render_plain(report, sys.stdout, backend=backend)
    return 0


def _run_live(config: DemoConfig, backend: str, console: Console) -> DemoReport:
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<6}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        cap = default_cap(config, plan_calls(config))
        calls = bars.add_task("calls", total=config.calls, detail="")
        spend = bars.add_task("spend", total=float(cap), detail="")

        def show(s: DemoProgress) -> None:
            bars.update(
                calls,
                completed=s.finished,
                detail=(
                    f"{s.finished}/{s.calls}: {s.waiting} waiting, "
                    f"{s.in_flight} in flight, {s.refused} refused"
                ),
            )
            detail = f"{_usd(s.spent)} of {_usd(s.cap)}"
            bars.update(spend, completed=float(s.spent), detail=detail)

        return anyio.run(lambda: run_demo(config, progress=show), backend=backend)


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status",
        help="show the limiters on a store: usage, reservations, what is left",
        description=(
            "Show every limiter registered on a persistent store (or only "
            "NAME): for each limit its usage, what outstanding leases "
            "reserve, what is left, and when a calendar cap resets. Exit "
            "status: 0 shown, 2 unknown limiter or unusable URL, 3 store "
            "unavailable."
        ),
    )
    parser.add_argument(
        "--store",
        required=True,
        metavar="URL",
        help="the store: sqlite:///budgets.db, redis://host:6379/0, ...",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="only this limiter")
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json", action="store_true", help="print a JSON document for scripts"
    )
    output.add_argument(
        "--plain", action="store_true", help="plain text even on a terminal"
    )
    output.add_argument(
        "--rich",
        action="store_true",
        help="rich tables even when not writing to a terminal",
    )
    parser.set_defaults(handler=_run_status_command)


def _run_status_command(args: argparse.Namespace) -> int:
    err = sys.stderr
    url: str = args.store
    use_rich = args.rich or (not args.plain and not args.json and sys.stdout.isatty())
    if use_rich and importlib.util.find_spec("rich") is None:
        if args.rich:
            err.write(
                "ratebudget status: error: rich is not installed "
                "(pip install 'ratebudget[cli]')\n"
            )
            return 2
        use_rich = False
    try:
        statuses = status(url, args.name)
    except StoreUnavailable as exc:
        err.write(f"ratebudget status: error: store unavailable: {exc}\n")
        return 3
    except InvalidRequest as exc:
        err.write(f"ratebudget status: error: {exc}\n")
        return 2
    except ImportError as exc:  # a store whose driver is not installed
        err.write(f"ratebudget status: error: cannot open {url}: {exc}\n")
        return 2
    if args.json:
        document = {"store": url, "limiters": [s.to_json() for s in statuses]}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif use_rich:
        from rich.console import Console

        # off a terminal rich assumes 80 columns: let the tables keep their width
        width = None if sys.stdout.isatty() else 200
        render_status_rich(statuses, Console(file=sys.stdout, width=width), store=url)
    else:
        render_status_plain(statuses, sys.stdout, store=url)
    return 0


def _exit_code(code: str | int | None) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``ratebudget`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return _exit_code(exc.code)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
