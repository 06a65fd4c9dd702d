"""``ratebudget dashboard``: serve a local, read-only web page of a store
and its ledger (extra ``dashboard``)."""

from __future__ import annotations

import argparse
import sys

from .. import InvalidRequest, StoreUnavailable

__all__ = ("add_command",)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dashboard`` to the subcommands."""
    parser = commands.add_parser(
        "dashboard",
        help="a live, read-only web page of a store's scopes, spend and forecasts",
        description=(
            "Serve a web page (on loopback unless --host says otherwise) that "
            "shows the scopes of a store with what each cap has used, "
            "reserved and left, reset times and forecasts, a burn chart per "
            "USD cap, and the top spenders by scope or label from the ledger, "
            "updated every second. Read-only; no password is ever shown; "
            "every asset is served from the package. Needs the extra "
            "dashboard (pip install 'ratebudget[dashboard]'). Exit status: 0 "
            "stopped, 2 bad arguments or extra missing, 3 store unavailable."
        ),
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the store: sqlite:///budgets.db, redis://host:6379/0, ...",
    )
    parser.add_argument(
        "--ledger",
        metavar="URL",
        help=(
            "the usage ledger for forecasts, burn charts and top spenders "
            "(default: the budgets file's, else a SQLite store's own file "
            "when it keeps one)"
        ),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=(
            "a budgets file: show its tree of scopes (--store and --ledger "
            "default to the file's)"
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to serve on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="the port (default 8765; 0: any free)"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    err = sys.stderr
    try:
        from ..dashboard import MissingExtra, Source, run
        from ..dashboard._server import bind, require, url_of

        require()
    except ImportError as e:
        err.write(f"ratebudget dashboard: error: {e}\n")
        return 2
    try:
        source = Source(args.store, args.ledger, args.config)
        try:
            source.scopes()  # fail now, not in the browser
        except BaseException:
            source.close()
            raise
    except StoreUnavailable as e:
        err.write(f"ratebudget dashboard: error: store unavailable: {e}\n")
        return 3
    except (InvalidRequest, MissingExtra) as e:
        err.write(f"ratebudget dashboard: error: {e}\n")
        return 2
    except ImportError as e:  # a store whose driver is not installed
        err.write(f"ratebudget dashboard: error: {e}\n")
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        source.close()
        err.write(
            f"ratebudget dashboard: error: cannot serve on {args.host}:{args.port}: {e}\n"
        )
        return 2
    shown = source.describe()
    err.write(
        f"ratebudget dashboard: {url_of(sock)}/ (store {shown['store']}, "
        f"ledger {shown['ledger'] or 'none'}; read-only; Ctrl-C to stop)\n"
    )
    err.flush()
    if args.host not in _LOOPBACK:
        err.write(
            "ratebudget dashboard: warning: not on loopback: anyone who can "
            f"reach {args.host} can read these budgets and spend\n"
        )
    try:
        with sock:
            run(source, sock)
    finally:
        source.close()
    return 0
