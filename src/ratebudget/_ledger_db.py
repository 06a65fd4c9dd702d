"""Where a ledger keeps its rows: a SQLite file or a PostgreSQL database.

One table, ``rb_ledger``, one row per settled lease (or ``record()``),
keyed by the lease's id: a row written twice (a retry, a copy) is kept
once (``ON CONFLICT DO NOTHING``). Amounts are integer units (USD in
nano-dollars), so sums are exact in SQL; the labels are a JSON object.
Both backends speak the same SQL but for their placeholders, their JSON
access and their integer types.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from ._exceptions import InvalidRequest, StoreUnavailable
from .stores._base import redact

__all__ = (
    "COLUMNS",
    "INSERT_SQLITE",
    "LEDGER_INDEX",
    "SQLITE_TABLE",
    "Database",
    "Row",
    "labels_text",
    "open_database",
    "row_of",
)

# the axes with a column of their own; any other axis goes into ``other``
COLUMNS: Final = ("requests", "tokens", "input_tokens", "output_tokens", "usd")

# lease_id, at (UTC µs), scope, labels (JSON), outcome, the five axes (usd:
# None when the call was not priced), other axes (JSON of units)
Row = tuple[str, int, str, str, str, int, int, int, int, "int | None", str]

SQLITE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS rb_ledger (
    lease_id TEXT PRIMARY KEY,
    at_us INTEGER NOT NULL,
    scope TEXT NOT NULL,
    labels TEXT NOT NULL,
    outcome TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    usd_nano INTEGER,
    other TEXT NOT NULL
)"""

_POSTGRES_TABLE: Final = """
CREATE TABLE IF NOT EXISTS rb_ledger (
    lease_id TEXT PRIMARY KEY,
    at_us BIGINT NOT NULL,
    scope TEXT NOT NULL,
    labels JSONB NOT NULL,
    outcome TEXT NOT NULL,
    requests NUMERIC NOT NULL,
    tokens NUMERIC NOT NULL,
    input_tokens NUMERIC NOT NULL,
    output_tokens NUMERIC NOT NULL,
    usd_nano NUMERIC,
    other JSONB NOT NULL
)"""

LEDGER_INDEX: Final = "CREATE INDEX IF NOT EXISTS rb_ledger_at ON rb_ledger (at_us)"

# what happened besides settled leases: alerts and refusals (``Ledger.events``)
# event_id, at (UTC µs), scope, kind, detail (JSON)
EventRow = tuple[str, int, str, str, str]

_EVENTS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS rb_events (
    event_id TEXT PRIMARY KEY,
    at_us {big} NOT NULL,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail {json} NOT NULL
)"""
EVENTS_INDEX: Final = "CREATE INDEX IF NOT EXISTS rb_events_at ON rb_events (at_us)"

_FIELDS: Final = (
    "lease_id, at_us, scope, labels, outcome, requests, tokens, input_tokens, "
    "output_tokens, usd_nano, other"
)


# a row is written once per lease id; but a lease its store reclaimed
# (``expired``, $0) may still be committed late, and then counts: its row
# becomes the commit's, once
_UPSERT: Final = (
    "ON CONFLICT (lease_id) DO UPDATE SET "
    + ", ".join(f"{f} = excluded.{f}" for f in _FIELDS.split(", ")[1:])
    + " WHERE rb_ledger.outcome = 'expired' AND excluded.outcome <> 'expired'"
)

INSERT_SQLITE: Final = (
    f"INSERT INTO rb_ledger ({_FIELDS}) VALUES ({', '.join(['?'] * 11)}) {_UPSERT}"
)

_STANDARD: Final = frozenset(COLUMNS)


def labels_text(labels: Mapping[str, str]) -> str:
    """A row's labels, as the ledger keeps them: a JSON object, keys sorted."""
    if not labels:
        return "{}"
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def row_of(
    lease_id: str,
    at_us: int,
    scope: str,
    labels: str,
    outcome: str,
    units: Mapping[str, int],
) -> Row:
    """A row of the ledger (``labels``: a JSON object). A released or
    expired lease spent nothing: its ``usd`` is 0; a call without a ``usd``
    amount was not priced: ``None``."""
    usd = 0 if outcome in ("released", "expired") else units.get("usd")
    other = "{}"
    if not _STANDARD.issuperset(units):
        extra = {k: v for k, v in units.items() if k not in _STANDARD}
        other = json.dumps(extra, sort_keys=True, separators=(",", ":"))
    return (
        lease_id,
        at_us,
        scope,
        labels,
        outcome,
        units.get("requests", 0),
        units.get("tokens", 0),
        units.get("input_tokens", 0),
        units.get("output_tokens", 0),
        usd,
        other,
    )


class Database:
    """One ledger database: rows in, rows and sums out. Safe from any thread
    (each thread its own connection)."""

    url: str  # without its password
    mark: str  # the driver's placeholder
    first: bool = True  # the table is made by the first connection

    def __init__(self, url: str) -> None:
        self.url = redact(url)  # fit to print: never its password
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        # every thread's connection is closed with the database, or when
        # it is dropped
        weakref.finalize(self, _close, self._conns, self._lock)

    # -- connections --------------------------------------------------------

    def _connect(self) -> Any:
        raise NotImplementedError

    def _errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    numeric = "{}"  # SQL that reads a JSON field's value as a number

    def field(self, column: str, key: str) -> tuple[str, str]:
        """SQL for the value of ``key`` in JSON ``column``, and its parameter."""
        raise NotImplementedError

    def label(self, key: str) -> tuple[str, str]:
        """SQL for the value of label ``key`` in a row, and its parameter."""
        return self.field("labels", key)

    def _tx(self, conn: Any) -> Any:
        """A transaction on ``conn`` (a context manager)."""
        return conn

    def amount(self, axis: str) -> tuple[str, tuple[str, ...]]:
        """SQL for a row's units on ``axis``, and its parameters."""
        if axis in COLUMNS:
            return ("usd_nano" if axis == "usd" else axis), ()
        sql, param = self.field("other", axis)
        return self.numeric.format(sql), (param,)

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._local.conn = self._connect()
                with self._lock:
                    self._conns.append(conn)
            yield conn
        except self._errors() as e:
            self._local.conn = None
            if conn is not None:
                with self._lock:
                    if conn in self._conns:
                        self._conns.remove(conn)
                try:
                    conn.close()
                except self._errors():  # pragma: no cover - already broken
                    pass
            raise StoreUnavailable(f"ledger {self.url}: {e}") from e

    def write(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` (those already there by lease id are kept as they are)."""
        m = self.mark
        sql = f"INSERT INTO rb_ledger ({_FIELDS}) VALUES ({', '.join([m] * 11)}) {_UPSERT}"
        with self._conn() as conn, self._tx(conn):
            conn.cursor().executemany(sql, rows)

    def write_events(self, events: Sequence[EventRow]) -> None:
        """Append ``events`` (one already there by id is kept)."""
        m = self.mark
        sql = (
            "INSERT INTO rb_events (event_id, at_us, scope, kind, detail) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}) ON CONFLICT (event_id) DO NOTHING"
        )
        with self._conn() as conn, self._tx(conn):
            conn.cursor().executemany(sql, events)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn, self._tx(conn):
            cur = conn.cursor()
            cur.execute(sql, tuple(params))
            return list(cur.fetchall())

    def close(self) -> None:
        _close(self._conns, self._lock)
        self._local = threading.local()


def _close(conns: list[Any], lock: threading.Lock) -> None:
    with lock:
        closing = conns[:]
        conns.clear()
    for conn in closing:
        try:
            conn.close()
        except Exception:  # pragma: no cover - closing a broken one
            pass


class _SQLite(Database):
    mark = "?"

    def __init__(self, url: str, path: str) -> None:
        super().__init__(url)
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            conn.execute(SQLITE_TABLE)
            conn.execute(LEDGER_INDEX)
            conn.execute(_EVENTS_TABLE.format(big="INTEGER", json="TEXT"))
            conn.execute(EVENTS_INDEX)
        return conn

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def field(self, column: str, key: str) -> tuple[str, str]:
        return f"json_extract({column}, ?)", "$." + json.dumps(key)


class _Postgres(Database):
    mark = "%s"

    def __init__(self, url: str, conninfo: str, schema: str | None) -> None:
        super().__init__(url)
        try:
            import psycopg
        except ImportError as e:
            raise ImportError(
                "a PostgreSQL ledger needs psycopg: pip install 'ratebudget[postgres]'"
            ) from e
        self._psycopg = psycopg
        self._conninfo = conninfo
        self._schema = schema

    def _connect(self) -> Any:
        sql = self._psycopg.sql
        conn = self._psycopg.connect(
            self._conninfo, connect_timeout=10, autocommit=True
        )
        try:
            if self._schema is not None:
                ident = sql.Identifier(self._schema)
                conn.execute(sql.SQL("SET search_path TO {}").format(ident))
            for attempt in (1, 2):  # two sessions making it at once: one fails
                try:
                    with conn.transaction():
                        if self._schema is not None:
                            conn.execute(
                                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident)
                            )
                        conn.execute(_POSTGRES_TABLE)
                        conn.execute(LEDGER_INDEX)
                        conn.execute(_EVENTS_TABLE.format(big="BIGINT", json="JSONB"))
                        conn.execute(EVENTS_INDEX)
                    break
                except self._psycopg.errors.UniqueViolation:
                    if attempt == 2:
                        raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _tx(self, conn: Any) -> Any:
        return conn.transaction()

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error,)

    numeric = "({})::numeric"

    def field(self, column: str, key: str) -> tuple[str, str]:
        return f"({column} ->> %s)", key


def open_database(url: str) -> Database:
    """The database of ledger URL ``url``: ``sqlite:///path.db`` or
    ``postgresql://user@host:port/db[?schema=name]``."""
    if not isinstance(url, str):
        raise InvalidRequest(f"ledger={url!r}: expected a URL or a Ledger")
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
            raise InvalidRequest(
                f"ledger={shown!r}: use sqlite:///relative.db or sqlite:////absolute.db"
            )
        path = parts.path[1:]
        if path == ":memory:":
            raise InvalidRequest(
                f"ledger={shown!r}: an in-memory database is one per connection; "
                "use a file"
            )
        return _SQLite(url, path)
    if parts.scheme in ("postgresql", "postgres"):
        query = parse_qs(parts.query)
        schema = query.pop("schema", [None])[-1]
        if schema is not None and not (
            schema.isidentifier() and schema.isascii() and len(schema) <= 63
        ):
            raise InvalidRequest(f"ledger={shown!r}: schema {schema!r} is not a name")
        rest = "&".join(f"{k}={v}" for k, vs in query.items() for v in vs)
        conninfo = parts._replace(scheme="postgresql", query=rest).geturl()
        return _Postgres(url, conninfo, schema)
    raise InvalidRequest(
        f"ledger={shown!r}: use sqlite:///usage.db or postgresql://host/db"
    )
