"""What the dashboard shows, read from a store and a ledger: JSON-able dicts.

Every read here blocks (SQLite, Redis, PostgreSQL): the app runs them in a
worker thread. Nothing is written: the store is opened read-only (as
``ratebudget status`` opens it), and a SQLite ledger must already exist.
URLs are only ever returned redacted.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from typing import Any

from .._exceptions import InvalidRequest, StoreUnavailable
from .._ledger import Ledger
from ..cli._status_reader import ScopeStatus, status, status_tree
from ..stores import open_store
from ..stores._base import redact
from ..stores.sqlite import SQLiteStore

__all__ = ("Source",)


class Source:
    """The store (``store_url``, or a budgets file's ``config`` with its
    store) and the ledger the dashboard reads.

    ``store_url`` defaults to the budgets file's ``store``; ``ledger_url``
    to the file's ``ledger`` URL, else to the store's own file when the
    store is SQLite and keeps its ledger there (``ledger=True``). Raises ``InvalidRequest`` for
    unusable arguments (a budgets file's mistakes included).
    """

    def __init__(
        self,
        store_url: str | None = None,
        ledger_url: str | None = None,
        config: str | None = None,
    ) -> None:
        if store_url is None and config is None:
            raise InvalidRequest("give --store URL (or --config FILE)")
        if config is not None:  # the file names its store, and maybe its ledger
            from .._budgets import read

            settings = read(config).settings
            found = settings.get("store")
            if store_url is None and isinstance(found, str):
                store_url = found
            named = settings.get("ledger")
            if ledger_url is None and isinstance(named, str):
                ledger_url = named
        self.store_url = store_url
        self.config = config
        if ledger_url is None and store_url is not None:
            ledger_url = _ledger_in_store(store_url)
        elif ledger_url is not None:
            _check_ledger(ledger_url)
        self.ledger: Ledger | None = None if ledger_url is None else Ledger(ledger_url)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()

    def describe(self) -> dict[str, str | None]:
        """What is read, fit to show: URLs without their passwords."""
        return {
            "store": None if self.store_url is None else redact(self.store_url),
            "ledger": None if self.ledger is None else self.ledger.url,
            "config": None if self.config is None else os.path.basename(self.config),
        }

    def scopes(self) -> list[ScopeStatus]:
        """Every scope, parents first, each cap with its forecast when there
        is a ledger (blocking)."""
        if self.config is not None:
            return status_tree(self.config, self.store_url, self.ledger)[1]
        assert self.store_url is not None
        found = status(self.store_url, None, self.ledger)
        found.sort(key=lambda s: s.name.split("/"))
        return [ScopeStatus(s.name.count("/"), None, False, s) for s in found]

    def status(self) -> dict[str, Any]:
        """``/api/status``: the scope tree with every limit's state."""
        scopes = self.scopes()
        at = max((s.status.at for s in scopes if s.status.at), default=None)
        return {
            **self.describe(),
            "at": (at or datetime.now(timezone.utc)).isoformat(),
            "scopes": [s.to_json() for s in scopes],
        }


def _ledger_in_store(store_url: str) -> str | None:
    """The ledger kept in a SQLite store's own file, if it has one."""
    store = open_store(store_url)
    try:
        if not isinstance(store, SQLiteStore) or store.path == ":memory:":
            return None
        path = store.path  # as given: a relative URL stays relative
    finally:
        store.close()
    if not os.path.exists(path) or not _has_ledger(path):
        return None
    return "sqlite:///" + path


def _has_ledger(path: str) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rb_ledger'"
        ).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return found is not None


def _check_ledger(url: str) -> None:
    """A read-only view makes no file: a SQLite ledger must exist."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and not os.path.exists(path):
            raise StoreUnavailable(
                f"no ledger at {redact(url)}: the file does not exist"
            )
