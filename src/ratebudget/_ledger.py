"""The usage ledger: one row per settled lease, for reports and audits.

``Limiter(..., ledger="sqlite:///usage.db")`` (or a ``Ledger``, or
``postgresql://...``) writes a row for every lease committed or released
and every ``record()``: its id, the UTC time by the limiter's clock, the
scope, the labels, the amounts per axis (USD exact) and the outcome. Rows
are written by one thread per ledger, off the caller's path, in batches,
each row once by its lease id; ``await ledger.flush()`` waits until every
row posted so far is written (a process flushes its ledgers at exit).
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from ._amounts import from_units
from ._events import Event, LedgerEvent, Refusals, alert_event, events_of, split
from ._exceptions import InvalidRequest, StoreUnavailable
from ._ledger_db import (
    COLUMNS,
    Database,
    Row,
    _SQLite,
    labels_text,
    open_database,
    row_of,
)

if TYPE_CHECKING:
    from ._report import Report
    from ._snapshot import Alert

__all__ = ("OUTCOMES", "Ledger", "LedgerEntry", "LedgerEvent", "ledger_of")

logger: Final = logging.getLogger("ratebudget")

OUTCOMES: Final = ("committed", "released", "expired", "recorded", "shadowed")
"""What became of a lease: its usage counted (``committed``), its
reservation given back (``released``: $0, and so for ``expired``, a lease
its store reclaimed), or usage counted after the fact (``recorded``). A
``shadowed`` row is what a cap of a ``Limiter(shadow=True)`` would have
refused (its amount on that cap's axis, the scope whose cap it is); never
counted as spend."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BATCH: Final = 2000  # rows per transaction, at most
_GATHER: Final = 0.05  # s the writer lets rows gather after the first of a batch
_BACKOFF_MAX: Final = 5.0  # s between tries while the database fails
_FLUSH_WAIT: Final = 30.0  # s ``flush()`` waits for a failing database
_EXIT_FLUSH: Final = 10.0  # s a process waits at exit for its rows

# a row as posted (encoded by the writer thread, off the caller's path):
# lease id, UTC µs, scope, labels, outcome, units per axis
Posted = tuple[str, int, str, Mapping[str, str], str, Mapping[str, int]]
_Item = Posted | Event | threading.Event | None
_DRAIN: Final = threading.Event()  # a wake-up of the writer: copy the sources
_DRAIN_EVERY: Final = 1.0  # s between copies of the sources' rows
_FORECAST_EVERY: Final = 60.0  # s between forecasts of its limiters' caps


class Source(Protocol):
    """A store that keeps ledger rows of its own (``RedisStore``)."""

    def read_books(self) -> tuple[list[Row], Any]: ...

    def ack_books(self, acks: Any) -> None: ...


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger."""

    lease_id: str
    at: datetime  # UTC
    scope: str  # the limiter's name ("" for an unnamed one)
    labels: Mapping[str, str]
    outcome: str  # one of ``OUTCOMES``
    amounts: Mapping[str, int | Decimal]  # per axis; usd absent: not priced


def _encode(item: Posted) -> Row:
    lease_id, at_us, scope, labels, outcome, units = item
    return row_of(lease_id, at_us, scope, labels_text(labels), outcome, units)


class Ledger:
    """A usage ledger at ``url``: ``sqlite:///usage.db`` (a file, made if
    missing) or ``postgresql://user@host:5432/db`` (``?schema=name`` for a
    schema of its own; extra ``postgres``).

    Pass it (or its URL) as ``Limiter(..., ledger=...)``: the limiter and
    its scopes write a row for every settled lease. Read it with
    ``report()`` and ``entries()``.
    """

    def __init__(self, url: str) -> None:
        self._db: Database = open_database(url)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._failing: StoreUnavailable | None = None
        self._closed = False
        self._put: Callable[[Posted | Event], None] = self._post
        self._refusals = Refusals()
        # limiters whose hard caps its thread forecasts now and then (their
        # ``kind="forecast"`` alerts come without a snapshot being asked for)
        self._forecasted: weakref.WeakSet[Any] = weakref.WeakSet()
        self._forecast_at = 0.0  # time.monotonic() of the next forecasts
        """Queue a row to write (never blocks; any thread): once its writer
        runs, the queue's own ``put`` (a commit's row costs one C call)."""
        # stores whose own streams hold rows for it (Redis: each tree's)
        self._sources: weakref.WeakSet[Source] = weakref.WeakSet()
        _open.add(self)
        # dropped without close(): its writer thread ends (after what is
        # queued); not at exit, where ``_close_all`` writes what is left
        weakref.finalize(self, self._queue.put, None).atexit = False

    @property
    def sqlite_path(self) -> str | None:
        """The file of a SQLite ledger (``None``: another database)."""
        db = self._db
        return db.path if isinstance(db, _SQLite) else None

    @property
    def url(self) -> str:
        """Its URL, fit to print (a password is ``***``)."""
        return self._db.url

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    # -- writing -------------------------------------------------------------

    def _post(self, item: Posted | Event) -> None:
        """Queue a row to write (never blocks; any thread)."""
        if self._thread is None:
            self._run_writer()
        if self._closed:  # never silently: the commit counted, its row cannot
            logger.error(
                "ratebudget: ledger %s is closed: the row of lease %s is not written",
                self.url,
                item[0],
            )
            return
        self._queue.put(item)

    def _run_writer(self) -> None:
        with self._start:
            if self._thread is None and not self._closed:
                # the thread holds the ledger weakly between batches: a
                # ledger dropped without close() lets its thread end
                t = threading.Thread(
                    target=_write_rows,
                    args=(weakref.ref(self), self._queue),
                    name="ratebudget-ledger",
                    daemon=True,
                )
                t.start()
                self._thread = t
                self._put = self._queue.put

    def _forecast_for(self, limiter: Any) -> None:
        """Forecast ``limiter``'s caps about once a minute (its snapshot,
        in the writer thread), so that a forecast past a hard cap alerts."""
        self._forecasted.add(limiter)
        self._run_writer()

    def _wait(self) -> float | None:
        """How long the writer may sleep: until its next copy or forecasts."""
        waits = []
        if self._sources:
            waits.append(_DRAIN_EVERY)
        if self._forecasted:
            waits.append(max(0.0, self._forecast_at - time.monotonic()))
        return min(waits) if waits else None

    def _forecast(self) -> None:
        """Forecast the limiters' caps, if it is time (the writer thread)."""
        if not self._forecasted or time.monotonic() < self._forecast_at:
            return
        self._forecast_at = time.monotonic() + _FORECAST_EVERY
        for limiter in list(self._forecasted):
            try:
                limiter.sync.snapshot()  # its forecasts, and their alerts
            except Exception as e:  # a store down: the next round tries again
                logger.warning(
                    "ratebudget: forecasting %r from ledger %s failed: %s",
                    limiter,
                    self.url,
                    e,
                )

    def _add_source(self, source: Source) -> None:
        """Copy the rows ``source`` keeps for the ledger, from now on."""
        self._sources.add(source)
        self._run_writer()

    def _drain(self, strict: bool = False) -> int:
        """Copy what the sources hold (the writer thread; ``strict``: raise
        what fails, instead of logging it): each batch of rows written,
        then dropped from its source; a row copied twice (by two
        processes) is kept once. Returns how many rows were copied."""
        copied = 0
        for source in list(self._sources):
            while not self._closed:
                try:
                    rows, acks = source.read_books()
                    if not rows:
                        break
                    if strict:
                        self._db.write(rows)
                    else:
                        self._write_rows(rows)
                    source.ack_books(acks)
                    copied += len(rows)
                except StoreUnavailable as e:
                    if strict:
                        raise
                    logger.warning("ratebudget: ledger %s: copying: %s", self.url, e)
                    break
        return copied

    def sync(self, store: Source) -> int:
        """Copy the rows ``store`` holds for the ledger now (blocking);
        how many. ``StoreUnavailable`` if either cannot be reached."""
        self._sources.add(store)
        return self._drain(strict=True)

    def _write(self, items: list[Posted | Event]) -> None:
        """Write ``items`` (the writer thread), trying until it can."""
        rows, events = split(items)
        if rows:
            self._write_rows([_encode(x) for x in rows])
        if events:
            found = [e.row() for e in events]
            self._trying(lambda: self._db.write_events(found), len(found))

    def _write_rows(self, rows: list[Row]) -> None:
        self._trying(lambda: self._db.write(rows), len(rows))

    def _trying(self, write: Callable[[], None], n: int) -> None:
        delay = 0.05
        while True:
            try:
                write()
            except StoreUnavailable as e:
                if self._failing is None:
                    logger.error(
                        "ratebudget: %s; %d rows wait to be written (retrying)",
                        e,
                        n,
                    )
                self._failing = e
                if self._closed:
                    return
                threading.Event().wait(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            if self._failing is not None:
                logger.warning("ratebudget: ledger %s writes again", self.url)
                self._failing = None
            return

    def flush_sync(self, timeout: float | None = 30.0) -> None:
        """Block until every row posted so far is written; ``StoreUnavailable``
        if the database cannot take them within ``timeout`` seconds."""
        thread = self._thread
        if thread is None:
            return
        if not thread.is_alive():
            raise StoreUnavailable(f"ledger {self.url}: its writer has stopped")
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            error = self._failing
            raise StoreUnavailable(
                f"ledger {self.url}: rows not written after {timeout} s"
                + (f" ({error})" if error else "")
            ) from error

    async def flush(self) -> None:
        """Wait until every row posted so far is written; ``StoreUnavailable``
        if the database cannot take them within 30 s (a cancel scope can
        stop the wait sooner)."""
        await anyio.to_thread.run_sync(
            self.flush_sync, _FLUSH_WAIT, abandon_on_cancel=True
        )

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, then stop the writer and close the database."""
        if self._closed:
            return
        try:
            self.flush_sync(timeout)
        finally:
            self._put = self._post  # a late row is logged, never dropped silently
            self._closed = True
            self._queue.put(None)
            _open.discard(self)
            self._db.close()

    # -- reading -------------------------------------------------------------

    async def entries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        scope: str | None = None,
    ) -> list[LedgerEntry]:
        """The rows from ``since`` (included) to ``until`` (excluded), of one
        ``scope`` or of all, oldest first."""
        lo, hi = span(since, until)
        return await anyio.to_thread.run_sync(self._entries, lo, hi, scope)

    def _entries(self, lo: int, hi: int, scope: str | None) -> list[LedgerEntry]:
        m = self._db.mark
        sql = (
            "SELECT lease_id, at_us, scope, labels, outcome, requests, tokens, "
            "input_tokens, output_tokens, usd_nano, other FROM rb_ledger "
            f"WHERE at_us >= {m} AND at_us < {m}"
        )
        params: list[object] = [lo, hi]
        if scope is not None:
            sql += f" AND scope = {m}"
            params.append(scope)
        sql += " ORDER BY at_us, lease_id"
        return [_entry(row) for row in self._db.query(sql, params)]

    def _alerted(self, alerts: Sequence[Alert], at_us: int) -> None:
        """Log ``alerts`` as events (never blocks)."""
        for alert in alerts:
            self._put(alert_event(alert, at_us))

    def _refused(
        self, at_us: int, scope: str, reason: str, error: BaseException
    ) -> None:
        """Log a refusal as an event (at most one a second per scope and
        reason, counting the others)."""
        event = self._refusals.event(at_us, scope, reason, error)
        if event is not None:
            self._put(event)

    async def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        scope: str | None = None,
        limit: int = 100,
    ) -> list[LedgerEvent]:
        """The newest ``limit`` alerts and refusals from ``since`` to
        ``until``, of ``scope`` and its descendants or of all, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidRequest(f"limit={limit!r}: expected a count >= 1")
        lo, hi = span(since, until)
        return await anyio.to_thread.run_sync(events_of, self._db, lo, hi, scope, limit)

    async def report(
        self,
        *,
        by: Sequence[str] = ("scope",),
        since: datetime | None = None,
        until: datetime | None = None,
        scope: str | None = None,
    ) -> Report:
        """Spend and usage grouped ``by`` ``"scope"``, ``"outcome"`` or label
        names (``"model"``, ``"feature"``...), from ``since`` to ``until``,
        of every row or of ``scope`` and its descendants: a ``Report``, its
        rows sorted by spend."""
        from ._report import build

        return await anyio.to_thread.run_sync(build, self._db, by, since, until, scope)


def _entry(row: Sequence[object]) -> LedgerEntry:
    lease_id, at_us, scope, labels, outcome, *counts, usd, other = row
    amounts: dict[str, int | Decimal] = {}
    for axis, n in zip(COLUMNS[:4], counts, strict=True):
        if n:
            amounts[axis] = int(n)  # type: ignore[call-overload]
    if usd is not None:
        amounts["usd"] = from_units("usd", int(usd))  # type: ignore[call-overload]
    for axis, n in _json(other).items():
        amounts[axis] = from_units(axis, int(n))
    return LedgerEntry(
        str(lease_id),
        _EPOCH + timedelta(microseconds=int(at_us)),  # type: ignore[call-overload]
        str(scope),
        _json(labels),
        str(outcome),
        amounts,
    )


def _json(value: object) -> dict[str, str]:
    got = json.loads(value) if isinstance(value, (str, bytes)) else value
    assert isinstance(got, dict)
    return got


def span(since: datetime | None, until: datetime | None) -> tuple[int, int]:
    """``since`` and ``until`` as UTC µs (open ends: the widest)."""

    def us(t: datetime | None, name: str, default: int) -> int:
        if t is None:
            return default
        if not isinstance(t, datetime) or t.tzinfo is None:
            raise InvalidRequest(f"{name}={t!r}: expected an aware datetime")
        delta = t - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    lo, hi = us(since, "since", -(2**62)), us(until, "until", 2**62)
    if hi < lo:
        raise InvalidRequest(f"until={until} is before since={since}")
    return lo, hi


def _write_rows(ref: weakref.ref[Ledger], q: queue.SimpleQueue[_Item]) -> None:
    """The writer thread of a ledger: batches of rows, in the order posted,
    and the rows of its sources, about once a second."""
    while True:
        ledger = ref()
        if ledger is None:
            return
        wait = ledger._wait()
        del ledger
        try:
            item = q.get(timeout=wait)
        except queue.Empty:
            item = _DRAIN
        if not isinstance(item, threading.Event) and item is not None:
            # a row: let more come before writing (a batch, not a wake-up
            # and a GIL hand-off per commit); a flush or a close goes at once
            time.sleep(_GATHER)
        items: list[Posted | Event] = []
        marks: list[threading.Event] = []
        while True:
            if item is None:  # closed
                return
            if isinstance(item, threading.Event):
                if item is not _DRAIN:
                    marks.append(item)
            else:
                items.append(item)
            if len(items) >= _BATCH:
                break
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
        ledger = ref()
        if ledger is None:
            return
        if items:
            ledger._write(items)
        if ledger._sources:
            ledger._drain()
        for mark in marks:
            mark.set()
        ledger._forecast()
        del ledger


_ledgers: dict[str, Ledger] = {}
_ledgers_lock = threading.Lock()
_open: weakref.WeakSet[Ledger] = weakref.WeakSet()


def ledger_of(ledger: object) -> Ledger | None:
    """``Limiter``'s ``ledger=``: a ``Ledger``, or the one ledger of this
    process for a URL (limiters naming one URL share its writer)."""
    if ledger is None or isinstance(ledger, Ledger):
        return ledger
    if not isinstance(ledger, str):
        raise InvalidRequest(f"ledger={ledger!r}: expected a URL or a Ledger")
    with _ledgers_lock:
        got = _ledgers.get(ledger)
        if got is None or got._closed:
            got = _ledgers[ledger] = Ledger(ledger)
        return got


@atexit.register
def _close_all() -> None:
    for ledger in list(_open):
        try:
            ledger.close(_EXIT_FLUSH)
        except StoreUnavailable as e:
            logger.error("ratebudget: at exit, %s", e)
