"""``ratebudget status``: its options, and the command that reads and renders."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time

from .. import InvalidRequest, Ledger, StoreUnavailable
from ..stores._base import redact
from ._args import positive_int
from ._status_reader import LimiterStatus, ScopeStatus, status, status_tree
from ._status_render import render_status_plain, render_status_rich, status_group


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the subcommands; its handler reads a store."""
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
        metavar="URL",
        help="the store: sqlite:///budgets.db, redis://host:6379/0, ...",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=(
            "a budgets file (ratebudget.load's TOML): show its tree of scopes, "
            "with their owners and the keys of their per-key scopes "
            "(--store defaults to the file's)"
        ),
    )
    parser.add_argument(
        "--ledger",
        metavar="URL",
        help=(
            "a usage ledger (sqlite:///usage.db, postgresql://...): forecast "
            "each cap's usage at the end of its period from its history"
        ),
    )
    parser.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="only this limiter, or those matching a pattern ('acme/*')",
    )
    parser.add_argument(
        "--name",
        dest="name_option",
        metavar="PATTERN",
        help="the same as NAME: a limiter's name or a glob pattern ('acme/*')",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=_seconds,
        const=1.0,
        metavar="SECONDS",
        help=(
            "show it again every SECONDS (1 by default) until interrupted: "
            "redrawn in place on a terminal, else one frame after another "
            "(--json: a document per line)"
        ),
    )
    parser.add_argument(
        "--count",
        type=positive_int,
        metavar="N",
        help="with --watch: stop after N frames",
    )
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
    url: str | None = args.store
    shown = redact(url) if isinstance(url, str) else ""  # never a password
    use_rich = args.rich or (not args.plain and not args.json and sys.stdout.isatty())
    if use_rich and importlib.util.find_spec("rich") is None:
        if args.rich:
            err.write(
                "ratebudget status: error: rich is not installed "
                "(pip install 'ratebudget[cli]')\n"
            )
            return 2
        use_rich = False
    if args.count is not None and args.watch is None:
        err.write("ratebudget status: error: --count goes with --watch\n")
        return 2
    got = _read(args, shown)
    if isinstance(got, int):
        return got
    if args.watch is None:
        _show(args, use_rich, *got)
        return 0
    return _watch(args, use_rich, shown)


Read = tuple[list[LimiterStatus], "list[ScopeStatus] | None", str]


def _read(args: argparse.Namespace, shown: str) -> Read | int:
    """What ``status`` shows now; else, its error written, the exit status."""
    err = sys.stderr
    url: str | None = args.store
    tree = None
    try:
        if args.name is not None and args.name_option is not None:
            raise InvalidRequest("give a limiter's name as NAME or --name, not both")
        if args.config is not None:
            if args.name is not None or args.name_option is not None:
                raise InvalidRequest("--config shows its whole tree: give no NAME")
            url, tree = status_tree(args.config, url)
            shown = redact(url)
            statuses = [_indented(s) for s in tree]
        elif url is None:
            raise InvalidRequest("give --store URL (or --config FILE)")
        else:
            ledger = None if args.ledger is None else Ledger(args.ledger)
            try:
                statuses = status(
                    url,
                    args.name if args.name is not None else args.name_option,
                    ledger,
                )
            finally:
                if ledger is not None:
                    ledger.close()
    except StoreUnavailable as exc:
        err.write(f"ratebudget status: error: store unavailable: {exc}\n")
        return 3
    except InvalidRequest as exc:
        err.write(f"ratebudget status: error: {exc}\n")
        return 2
    except ImportError as exc:  # a store whose driver is not installed
        err.write(f"ratebudget status: error: cannot open {shown}: {exc}\n")
        return 2
    return statuses, tree, shown


def _show(
    args: argparse.Namespace,
    use_rich: bool,
    statuses: list[LimiterStatus],
    tree: list[ScopeStatus] | None,
    shown: str,
) -> None:
    if args.json and tree is not None:
        document = {
            "store": shown,
            "config": args.config,
            "scopes": [s.to_json() for s in tree],
        }
        sys.stdout.write(json.dumps(document, indent=None if args.watch else 2) + "\n")
    elif args.json:
        document = {"store": shown, "limiters": [s.to_json() for s in statuses]}
        sys.stdout.write(json.dumps(document, indent=None if args.watch else 2) + "\n")
    elif use_rich:
        from rich.console import Console

        # off a terminal rich assumes 80 columns: let the tables keep their width
        width = None if sys.stdout.isatty() else 200
        render_status_rich(statuses, Console(file=sys.stdout, width=width), store=shown)
    else:
        render_status_plain(statuses, sys.stdout, store=shown)
    sys.stdout.flush()


def _watch(args: argparse.Namespace, use_rich: bool, shown: str) -> int:
    """Read and show again every ``--watch`` seconds (``--count`` times, or
    until interrupted): redrawn in place by rich on a terminal, else a
    frame after another (``--json``: a document per line). A store that
    fails a read is said so in that frame, and the watch goes on."""
    every: float = args.watch
    frames = 0
    live = None
    try:
        if use_rich and sys.stdout.isatty():
            from rich.console import Console
            from rich.live import Live

            console = Console(file=sys.stdout)
            live = Live(console=console, auto_refresh=False, screen=False)
            live.start()
        while args.count is None or frames < args.count:
            if frames:
                time.sleep(every)
            frames += 1
            got = _read(args, shown)
            if isinstance(got, int):
                if live is None:
                    sys.stdout.write("\n")
                continue  # what failed is on stderr; the next frame tries again
            if live is not None:
                statuses, _tree, where = got
                live.update(status_group(statuses, live.console, store=where))
                live.refresh()
                continue
            if frames > 1 and not args.json:
                sys.stdout.write("\n")
            _show(args, use_rich, *got)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return 0


def _seconds(text: str) -> float:
    try:
        every = float(text)
    except ValueError:
        every = math.nan
    if not (math.isfinite(every) and 0.05 <= every <= 86_400):
        raise argparse.ArgumentTypeError(f"{text!r}: seconds from 0.05 to 86400")
    return every


def _indented(scope: ScopeStatus) -> LimiterStatus:
    """A scope's status named for a tree: indented, with its owner."""
    s = scope.status
    label = "  " * scope.depth + s.name
    if scope.per_key:
        label += " (per key)"
    if scope.owner:
        label += f" — {scope.owner}"
    return LimiterStatus(label, s.limits, s.at, s.error)
