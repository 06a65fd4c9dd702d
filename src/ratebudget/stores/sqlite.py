"""``SQLiteStore``: persistent limiter state shared by the processes of one host.

Stdlib ``sqlite3`` in WAL mode, one connection per thread, one
``BEGIN IMMEDIATE`` transaction per batch of decisions (so concurrent
writers queue on SQLite's lock for up to ``timeout`` seconds, then fail with
``StoreUnavailable``). A committed transaction survives ``kill -9`` of the
process at any moment (WAL with ``synchronous=NORMAL``; ``synchronous="FULL"``
also survives a power cut, at the cost of an fsync per decision).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import InvalidRequest, StoreUnavailable
from .._ledger_db import INSERT_SQLITE, LEDGER_INDEX, SQLITE_TABLE
from .._plan import PlanSpec
from . import _ops as ops
from ._ledger_rows import book_row, expired, expired_row
from ._remote import SharedStore
from ._state import Document, run_document, run_path_documents, wanted

if TYPE_CHECKING:
    from .._ledger import Ledger

__all__ = ("SQLiteStore",)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rb_limiter (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL DEFAULT '{}', state TEXT
);
CREATE TABLE IF NOT EXISTS rb_lease (
    name TEXT, id TEXT, exp INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (name, id)
);
CREATE INDEX IF NOT EXISTS rb_lease_exp ON rb_lease (name, exp);
CREATE TABLE IF NOT EXISTS rb_live (
    name TEXT PRIMARY KEY, spec TEXT, rev INTEGER NOT NULL
);
"""


class SQLiteStore(SharedStore):
    """Limiter state in one SQLite file: ``SQLiteStore("budgets.db")``.

    ``timeout`` bounds how long a decision waits for another process's
    transaction (SQLite's busy timeout) before ``StoreUnavailable``.
    ``readonly=True`` opens the file read-only (``mode=ro``) for tools that
    only look (``ratebudget status``): nothing is created or written, a
    snapshot is computed and rolled back, and a file without ratebudget's
    tables is ``InvalidRequest`` ("not a ratebudget store").
    """

    scopes = True  # a path's states load in one transaction

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        synchronous: str = "NORMAL",
        readonly: bool = False,
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in (
            "NORMAL",
            "FULL",
            "EXTRA",
        ):
            raise InvalidRequest(
                f"synchronous={synchronous!r}: use 'NORMAL', 'FULL' or 'EXTRA'"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= _MAX_TIMEOUT
        ):
            raise InvalidRequest(
                f"timeout={timeout!r}: expected seconds > 0 (at most {_MAX_TIMEOUT:g})"
            )
        path = os.fspath(path)
        if (
            not isinstance(path, str)
            or not path
            or path == ":memory:"
            or (path.startswith("file:") and "mode=memory" in path)
        ):
            raise InvalidRequest(
                f"SQLiteStore({path!r}): a store shared by processes needs a file "
                "(an in-memory SQLite database is private to one connection); "
                "for one process, use the memory store"
            )
        self.path = path
        self.url = f"sqlite:///{self.path}"
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        if not isinstance(readonly, bool):
            raise InvalidRequest(f"readonly={readonly!r}: expected True or False")
        self.readonly = readonly
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._ready = False
        self._file: tuple[int, int] | None = None  # (device, inode) of the file
        self._next_sweep = 0  # store time (µs) of the next sweep of idle keys
        self._swept_to = ""  # the name the last sweep stopped after
        self._ledger_made = False  # the file has a ledger table (rb_ledger)

    # -- the ledger in its file ----------------------------------------------

    def ledger(self) -> Ledger:
        """``ledger=True``: the ledger in this store's own file."""
        from .._ledger import ledger_of

        got = ledger_of("sqlite:///" + os.path.abspath(self.path))
        assert got is not None
        return got

    def books(self, ledger: Ledger, name: str | None) -> bool:
        """A ledger in this store's own file: its rows are written in the
        transaction of the commit, release or record they are about."""
        path = ledger.sqlite_path
        if path is None or self.readonly:
            return False
        try:
            same = bool(os.path.samefile(path, self.path))
        except OSError:  # one of them not made yet
            same = os.path.abspath(path) == os.path.abspath(self.path)
        if same:
            # made now: from here on, every process that finds a lease
            # expired writes its row too
            try:
                self._make_ledger(self._conn())
            except sqlite3.Error as e:
                raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return same

    def _make_ledger(self, conn: sqlite3.Connection) -> None:
        if not self._ledger_made:
            conn.execute(SQLITE_TABLE)
            conn.execute(LEDGER_INDEX)
            self._ledger_made = True

    def _book(
        self,
        conn: sqlite3.Connection,
        name: str,
        batch: list[ops.Op],
        answer: ops.Answer,
        expired: list[str],
    ) -> None:
        """Write the ledger rows of the ops of ``batch`` that counted, and of
        the leases the batch found expired (if the file keeps a ledger),
        stamped with the store's time."""
        rows = []
        for op, got in zip(batch, answer.results, strict=True):
            book = getattr(op, "book", None)
            if book is not None and isinstance(got, list):  # counted (not a retry)
                rows.append(book_row(book, answer.now))
        if expired and (rows or self._has_ledger(conn)):
            rows += [expired_row(key, name, answer.now) for key in expired]
        if rows:
            self._make_ledger(conn)
            conn.executemany(INSERT_SQLITE, rows)

    def _has_ledger(self, conn: sqlite3.Connection) -> bool:
        if not self._ledger_made:
            self._ledger_made = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rb_ledger'"
                ).fetchone()
                is not None
            )
        return self._ledger_made

    # -- connections --------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._check_file()
            return conn
        conn = None
        if self.readonly:
            return self._open_readonly()
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None
            )
            # switching a new file to WAL does not wait on the busy handler:
            # several processes opening it at once retry until the timeout
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if not self._ready:
                with self._lock:
                    if not self._ready:
                        conn.execute("BEGIN IMMEDIATE")
                        conn.executescript(_SCHEMA)  # commits
                        self._ready = True
            ident = self._identity()
        except (sqlite3.Error, OSError) as e:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
        with self._lock:
            if self._file is None:
                self._file = ident
        if ident != self._file:
            conn.close()
            raise self._replaced()
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _open_readonly(self) -> sqlite3.Connection:
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        conn = None
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=self.timeout, isolation_level=None
            )
            tables = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            ident = self._identity()
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            if "not a database" in str(e):
                raise InvalidRequest(
                    f"{self.path} is not a ratebudget store (not an SQLite file)"
                ) from e
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
        except OSError as e:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
        if not {"rb_limiter", "rb_lease"} <= tables:
            conn.close()
            raise InvalidRequest(
                f"{self.path} is not a ratebudget store (it has no rb_limiter "
                "and rb_lease tables); nothing was changed in it"
            )
        with self._lock:
            if self._file is None:
                self._file = ident
            self._conns.append(conn)
        self._local.conn = conn
        return conn

    def _identity(self) -> tuple[int, int]:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def _replaced(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"SQLite store {self.path}: the file at this path is no longer the one "
            "this store opened (deleted, moved or replaced): its budgets would "
            "start again from zero; open the store again to use the new file"
        )

    def _check_file(self) -> None:
        """Fail loudly if the file was deleted or replaced under us."""
        try:
            ident = self._identity()
        except OSError as e:
            raise self._replaced() from e
        if ident != self._file:
            raise self._replaced()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
        self._local = threading.local()

    # -- the interface ------------------------------------------------------

    def register(self, name: str, spec: dict[str, Any]) -> list[str]:
        if self.readonly:
            raise InvalidRequest(
                f"SQLite store {self.path} was opened read-only: a limiter "
                "cannot use it"
            )
        conn = self._conn()
        try:
            conn.execute(
                "INSERT INTO rb_limiter (name, spec) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                (name, json.dumps(spec)),
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return []

    def read_live(self) -> tuple[int, dict[str, str]]:
        conn = self._conn()
        try:
            rows = conn.execute("SELECT name, spec, rev FROM rb_live").fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # a file of an older release, read-only
                return 0, {}
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        rev = max((r for _, _, r in rows), default=0)
        return rev, {name: spec for name, spec, _ in rows if spec is not None}

    def write_live(self, name: str, raw: str | None) -> None:
        if self.readonly:
            raise InvalidRequest(f"SQLite store {self.path} was opened read-only")
        conn = self._conn()
        try:
            # a row stays when its limits go (spec NULL): revisions only grow
            conn.execute(
                "INSERT INTO rb_live (name, spec, rev) VALUES "
                "(?, ?, (SELECT COALESCE(MAX(rev), 0) + 1 FROM rb_live)) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                "rev = excluded.rev",
                (name, raw),
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    def keys_of(self, name: str, root: str) -> list[str]:
        conn = self._conn()
        prefix = name + "/"
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        try:
            rows = conn.execute(
                "SELECT name FROM rb_limiter WHERE name LIKE ? ESCAPE '\\' "
                "AND state IS NOT NULL ORDER BY name",
                (like + "%",),
            ).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return [n for (n,) in rows if "/" not in n[len(prefix) :]]

    def limiters(self) -> dict[str, dict[str, Any]]:
        conn = self._conn()
        try:
            rows = conn.execute(
                "SELECT name, spec FROM rb_limiter WHERE spec != '{}' ORDER BY name"
            )
            return {name: json.loads(spec) for name, spec in rows}
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    def execute(
        self,
        name: str,
        spec: PlanSpec,
        batch: list[ops.Op],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
    ) -> ops.Answer:
        return self._transaction(
            name,
            lambda conn, now: self._run(conn, name, spec, batch, now, ttl, keep),
            now_us,
        )

    def execute_path(
        self,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
        root: str | None = None,
    ) -> ops.Answer:
        return self._transaction(
            names[0],
            lambda conn, now: self._run_path(conn, names, specs, batch, now, ttl, keep),
            now_us,
        )

    def _transaction(
        self,
        name: str,
        run: Callable[[sqlite3.Connection, int], ops.Answer],
        now_us: int | None,
    ) -> ops.Answer:
        """``run`` in one ``BEGIN IMMEDIATE`` transaction (read-only: rolled back)."""
        conn = self._conn()
        now = time.time_ns() // 1000 if now_us is None else now_us
        try:
            conn.execute("BEGIN" if self.readonly else "BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreUnavailable(
                f"SQLite store {self.path} is locked or unreadable: {e}"
            ) from e
        try:
            answer = run(conn, now)
            conn.execute("ROLLBACK" if self.readonly else "COMMIT")
            return answer
        except BaseException as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):
                raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
            if isinstance(e, (ValueError, TypeError, KeyError)):
                raise StoreUnavailable(
                    f"SQLite store {self.path}: the state of {name!r} is unreadable "
                    f"({type(e).__name__}: {e})"
                ) from e
            raise

    def _load(
        self, conn: sqlite3.Connection, name: str, keys: list[str], now: int
    ) -> tuple[dict[str, Any] | None, dict[str, list[Any]], int | None]:
        """Name ``name``'s state, the records of ``keys`` and of those
        expired by its clock, and the first expiry of the others."""
        row = conn.execute(
            "SELECT state FROM rb_limiter WHERE name = ?", (name,)
        ).fetchone()
        doc = json.loads(row[0]) if row is not None and row[0] else None
        clock = max(now, doc["clock"]) if doc else now
        found = conn.execute(
            "SELECT id, data FROM rb_lease WHERE name = ? AND exp <= ?",
            (name, clock),
        ).fetchall()
        for key in keys:
            got = conn.execute(
                "SELECT data FROM rb_lease WHERE name = ? AND id = ?", (name, key)
            ).fetchone()
            if got is not None:
                found.append((key, got[0]))
        records = {key: json.loads(data) for key, data in found}
        (next_exp,) = conn.execute(
            "SELECT min(exp) FROM rb_lease WHERE name = ? AND exp > ?", (name, clock)
        ).fetchone()
        return doc, records, next_exp

    def _save(self, conn: sqlite3.Connection, name: str, out: Document) -> None:
        conn.execute(
            "INSERT INTO rb_limiter (name, state) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state",
            (name, json.dumps(out.doc)),
        )
        conn.executemany(
            "DELETE FROM rb_lease WHERE name = ? AND id = ?",
            [(name, key) for key in out.gone],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO rb_lease (name, id, exp, data) VALUES (?, ?, ?, ?)",
            [(name, key, rec[1], json.dumps(rec)) for key, rec in out.records.items()],
        )

    def _run(
        self,
        conn: sqlite3.Connection,
        name: str,
        spec: PlanSpec,
        batch: list[ops.Op],
        now: int,
        ttl: int,
        keep: int,
    ) -> ops.Answer:
        doc, records, next_exp = self._load(conn, name, wanted(batch), now)
        answer, out = run_document(
            doc, records, spec, batch, now, ttl=ttl, keep=keep, next_exp=next_exp
        )
        if not self.readonly:  # else the answer only: its writes are dropped
            self._save(conn, name, out)
            self._book(conn, name, batch, answer, expired(records, out))
        return answer

    def _run_path(
        self,
        conn: sqlite3.Connection,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        now: int,
        ttl: int,
        keep: int,
    ) -> ops.Answer:
        keys = wanted(batch)
        loaded = [self._load(conn, name, keys, now) for name in names]
        answer, outs = run_path_documents(
            [doc for doc, _, _ in loaded],
            [records for _, records, _ in loaded],
            specs,
            batch,
            now,
            ttl=ttl,
            keep=keep,
            next_exps=[next_exp for _, _, next_exp in loaded],
        )
        if not self.readonly:
            gone: list[str] = []
            for name, out, (_, records, _) in zip(names, outs, loaded, strict=True):
                self._save(conn, name, out)
                gone += [k for k in expired(records, out) if k not in gone]
            # a lease down a path is one row, its scope's (the path's first)
            self._book(conn, names[0], batch, answer, gone)
            if now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_EVERY_US
                self._sweep(conn, now, ttl)
        return answer

    def _sweep(self, conn: sqlite3.Connection, now: int, ttl: int) -> None:
        """Forget the states of per-key scopes (rows no limiter registered)
        idle for an hour past the lease TTL that count nothing any more: no
        waiter, no lease record, every cap unused and unreserved, every rate
        full again. (Redis lets such states expire by their TTL.)"""
        # a thousand rows a sweep, in name order from where the last one
        # stopped: every row has its turn, however many still count
        rows = conn.execute(
            "SELECT name, state FROM rb_limiter AS l WHERE name > ? "
            "AND spec = '{}' AND state IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM rb_lease WHERE rb_lease.name = l.name) "
            "ORDER BY name LIMIT ?",
            (self._swept_to, _SWEEP_ROWS),
        ).fetchall()
        self._swept_to = rows[-1][0] if len(rows) == _SWEEP_ROWS else ""
        idle_before = now - _IDLE_US - ttl
        gone = []
        for name, state in rows:
            try:
                doc = json.loads(state)
                if doc["q"] or doc["clock"] > idle_before:
                    continue
                if any(row[2] or row[3] for row in doc["c"].values()):
                    continue  # usage this period, or a reservation
                full = all(
                    level >= cap or level + rate * (now - last) >= cap
                    for rate, _per, cap, level, last, *_ in doc["b"].values()
                )
            except (ValueError, TypeError, KeyError, IndexError):
                continue  # not ours to judge: left alone
            if full:
                gone.append((name,))
        conn.executemany("DELETE FROM rb_limiter WHERE name = ?", gone)


_MAX_TIMEOUT: Final = 86_400.0
_SWEEP_EVERY_US: Final = 60_000_000  # how often a store sweeps idle keys
_SWEEP_ROWS: Final = 1_000  # rows looked at per sweep
_IDLE_US: Final = 3_600_000_000  # idle this long past the lease TTL: forgotten
