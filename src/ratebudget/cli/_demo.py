"""``ratebudget demo``: its options, and the command that runs and renders it."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import anyio

from ._args import positive_float, positive_int
from ._demo_render import PlainProgress, format_usd, render_plain, render_rich
from ._simulate import DemoProgress, DemoReport, run_demo
from ._workload import DemoConfig, default_cap, plan_calls

if TYPE_CHECKING:
    from rich.console import Console


def _usd_amount(text: str) -> Decimal:
    try:
        value = Decimal(text.lstrip("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount of USD: {text!r}") from None
    if not (value.is_finite() and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive amount, got {text}")
    return value


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the subcommands; its handler runs the demo."""
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
        type=positive_int,
        default=None,
        help=f"number of calls (default: {defaults.calls})",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"random seed of the workload (default: {defaults.seed})",
    )
    demo.add_argument(
        "--speed",
        type=positive_float,
        default=None,
        help=f"simulated seconds per real second (default: {defaults.speed:g})",
    )
    demo.add_argument(
        "--tpm",
        type=positive_int,
        default=None,
        help=f"tokens per minute (default: {defaults.tpm})",
    )
    demo.add_argument(
        "--tpm-burst",
        type=positive_int,
        default=None,
        help=f"token burst (default: {defaults.tpm_burst})",
    )
    demo.add_argument(
        "--rpm",
        type=positive_int,
        default=None,
        help=f"requests per minute (default: {defaults.rpm})",
    )
    demo.add_argument(
        "--rpm-burst",
        type=positive_int,
        default=None,
        help=f"request burst (default: {defaults.rpm_burst})",
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
        default=None,
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
        help="drive the real openai SDK against a fake provider on loopback, "
        "in real time (needs openai and genai-prices): --calls (default 200), "
        "--rpm (the provider's; default 6000), --rpm-burst, --tpm, --tpm-burst "
        "and --cap (default $0.0005) apply; the limiter runs at 80%% of the "
        "provider's limits",
    )
    demo.set_defaults(handler=_run_demo_command)


def _run_http_demo(args: argparse.Namespace) -> int:
    err = sys.stderr
    if args.backend == "trio":
        err.write(
            "ratebudget demo --http: error: the openai SDK's async client runs "
            "on asyncio only; drop --backend trio\n"
        )
        return 2
    simulated = [
        opt
        for opt, value in (("--seed", args.seed), ("--speed", args.speed))
        if value is not None
    ]
    if simulated:
        err.write(
            f"ratebudget demo --http: error: {' and '.join(simulated)} shape the "
            "simulated demo; --http sends real requests in real time\n"
        )
        return 2
    if args.tpm is None and args.tpm_burst is not None:
        err.write("ratebudget demo --http: error: --tpm-burst needs --tpm\n")
        return 2
    missing = [
        m for m in ("openai", "genai_prices") if importlib.util.find_spec(m) is None
    ]
    if missing:
        err.write(
            f"ratebudget demo --http: error: needs {', '.join(missing)} "
            "(pip install openai 'ratebudget[prices]')\n"
        )
        return 2
    from ._http_demo import render, run_http_demo

    try:
        report = anyio.run(
            functools.partial(
                run_http_demo,
                200 if args.calls is None else args.calls,
                cap=Decimal("0.0005") if args.cap is None else args.cap,
                rpm=6_000 if args.rpm is None else args.rpm,
                rpm_burst=10 if args.rpm_burst is None else args.rpm_burst,
                tpm=args.tpm,
                tpm_burst=args.tpm_burst,
            )
        )
    except ValueError as exc:  # InvalidRequest: a limit the limiter refuses
        err.write(f"ratebudget demo --http: error: {exc}\n")
        return 2
    render(report, sys.stdout)
    return 0 if report.throttled == 0 else 1


def _run_demo_command(args: argparse.Namespace) -> int:
    if args.http:
        return _run_http_demo(args)
    err = sys.stderr
    try:
        given = {
            name: getattr(args, name)
            for name in (
                "calls",
                "seed",
                "speed",
                "tpm",
                "tpm_burst",
                "rpm",
                "rpm_burst",
            )
            if getattr(args, name) is not None
        }
        config = DemoConfig(**given, cap_usd=args.cap)
    except ValueError as exc:
        err.write(f"ratebudget demo: error: {exc}\n")
        return 2
    backend: str = args.backend or "asyncio"
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
        plain = PlainProgress(err)
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
            detail = f"{format_usd(s.spent)} of {format_usd(s.cap)}"
            bars.update(spend, completed=float(s.spent), detail=detail)

        return anyio.run(lambda: run_demo(config, progress=show), backend=backend)
