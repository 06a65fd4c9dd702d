"""``ratebudget status``: its options, and the command that reads and renders."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

from .. import InvalidRequest, StoreUnavailable
from ..stores._base import redact
from ._status_reader import status
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
        required=True,
        metavar="URL",
        help="the store: sqlite:///budgets.db, redis://host:6379/0, ...",
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
    url: str = args.store
    shown = redact(url) if isinstance(url, str) else url  # never a password
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
        if args.name is not None and args.name_option is not None:
            raise InvalidRequest("give a limiter's name as NAME or --name, not both")
        statuses = status(url, args.name if args.name is not None else args.name_option)
    except StoreUnavailable as exc:
        err.write(f"ratebudget status: error: store unavailable: {exc}\n")
        return 3
    except InvalidRequest as exc:
        err.write(f"ratebudget status: error: {exc}\n")
        return 2
    except ImportError as exc:  # a store whose driver is not installed
        err.write(f"ratebudget status: error: cannot open {shown}: {exc}\n")
        return 2
    if args.json:
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
