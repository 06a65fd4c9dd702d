"""A Redis store's ledger rows: on each tree's stream, copied to the ledger.

The script writes a row on ``{root}:ledger`` in the call that commits,
releases or records (so a commit that returned loses no row if its process
is killed), and every store that keeps a ledger copies the rows of the
trees it watches into it, then drops them from the stream. On a cluster
each tree's stream is on the tree's own shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import StoreUnavailable
from .._ledger_db import Row, row_of
from ._codec import book_of
from ._redis_link import text

if TYPE_CHECKING:
    from .._ledger import Ledger

__all__ = ("LedgerStreams",)


class LedgerStreams:
    """The half of ``RedisStore`` that keeps the ledger's rows on each
    tree's stream (a base whose state is the set of streams watched)."""

    url: str
    _redis: Any
    _errors: tuple[type[Exception], ...]
    _streams: set[str]  # the ledger streams this process copies

    def books(self, ledger: Ledger, name: str | None) -> bool:
        """Every ledger: the script writes a row on the stream of the tree
        (``{root}:ledger``) in the call that commits, releases or records;
        ``ledger`` copies the rows from there (its writer thread, about
        once a second and at ``flush``), so a commit that returned loses no
        row if its process is killed: the next process (or ``ratebudget
        ledger sync``) copies it."""
        if name is None:
            return False
        key = self.watch_stream(name)
        try:  # made now (empty): the leases its tree's calls find expired get rows
            if not self._redis.exists(key):
                entry = self._redis.xadd(key, {"made": "1"})
                self._redis.xdel(key, entry)
        except self._errors:
            pass  # made by the first row; until then expiries go unwritten
        ledger._add_source(self)
        return True

    def watch_stream(self, root: str) -> str:
        """Copy the ledger rows of tree ``root`` (from this process); its
        stream's key."""
        key = "{" + root + "}:ledger"
        self._streams.add(key)
        return key

    def read_books(
        self, limit: int = 500
    ) -> tuple[list[Row], list[tuple[str, list[bytes]]]]:
        """Rows waiting on the streams watched, and their entries (to
        ``ack_books`` once the rows are written)."""
        rows: list[Row] = []
        acks: list[tuple[str, list[Any]]] = []
        try:
            for key in sorted(self._streams):
                got = self._redis.xrange(key, count=limit)
                if not got:
                    continue
                ids: list[Any] = []
                for entry_id, got_fields in got:
                    # (bytes, or text from a client made with decode_responses)
                    fields: dict[Any, Any] = {
                        text(k): v for k, v in (got_fields or {}).items()
                    }
                    book = book_of(fields["row"])
                    rows.append(
                        row_of(
                            book.lease_id,
                            int(fields["at"]),
                            book.scope,
                            book.labels,
                            book.outcome,
                            dict(book.units),
                        )
                    )
                    ids.append(entry_id)
                acks.append((key, ids))
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        except (KeyError, ValueError, TypeError) as e:
            raise StoreUnavailable(
                f"Redis store {self.url}: a ledger row is unreadable ({e})"
            ) from e
        return rows, acks

    def ack_books(self, acks: list[tuple[str, list[Any]]]) -> None:
        """Drop the stream entries whose rows are in the ledger."""
        try:
            for key, ids in acks:
                self._redis.xdel(key, *ids)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
