"""The ledger's events: alerts and refusals, besides the settled leases.

A limiter with a ledger writes an event for every alert it fires
(``threshold``, ``forecast``, ``runaway``, ``shadow``) and for refusals
(``refused``: a cap, a runaway, a timeout), so that a dashboard, or
anyone, can show what happened lately in every process. Refusals can come
by thousands a second from a loop: one event per scope and reason a
second at most, counting those it stands for (``detail["count"]``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ._ids import new_id

if TYPE_CHECKING:
    from ._ledger_db import Database, EventRow
    from ._snapshot import Alert

__all__ = ("Event", "LedgerEvent", "Refusals", "alert_event", "events_of", "split")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EVERY_US: Final = 1_000_000  # one refusal event per scope and reason a second


@dataclass(frozen=True)
class LedgerEvent:
    """Something that happened: an alert, or refusals (``Ledger.events``)."""

    at: datetime  # UTC
    scope: str  # "" for an unnamed limiter
    kind: str  # an alert's kind (threshold, forecast, runaway, shadow) or "refused"
    message: str  # what it said
    detail: Mapping[str, Any]  # axis, amounts (as strings), reason, count...


class Event(NamedTuple):
    """An event as queued for the ledger's writer."""

    event_id: str
    at_us: int
    scope: str
    kind: str
    detail: Mapping[str, Any]  # "message" included

    def row(self) -> EventRow:
        text = json.dumps(dict(self.detail), sort_keys=True, default=str)
        return (self.event_id, self.at_us, self.scope, self.kind, text)


def alert_event(alert: Alert, at_us: int) -> Event:
    """The event of ``alert``."""
    detail: dict[str, Any] = {
        "message": str(alert),
        "axis": alert.axis,
        "used": str(alert.used),
        "limit": str(alert.limit),
        "threshold": alert.threshold,
        "period": alert.period,
        "alert_id": alert.id,
    }
    if alert.requested is not None:
        detail["requested"] = str(alert.requested)
    if alert.forecast is not None and alert.forecast.expected is not None:
        detail["expected"] = str(alert.forecast.expected)
    if alert.kind == "runaway":
        detail["window"] = alert.window
        detail["baseline"] = None if alert.baseline is None else str(alert.baseline)
    return Event(new_id(), at_us, alert.scope or "", alert.kind, detail)


class Refusals:
    """Refusal events, at most one per scope and reason a second, each
    counting the refusals since the last (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], int] = {}  # when its event was made
        self._since: dict[tuple[str, str], int] = {}  # refusals since then

    def event(
        self, at_us: int, scope: str, reason: str, error: BaseException
    ) -> Event | None:
        """The event of one more refusal, or ``None`` if this second of its
        scope and reason has one already (it counts in the next)."""
        key = (scope, reason)
        with self._lock:
            count = self._since.get(key, 0) + 1
            last = self._last.get(key)
            if last is not None and at_us - last < _EVERY_US:
                self._since[key] = count
                return None
            self._last[key] = at_us
            self._since[key] = 0
        detail: dict[str, Any] = {
            "message": str(error),
            "reason": reason,
            "count": count,
        }
        for field in ("axis", "limit", "used", "requested"):
            value = getattr(error, field, None)
            if value is not None:
                detail[field] = str(value)
        return Event(new_id(), at_us, scope, "refused", detail)


def events_of(
    db: Database, lo: int, hi: int, scope: str | None, limit: int
) -> list[LedgerEvent]:
    """The newest ``limit`` events from ``lo`` to ``hi`` (UTC µs), of one
    ``scope`` and its descendants or of all, newest first."""
    m = db.mark
    sql = (
        "SELECT at_us, scope, kind, detail FROM rb_events "
        f"WHERE at_us >= {m} AND at_us < {m}"
    )
    params: list[object] = [lo, hi]
    if scope is not None:
        sql += f" AND (scope = {m} OR substr(scope, 1, {m}) = {m})"
        params += [scope, len(scope) + 1, scope + "/"]
    sql += f" ORDER BY at_us DESC, event_id DESC LIMIT {int(limit)}"
    out = []
    for at_us, name, kind, raw in db.query(sql, params):
        detail = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw)
        out.append(
            LedgerEvent(
                _EPOCH + timedelta(microseconds=int(at_us)),
                str(name),
                str(kind),
                str(detail.pop("message", "")),
                detail,
            )
        )
    return out


def split(items: Sequence[object]) -> tuple[list[Any], list[Event]]:
    """A writer's batch as its rows and its events."""
    rows: list[Any] = []
    events: list[Event] = []
    for item in items:
        if isinstance(item, Event):
            events.append(item)
        else:
            rows.append(item)
    return rows, events
