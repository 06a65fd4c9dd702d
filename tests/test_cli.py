"""The ``ratebudget`` command line and its demo engine (``ratebudget.cli``)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import re
import subprocess
import sys
from decimal import Decimal
from typing import Any

import anyio
import pytest

from ratebudget.cli import (
    LARGEST_ESTIMATE,
    DemoConfig,
    DemoProgress,
    DemoReport,
    default_cap,
    main,
    peak_in_window,
    percentile,
    plan_calls,
    render_plain,
    run_demo,
)
from ratebudget.testing import FakeClock

SMALL = DemoConfig(calls=40)
HEADINGS = ("measure", "configured", "achieved", "bound", "ok")
ROWS = (
    "TPM peak, any 60 s",
    "RPM peak, any 60 s",
    "largest burst",
    "calls overtaken",
    "spend",
    "cap left (snapshot)",
    "calls completed",
    "calls refused by cap",
    "wait p50 / p99",
)


async def _all_tasks_blocked(backend: str) -> None:
    """Return once every other task waits on something and nothing is ready.

    trio knows this exactly. anyio's asyncio version polls every 0.1 s and
    misses callbacks already queued (a finished child's done-callback that
    will wake its task group), so on asyncio we also wait for an empty
    ready queue.
    """
    if backend == "trio":
        await anyio.wait_all_tasks_blocked()
        return
    loop = asyncio.get_running_loop()
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        if not getattr(loop, "_ready", ()) and all(
            task is this
            or (
                (waiter := getattr(task, "_fut_waiter", None)) is not None
                and not waiter.done()
            )
            for task in asyncio.all_tasks()
        ):
            return


async def run_on_fake_clock(config: DemoConfig, backend: str) -> DemoReport:
    """Run the demo on a ``FakeClock`` that jumps to each next deadline.

    Time only moves once every task is blocked, so each timestamp the demo
    records is exactly the instant the limiter (or a latency) scheduled.
    """
    clock = FakeClock()
    reports: list[DemoReport] = []

    async def demo() -> None:
        reports.append(await run_demo(config, clock=clock))

    async with anyio.create_task_group() as tg:
        tg.start_soon(demo)
        while True:
            await _all_tasks_blocked(backend)
            if reports:
                break
            step = clock.next_deadline()
            assert step is not None, "deadlock: the demo waits and nothing sleeps"
            clock.advance(step)
    return reports[0]


def assert_report_invariants(report: DemoReport, *, slack: float = 0.0) -> None:
    """What the contract promises, checked against what the demo measured.

    ``slack`` is wake-up lateness in simulated seconds (zero on a fake clock).
    """
    config = report.config
    assert report.calls == config.calls
    assert report.timed_out == 0
    assert report.completed + report.refused == report.calls
    # Never over the rate: burst + limit/per * window, for each rate.
    for rate in (report.tokens, report.requests):
        allowance = rate.limit / 60.0 * slack
        assert rate.peak_bound == rate.burst + rate.limit
        assert rate.peak <= rate.peak_bound + allowance
        assert rate.mean <= rate.mean_bound + allowance
    assert report.burst_bound == config.rpm_burst + 1
    assert report.burst <= report.burst_bound + config.rpm / 60.0 * slack
    # Exact money: never over the cap, and the limiter agrees to the cent.
    assert report.spent <= report.cap
    assert report.cap_used == report.spent
    assert report.cap_remaining == report.cap - report.spent
    assert isinstance(report.spent, Decimal)
    # First come, first served.
    assert report.overtaken == 0
    # Waits are ordered and non-negative.
    assert 0.0 <= report.wait_p50 <= report.wait_p99 <= report.wait_max


class TestRunDemoOnFakeClock:
    async def test_small_run_keeps_every_promise(self, anyio_backend_name: str) -> None:
        report = await run_on_fake_clock(SMALL, anyio_backend_name)
        assert_report_invariants(report)
        assert report.lateness < 1e-6
        # The default cap is 90% of the planned cost, so the cap must refuse.
        assert report.refused >= 1
        assert report.first_refusal is not None

    async def test_default_run_refuses_near_the_end_and_waits(
        self, anyio_backend_name: str
    ) -> None:
        report = await run_on_fake_clock(DemoConfig(), anyio_backend_name)
        assert_report_invariants(report)
        assert report.calls == 300
        assert 1 <= report.refused < report.calls // 4
        assert report.first_refusal is not None
        assert report.first_refusal >= 0.8 * report.elapsed
        # The rates make callers wait, and the burst is actually used.
        assert report.wait_p99 > 1.0
        assert report.burst >= report.config.rpm_burst
        # Finishes in the advertised 8-12 s of real time at the default speed.
        assert 8.0 <= report.clock_seconds <= 12.0

    async def test_same_seed_same_report(self, anyio_backend_name: str) -> None:
        first = await run_on_fake_clock(SMALL, anyio_backend_name)
        second = await run_on_fake_clock(SMALL, anyio_backend_name)
        assert first == second

    async def test_generous_cap_completes_every_call(
        self, anyio_backend_name: str
    ) -> None:
        config = DemoConfig(calls=40, cap_usd=Decimal(100))
        report = await run_on_fake_clock(config, anyio_backend_name)
        assert_report_invariants(report)
        assert (report.completed, report.refused) == (40, 0)
        assert report.first_refusal is None
        assert report.spent == sum(
            (config.cost(c.prompt_tokens, c.output_tokens) for c in plan_calls(config)),
            Decimal(0),
        )

    async def test_tight_cap_refuses_most_calls(self, anyio_backend_name: str) -> None:
        config = DemoConfig(calls=40, cap_usd=Decimal("0.01"))
        report = await run_on_fake_clock(config, anyio_backend_name)
        assert_report_invariants(report)
        assert report.refused > report.completed

    async def test_progress_counts_add_up(self, anyio_backend_name: str) -> None:
        seen: list[DemoProgress] = []
        clock = FakeClock()
        done = anyio.Event()

        async def demo() -> None:
            await run_demo(SMALL, clock=clock, progress=seen.append)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(demo)
            while not done.is_set():
                await _all_tasks_blocked(anyio_backend_name)
                step = clock.next_deadline()
                if step is not None:
                    clock.advance(step)
        assert seen
        for state in seen:
            assert min(state.waiting, state.in_flight, state.refused) >= 0
            assert state.waiting + state.in_flight + state.finished == state.started
            assert state.spent <= state.cap
        last = seen[-1]
        assert last.finished == last.calls == SMALL.calls
        assert last.waiting == last.in_flight == last.timed_out == 0
        assert [s.elapsed for s in seen] == sorted(s.elapsed for s in seen)


async def test_run_demo_on_the_real_clock() -> None:
    report = await run_demo(DemoConfig(calls=30, speed=1_000))
    # Real sleeps wake a little late; the demo measures by how much.
    assert_report_invariants(report, slack=report.lateness)
    assert report.clock_seconds < 2.0


async def test_table_flags_what_is_over_its_bound(anyio_backend_name: str) -> None:
    report = await run_on_fake_clock(SMALL, anyio_backend_name)
    rpm = report.requests
    over = dataclasses.replace(
        report, requests=dataclasses.replace(rpm, peak=int(rpm.peak_bound) + 1)
    )

    def rpm_peak_row(report: DemoReport) -> str:
        out = io.StringIO()
        render_plain(report, out)
        return next(r for r in out.getvalue().splitlines() if r.startswith("RPM peak"))

    assert rpm_peak_row(report).endswith(" ok")
    # the bound checked is spelled out: a peak above the limit is not an overrun
    assert re.search(r" [\d,]+ \+ [\d,]+ burst ", rpm_peak_row(report))
    assert rpm_peak_row(over).endswith(" OVER")
    # One simulated second of wake-up lateness can add rpm/60 requests.
    late = dataclasses.replace(over, lateness=60.0 / rpm.limit)
    assert rpm_peak_row(late).endswith(" late")


class TestPlan:
    def test_plan_is_seeded_sorted_and_sized(self) -> None:
        plan = plan_calls(SMALL)
        assert plan == plan_calls(SMALL)
        assert plan != plan_calls(DemoConfig(calls=40, seed=SMALL.seed + 1))
        assert len(plan) == 40
        assert sorted(c.index for c in plan) == list(range(40))
        arrivals = [c.arrival for c in plan]
        assert arrivals == sorted(arrivals)
        for call in plan:
            assert 1 <= call.output_tokens <= call.max_output_tokens
            assert call.prompt_tokens + call.max_output_tokens <= LARGEST_ESTIMATE
            assert call.latency > 0

    def test_default_cap_is_below_the_planned_cost(self) -> None:
        plan = plan_calls(SMALL)
        total = sum(
            (SMALL.cost(c.prompt_tokens, c.output_tokens) for c in plan), Decimal(0)
        )
        cap = default_cap(SMALL, plan)
        assert Decimal(0) < cap < total
        assert cap == cap.quantize(Decimal("0.01"))
        explicit = DemoConfig(calls=40, cap_usd=Decimal("1.234"))
        assert default_cap(explicit, plan) == Decimal("1.234")

    def test_cost_is_exact(self) -> None:
        assert SMALL.cost(1_000, 100) == Decimal("0.0045")

    @pytest.mark.parametrize(
        ("bad", "message"),
        [
            ({"calls": 0}, "calls must be at least 1"),
            ({"speed": 0.0}, "speed must be a positive number"),
            ({"speed": float("nan")}, "speed must be a positive number"),
            ({"rpm_burst": 0}, "rpm_burst must be at least 1"),
            ({"tpm_burst": LARGEST_ESTIMATE - 1}, "largest estimate"),
            ({"cap_usd": Decimal(0)}, "cap_usd must be positive"),
            ({"timeout": -1.0}, "timeout must be a positive number"),
        ],
    )
    def test_config_rejects_bad_values(self, bad: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            DemoConfig(**bad)


class TestMeasuring:
    def test_peak_in_window_matches_brute_force(self) -> None:
        rng = random.Random(5)
        for _ in range(200):
            events = [
                (float(rng.randint(0, 20)), rng.randint(-3, 5))
                for _ in range(rng.randint(0, 12))
            ]
            window = float(rng.randint(0, 6))
            # Events sit on integers, so windows starting on every half-integer
            # see every distinct set of events.
            brute = max(
                [0]
                + [
                    sum(a for t, a in events if start <= t <= start + window)
                    for start in (k / 2 for k in range(-20, 44))
                ]
            )
            assert peak_in_window(events, window) == brute

    def test_peak_counts_a_burst_and_one_refill(self) -> None:
        events = [(0.0, 1)] * 10 + [(0.6, 1), (1.2, 1)]
        assert peak_in_window(events, 0.6) == 11
        assert peak_in_window(events, 0.5) == 10
        assert peak_in_window([], 60.0) == 0

    def test_percentile_is_nearest_rank(self) -> None:
        values = [float(v) for v in range(100, 0, -1)]
        assert percentile(values, 0.5) == 50.0
        assert percentile(values, 0.99) == 99.0
        assert percentile(values, 1.0) == 100.0
        assert percentile([3.0], 0.99) == 3.0
        assert percentile([], 0.5) == 0.0


class TestMain:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_plain_demo_prints_progress_and_table(
        self, backend: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["demo", "--calls", "40", "--speed", "500", "--plain"]
        assert main([*argv, "--backend", backend]) == 0
        out, err = capsys.readouterr()
        for text in (*HEADINGS, *ROWS, f"seed 8, {backend}"):
            assert text in out
        assert "OVER" not in out
        assert "40/40 done" in err

    def test_rich_table_when_rich_is_installed(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pytest.importorskip("rich")
        assert main(["demo", "--calls", "30", "--speed", "500", "--quiet"]) == 0
        out, err = capsys.readouterr()
        for text in (*HEADINGS, *ROWS):
            assert text in out
        assert "✓" in out
        assert "✗" not in out
        assert err == ""

    def test_live_progress_on_a_terminal(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pytest.importorskip("rich")

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        terminal = Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        monkeypatch.setenv("TERM", "xterm-256color")
        assert main(["demo", "--calls", "20", "--speed", "500"]) == 0
        shown = terminal.getvalue()
        assert "in flight" in shown  # the live progress line
        assert "\x1b[" in shown  # drawn with terminal control codes
        assert "wait p50 / p99" in shown
        assert capsys.readouterr().err == ""

    def test_without_rich_everything_is_plain_text(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(sys.modules, "rich", None)  # import rich now fails
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        assert main(["demo", "--calls", "20", "--speed", "500"]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("ratebudget demo\n\nmeasure ")
        assert "20/20 done" in err

    def test_importing_the_cli_does_not_import_rich(self) -> None:
        code = "import sys, ratebudget.cli; print('rich' in sys.modules)"
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.strip() == "False"

    def test_quiet_plain_prints_only_the_table(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = ["demo", "--calls", "20", "--speed", "500", "--quiet", "--plain"]
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert out.startswith("ratebudget demo\n\nmeasure ")
        assert "✓" not in out
        assert err == ""

    def test_python_dash_m(self) -> None:
        argv = ["demo", "--calls", "20", "--speed", "500", "--quiet"]
        done = subprocess.run(
            [sys.executable, "-m", "ratebudget", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "calls refused by cap" in done.stdout

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            ([], "required"),
            (["demo", "--calls", "0"], "at least 1"),
            (["demo", "--speed", "nan"], "positive"),
            (["demo", "--cap", "-1"], "positive"),
            (["demo", "--backend", "curio"], "invalid choice"),
            (["demo", "--tpm-burst", "100"], "largest estimate"),
            (["frobnicate"], "invalid choice"),
        ],
    )
    def test_bad_arguments_exit_2(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(argv) == 2
        assert message in capsys.readouterr().err

    def test_version_and_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["--version"]) == 0
        assert capsys.readouterr().out.startswith("ratebudget ")
        assert main(["demo", "--help"]) == 0
        assert "--backend" in capsys.readouterr().out


def test_demo_http_drives_the_openai_sdk_on_loopback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("genai_prices")
    from ratebudget.cli import main

    assert main(["demo", "--http", "--calls", "40"]) == 0
    out = capsys.readouterr().out
    assert "40 chat completions through the openai SDK" in out
    assert "answered 0 with 429" in out
    answered = int(out.split("answered ")[1].split(",")[0])
    refused = int(out.split("refused before sending ")[1].split(" ")[0])
    assert answered + refused == 40
    assert answered > 0


def _demo_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``ratebudget demo`` as a user runs it, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ratebudget", "demo", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestHttpDemoFlags:
    """``demo --http`` honours every option it can and refuses the others."""

    @pytest.fixture(autouse=True)
    def _sdks(self) -> None:
        pytest.importorskip("openai")
        pytest.importorskip("genai_prices")

    def test_calls_cap_and_rates_are_honoured(self) -> None:
        done = _demo_cli(
            "--http", "--calls", "240", "--cap", "0.01", "--rpm", "30000",
            "--rpm-burst", "20", "--tpm", "600000", "--tpm-burst", "5000",
        )  # fmt: skip
        assert done.returncode == 0, done
        out = done.stdout
        assert "240 chat completions" in out  # not cut to 200
        assert "24,000 requests/min (burst 20)" in out  # 80% of the provider's
        assert "480,000 tokens/min (burst 5,000)" in out
        assert "cap $0.01 a day" in out
        assert "of $0.01" in out
        answered = int(out.split("answered ")[1].split(",")[0])
        refused = int(out.split("refused before sending ")[1].split(" ")[0])
        assert answered + refused == 240
        assert answered == 240  # $0.01 pays for every one of them

    def test_a_small_cap_refuses_calls(self) -> None:
        done = _demo_cli("--http", "--calls", "30", "--cap", "0.00005")
        assert done.returncode == 0, done
        refused = int(done.stdout.split("refused before sending ")[1].split(" ")[0])
        assert refused > 0

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--backend", "trio"], "asyncio only"),
            (["--seed", "3"], "--seed shape the simulated demo"),
            (["--speed", "10", "--seed", "0"], "--seed and --speed"),
            (["--tpm-burst", "100"], "--tpm-burst needs --tpm"),
            (["--tpm", "100", "--tpm-burst", "10"], "burst"),
        ],
    )
    def test_what_it_cannot_honour_is_refused(
        self, argv: list[str], message: str
    ) -> None:
        done = _demo_cli("--http", *argv)
        assert done.returncode == 2, done
        assert message in done.stderr
        assert "Traceback" not in done.stderr
