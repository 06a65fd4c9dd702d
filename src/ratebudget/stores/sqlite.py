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
from typing import Any, Final

from .._exceptions import InvalidRequest, StoreUnavailable
from . import _core
from ._base import Store
from ._core import ACTIVE, CapP, Plan, RateP, State, periods_of_op

__all__ = ("SQLiteStore",)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rb_limiter (
    name TEXT PRIMARY KEY, clock INTEGER NOT NULL, spec TEXT NOT NULL,
    tail INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rb_rate (
    name TEXT, key TEXT, level TEXT NOT NULL, last INTEGER NOT NULL,
    PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS rb_used (
    name TEXT, key TEXT, used TEXT NOT NULL, PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS rb_reserved (
    name TEXT, key TEXT, reserved TEXT NOT NULL, PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS rb_lease (
    name TEXT, id TEXT, s INTEGER NOT NULL, exp INTEGER NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (name, id)
);
CREATE INDEX IF NOT EXISTS rb_lease_exp ON rb_lease (name, s, exp);
"""


class SQLiteStore(Store):
    """Limiter state in one SQLite file: ``SQLiteStore("budgets.db")``.

    ``timeout`` bounds how long a decision waits for another process's
    transaction (SQLite's busy timeout) before ``StoreUnavailable``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise InvalidRequest(
                f"synchronous={synchronous!r}: use 'NORMAL', 'FULL' or 'EXTRA'"
            )
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise InvalidRequest(f"timeout={timeout!r}: expected seconds > 0")
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._ready = False

    # -- connections --------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        conn = None
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
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

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
        conn = self._conn()
        try:
            conn.execute(
                "INSERT INTO rb_limiter (name, clock, spec) VALUES (?, 0, ?) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                (name, json.dumps(spec)),
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        return []

    def limiters(self) -> dict[str, dict[str, Any]]:
        conn = self._conn()
        try:
            rows = conn.execute("SELECT name, spec FROM rb_limiter ORDER BY name")
            return {name: json.loads(spec) for name, spec in rows}
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    def execute(
        self,
        name: str,
        plan: Plan,
        ops: list[list[Any]],
        *,
        keep_us: int,
        now_us: int | None = None,
    ) -> list[list[Any]]:
        conn = self._conn()
        now = time.time_ns() // 1000 if now_us is None else now_us
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreUnavailable(
                f"SQLite store {self.path} is locked or unreadable: {e}"
            ) from e
        try:
            out = self._run(conn, name, plan, ops, now, keep_us)
            conn.execute("COMMIT")
            return out
        except BaseException as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(e, sqlite3.Error):
                raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
            raise

    def _run(
        self,
        conn: sqlite3.Connection,
        name: str,
        plan: Plan,
        ops: list[list[Any]],
        now: int,
        keep: int,
    ) -> list[list[Any]]:
        st = State()
        row = conn.execute(
            "SELECT clock, tail FROM rb_limiter WHERE name = ?", (name,)
        ).fetchone()
        if row is not None:
            st.clock, st.tail = row
        rate_keys = [p.key for p in plan.slots if isinstance(p, RateP)]
        cap_keys = [p.key for p in plan.slots if isinstance(p, CapP)]
        used_keys = {
            f"{p.key}|{period}"
            for op in ops
            for p, period in zip(plan.slots, periods_of_op(op), strict=False)
            if isinstance(p, CapP)
        }
        for key in rate_keys:
            got = conn.execute(
                "SELECT level, last FROM rb_rate WHERE name = ? AND key = ?",
                (name, key),
            ).fetchone()
            if got is not None:
                st.rates[key] = [int(got[0]), got[1]]
        for key in used_keys:
            got = conn.execute(
                "SELECT used FROM rb_used WHERE name = ? AND key = ?", (name, key)
            ).fetchone()
            if got is not None:
                st.used[key] = int(got[0])
        # expiring leases may hold reservations on caps this process does
        # not declare (a limiter redeclared with other limits): load them all
        expiring = conn.execute(
            "SELECT id, data FROM rb_lease WHERE name = ? AND s = ? AND exp <= ?",
            (name, ACTIVE, max(now, st.clock)),
        ).fetchall()
        for lease_id, data in expiring:
            st.leases[lease_id] = json.loads(data)
            st.expiring.append(lease_id)
        for op in ops:
            if op[0] in ("acquire", "settle", "extend") and op[1] not in st.leases:
                got = conn.execute(
                    "SELECT data FROM rb_lease WHERE name = ? AND id = ?",
                    (name, op[1]),
                ).fetchone()
                st.leases[op[1]] = None if got is None else json.loads(got[0])
        # a lease may hold reservations on caps this process does not declare
        reserved_keys = set(cap_keys)
        for rec in st.leases.values():
            if rec is not None:
                reserved_keys.update(rec["caps"])
        for key in reserved_keys:
            got = conn.execute(
                "SELECT reserved FROM rb_reserved WHERE name = ? AND key = ?",
                (name, key),
            ).fetchone()
            if got is not None:
                st.reserved[key] = int(got[0])

        out = _core.run(st, plan, now, keep, ops)

        conn.execute(
            "INSERT INTO rb_limiter (name, clock, spec, tail) VALUES (?, ?, '{}', ?) "
            "ON CONFLICT (name) DO UPDATE SET clock = excluded.clock, "
            "tail = excluded.tail",
            (name, st.clock, st.tail),
        )
        conn.executemany(
            "INSERT OR REPLACE INTO rb_rate (name, key, level, last) VALUES (?, ?, ?, ?)",
            [(name, k, str(st.rates[k][0]), st.rates[k][1]) for k in st.dirty_rates],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO rb_used (name, key, used) VALUES (?, ?, ?)",
            [(name, k, str(st.used[k])) for k in st.dirty_used],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO rb_reserved (name, key, reserved) VALUES (?, ?, ?)",
            [(name, k, str(st.reserved[k])) for k in st.dirty_reserved],
        )
        leases = []
        for lease_id in st.dirty_leases:
            rec = st.leases[lease_id]
            assert rec is not None
            leases.append((name, lease_id, rec["s"], rec["exp"], json.dumps(rec)))
        conn.executemany(
            "INSERT OR REPLACE INTO rb_lease (name, id, s, exp, data) VALUES (?, ?, ?, ?, ?)",
            leases,
        )
        conn.execute(
            "DELETE FROM rb_lease WHERE name = ? AND s != ? AND exp <= ?",
            (name, ACTIVE, st.clock),
        )
        return out
