"""The ``ratebudget`` argument parser and :func:`main`; a module per command."""

from __future__ import annotations

import argparse
import sys

from . import _check, _dashboard, _demo, _ledger_cmd, _report, _status


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
    _demo.add_command(commands)
    _status.add_command(commands)
    _report.add_command(commands)
    _ledger_cmd.add_command(commands)
    _check.add_command(commands)
    _dashboard.add_command(commands)
    return parser


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
