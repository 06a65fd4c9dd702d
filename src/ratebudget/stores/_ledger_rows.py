"""A ledger kept in a store's own file (``ledger=True`` on a SQLite store):
the rows it writes in the transaction of the operations they are about."""

from __future__ import annotations

from typing import Any

from .._decide import ACTIVE, EXPIRED, UNCLAIMED
from .._ledger_db import Row, row_of
from ._ops import Book
from ._state import Document

__all__ = ("book_row", "expired", "expired_row")


def book_row(book: Book, now: int) -> Row:
    """``book`` as a row, stamped with the store's time ``now`` (µs)."""
    return row_of(
        book.lease_id, now, book.scope, book.labels, book.outcome, dict(book.units)
    )


def expired_row(key: str, scope: str, now: int) -> Row:
    """The row of lease ``key`` of ``scope``, reclaimed after its TTL ($0)."""
    return row_of(key, now, scope, "{}", "expired", {})


def expired(records: dict[str, list[Any]], out: Document) -> list[str]:
    """The leases of ``records`` (as loaded) that the batch found expired."""
    return [
        key
        for key, rec in records.items()
        if rec[0] in (ACTIVE, UNCLAIMED)
        and (got := out.records.get(key)) is not None
        and got[0] == EXPIRED
    ]
