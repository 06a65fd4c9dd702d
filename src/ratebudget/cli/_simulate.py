"""The demo's simulator: :func:`run_demo` runs the workload through a limiter."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import anyio

from .. import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    Clock,
    Limiter,
    Rate,
    Snapshot,
    SystemClock,
)
from ._stats import RateReport, peak_in_window, percentile, rate_report
from ._workload import DemoConfig, PlannedCall, default_cap, plan_calls

_NS = 1_000_000_000


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
        tokens=rate_report("tokens", config.tpm, config.tpm_burst, tokens),
        requests=rate_report("requests", config.rpm, config.rpm_burst, requests),
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
