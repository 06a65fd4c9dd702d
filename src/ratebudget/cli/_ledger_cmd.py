"""``ratebudget ledger verify``: a ledger against a store's counters."""

from __future__ import annotations

import argparse
import json
import sys

from .. import InvalidRequest
from .._ledger import Ledger
from .._verify import Check, differences, verify
from ..stores._base import redact
from ._report import columns, reading

__all__ = ("add_command",)


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "ledger",
        help="check a usage ledger against a store",
        description="Work with a usage ledger (Limiter(..., ledger=URL)).",
    )
    sub = parser.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    check = sub.add_parser(
        "verify",
        help="compare the ledger's sums with the store's counters",
        description=(
            "For every cap of every limiter on the store (or NAME), compare "
            "the usage its counter holds this period with the sum of the "
            "ledger's committed and recorded rows of that scope and its "
            "descendants in the period. Exit status: 0 equal everywhere, 1 a "
            "difference (a table of them), 2 bad arguments, 3 store or "
            "ledger unavailable."
        ),
    )
    check.add_argument("--store", metavar="URL", required=True, help="the store")
    check.add_argument("--ledger", metavar="URL", required=True, help="the ledger")
    check.add_argument(
        "name", nargs="?", metavar="NAME", help="only this limiter (or glob)"
    )
    check.add_argument("--json", action="store_true", help="print a JSON document")
    check.set_defaults(handler=_verify)
    sync = sub.add_parser(
        "sync",
        help="copy the ledger rows a Redis store holds into the ledger",
        description=(
            "A Redis store writes each ledger row in the script call of its "
            "commit, on its tree's stream; limiters with the ledger copy them "
            "as they run. This copies what is there now (rows a killed "
            "process left, say); a row already in the ledger is kept once. "
            "Exit status: 0 copied, 2 bad arguments, 3 unavailable."
        ),
    )
    sync.add_argument("--store", metavar="URL", required=True, help="the Redis store")
    sync.add_argument("--ledger", metavar="URL", required=True, help="the ledger")
    sync.set_defaults(handler=_sync)


def _sync(args: argparse.Namespace) -> int:
    from ..stores import open_store

    def copy(ledger: Ledger) -> tuple[int]:
        store = open_store(args.store)
        try:
            if not hasattr(store, "watch_stream"):
                raise InvalidRequest(
                    f"{redact(args.store)}: only a Redis store keeps ledger rows "
                    "of its own (a SQLite store writes them into its file)"
                )
            from ..stores.redis import RedisStore

            assert isinstance(store, RedisStore)
            for name, spec in store.limiters().items():
                root = spec.get("root")
                store.watch_stream(root if isinstance(root, str) else name)
            return (ledger.sync(store),)
        finally:
            store.close()

    got = reading("ledger sync", args.ledger, copy)
    if isinstance(got, int):
        return got
    (copied,) = got
    sys.stdout.write(f"copied {copied:,} rows from {redact(args.store)}\n")
    return 0


def _row(c: Check) -> dict[str, object]:
    return {
        "scope": c.scope,
        "axis": c.axis,
        "period": c.period,
        "since": None if c.since is None else c.since.isoformat(),
        "until": None if c.until is None else c.until.isoformat(),
        "store": str(c.store),
        "ledger": str(c.ledger),
        "ok": c.ok,
    }


def _verify(args: argparse.Namespace) -> int:
    checks = reading(
        "ledger verify",
        args.ledger,
        lambda ledger: verify(args.store, ledger, args.name),
    )
    if isinstance(checks, int):
        return checks
    bad = differences(checks)
    out = sys.stdout
    if args.json:
        out.write(
            json.dumps(
                {
                    "store": redact(args.store),
                    "ledger": redact(args.ledger),
                    "ok": not bad,
                    "checks": [_row(c) for c in checks],
                },
                indent=2,
            )
            + "\n"
        )
    elif not bad:
        out.write(
            f"ok: {len(checks)} cap{'s' if len(checks) != 1 else ''} on "
            f"{redact(args.store)} match the ledger\n"
        )
    else:
        rows = [["scope", "axis", "period", "store", "ledger", "difference"]]
        rows += [
            [
                c.scope,
                c.axis,
                c.period or "lifetime",
                f"{c.store:,}",
                f"{c.ledger:,}",
                f"{c.store - c.ledger:+,}",
            ]
            for c in bad
        ]
        out.write(
            f"{len(bad)} of {len(checks)} caps on {redact(args.store)} differ "
            "from the ledger:\n"
        )
        columns(rows, 3, out)
    return 1 if bad else 0
