"""``ratebudget status``: its options, and the command that reads and renders."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from .. import InvalidRequest, Ledger, StoreUnavailable
from ..stores._base import redact
from ._status_reader import LimiterStatus, ScopeStatus, status, status_tree
from ._status_render import render_status_plain, render_status_rich


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
    if args.json and tree is not None:
        document = {
            "store": shown,
            "config": args.config,
            "scopes": [s.to_json() for s in tree],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif args.json:
        document = {"store": shown, "limiters": [s.to_json() for s in statuses]}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif use_rich:
        from rich.console import Console

        # off a terminal rich assumes 80 columns: let the tables keep their width
        width = None if sys.stdout.isatty() else 200
        render_status_rich(statuses, Console(file=sys.stdout, width=width), store=shown)
    else:
        render_status_plain(statuses, sys.stdout, store=shown)
    return 0


def _indented(scope: ScopeStatus) -> LimiterStatus:
    """A scope's status named for a tree: indented, with its owner."""
    s = scope.status
    label = "  " * scope.depth + s.name
    if scope.per_key:
        label += " (per key)"
    if scope.owner:
        label += f" — {scope.owner}"
    return LimiterStatus(label, s.limits, s.at, s.error)
