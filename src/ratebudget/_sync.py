"""The blocking, thread-safe facade: ``limiter.sync``.

The same operations as ``Limiter``, through the same binding; only the
waiting differs: a thread blocks on an event, and a store ``Call`` runs on
the calling thread (``call.wait()``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from . import _telemetry as telemetry
from ._amounts import Amount
from ._decide import Crossing, Exceeded, Inexact, TooLong
from ._forecast import with_forecasts
from ._scope import labels_of
from ._snapshot import Snapshot, snapshot_of
from ._telemetry import OBSERVERS
from ._waiters import ThreadWaiter, Waiter
from .stores._base import Call

if TYPE_CHECKING:
    from ._lease import Lease
    from ._limiter import Limiter
    from ._limits import Cap, Rate

__all__ = ("SyncLease", "SyncLimiter")

T = TypeVar("T")


def _answer(got: T | Call[T]) -> T:
    return cast("T", got.wait() if isinstance(got, Call) else got)


class SyncLimiter:
    """Blocking versions of ``Limiter``'s operations, safe from any thread.

    Do not call these from inside an event loop: they block the thread.
    """

    __slots__ = ("_limiter",)

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    @overload
    def acquire(
        self, tokens: Amount = 0, *, timeout: float | None = None, **amounts: Amount
    ) -> SyncLease: ...

    @overload
    def acquire(
        self,
        tokens: Amount = 0,
        *,
        timeout: float | None = None,
        labels: Mapping[str, str] | None,
        **amounts: Amount,
    ) -> SyncLease: ...

    def acquire(
        self,
        tokens: Amount = 0,
        *,
        timeout: float | None = None,
        labels: Any = None,  # Mapping[str, str] (checked at the call)
        **amounts: Amount,
    ) -> SyncLease:
        """Block until granted; return a ``SyncLease`` (also a context manager)."""
        lease = self._limiter.acquire(tokens, timeout=timeout, labels=labels, **amounts)
        limiter = lease._limiter  # the limits it was made with
        if limiter._watches:
            limiter._admit(lease, blocking=True)
        grab = limiter._grab
        take = 0 if grab is None else grab(lease._req)
        if take:
            lease._take = take
            lease._state = 1  # active
            return SyncLease(self, lease)
        got = limiter._b.acquire(lease._req, lease._timeout, ThreadWaiter)
        if isinstance(got, Call):
            lease._key = got.key
            got = got.wait()
        if isinstance(got, Waiter):
            self._wait(limiter, got, lease._req, lease.labels)
            lease._key = got.id
            got = got.take
        if type(got) is not int:
            assert isinstance(got, (Exceeded, TooLong))
            raise limiter._refusal(got, lease._req, lease._timeout, lease.labels)
        lease._take = got
        lease._state = 1  # active
        return SyncLease(self, lease)

    @staticmethod
    def _wait(
        limiter: Limiter, w: Waiter, req: tuple[int, ...], labels: Mapping[str, str]
    ) -> None:
        b = limiter._b
        wait_until = limiter._clock.wait_until
        assert isinstance(w, ThreadWaiter)
        deadline = w.sleep_deadline()  # ``acquire`` armed it
        began = limiter._clock.monotonic_ns() if OBSERVERS else None
        try:
            while True:
                wait_until(w.event, deadline)
                deadline = _answer(b.poll(w))
                if limiter._looked(w, req, labels):
                    if began is not None:
                        waited = limiter._clock.monotonic_ns() - began
                        telemetry.waited(limiter, waited / 1e9)
                    return
        except BaseException:
            b.abort(w)
            raise

    @overload
    def try_acquire(
        self, tokens: Amount = 0, **amounts: Amount
    ) -> SyncLease | None: ...

    @overload
    def try_acquire(
        self,
        tokens: Amount = 0,
        *,
        labels: Mapping[str, str] | None,
        **amounts: Amount,
    ) -> SyncLease | None: ...

    def try_acquire(
        self,
        tokens: Amount = 0,
        *,
        labels: Any = None,  # Mapping[str, str] (checked at the call)
        **amounts: Amount,
    ) -> SyncLease | None:
        """A granted ``SyncLease`` now, or ``None``; never blocks."""
        lease = self._limiter.acquire(tokens, timeout=0, labels=labels, **amounts)
        limiter = lease._limiter  # the limits it was made with
        if limiter._watches:
            limiter._admit(lease, blocking=True)
        got = limiter._b.acquire(lease._req, 0, None)
        if isinstance(got, Call):
            lease._key = got.key
            got = got.wait()
        if got is None or isinstance(got, TooLong):
            return None
        if isinstance(got, Exceeded):
            raise limiter._refusal(got, lease._req, 0, lease.labels)
        assert type(got) is int
        lease._take = got
        lease._state = 1  # active
        return SyncLease(self, lease)

    @overload
    def record(self, tokens: Amount = 0, **amounts: Amount) -> None: ...

    @overload
    def record(
        self,
        tokens: Amount = 0,
        *,
        labels: Mapping[str, str] | None,
        **amounts: Amount,
    ) -> None: ...

    def record(
        self,
        tokens: Amount = 0,
        *,
        labels: Any = None,  # Mapping[str, str] (checked at the call)
        **amounts: Amount,
    ) -> None:
        """Charge usage after the fact (see ``Limiter.record``)."""
        limiter = self._limiter._now()  # the limits its store call is about
        checked = labels_of(labels)
        units = limiter._units(tokens, amounts, False)
        req = limiter._request(units, False)
        book = limiter._record_book(units, checked)
        got = cast(
            "list[Crossing] | Exceeded | Inexact",
            _answer(limiter._b.record(req, book)),
        )
        limiter._deliver(
            limiter._recorded(got, req, units, checked, book), blocking=True
        )
        if limiter._watches:
            limiter._spent(req, blocking=True)

    def snapshot(self) -> Snapshot:
        """Every limit's state now, each cap with its forecast."""
        lay = self._limiter._now()  # the limits its store call is about
        views, waiting = _answer(lay._b.snapshot())
        snap = snapshot_of(lay._limits[: lay._own], views, lay._pers, waiting)
        snap = with_forecasts(snap, lay._ledger, lay._name or "", lay._wall())
        lay._foresee(snap, blocking=True)
        return snap

    def reset(self) -> None:
        """Zero every cap's usage for its current period and fill every rate
        (``Limiter.reset``)."""
        _answer(self._limiter._now()._b.reset())

    def update(self, *limits: Rate | Cap) -> None:
        """Replace the limits for every process (``Limiter.update``)."""
        limiter = self._limiter
        live = limiter._checked(limits)
        limiter._store.set_live(limiter._live_key(), live)
        limiter._refresh()

    def flush_alerts(self, timeout: float | None = None) -> bool:
        """Wait until ``on_alert`` has handled every alert fired so far
        (``Limiter.flush_alerts``); ``False`` if ``timeout`` seconds ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for dispatch in self._limiter._routes_up:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not dispatch.flush_sync(left):
                return False
        return True

    def __repr__(self) -> str:
        return f"<SyncLimiter of {self._limiter!r}>"


class SyncLease:
    """A granted lease for blocking code: ``commit`` and ``release`` block.

    As a context manager: leaving normally without a commit commits the
    estimate; leaving by an exception releases the cap reservations.
    """

    __slots__ = ("_lease", "_sync")

    def __init__(self, sync: SyncLimiter, lease: Lease) -> None:
        self._sync = sync
        self._lease = lease

    @property
    def id(self) -> str:
        return self._lease.id

    @property
    def amounts(self) -> dict[str, int | Decimal]:
        return self._lease.amounts

    @property
    def labels(self) -> Mapping[str, str]:
        """The labels it was acquired with (``Lease.labels``)."""
        return self._lease.labels

    @property
    def settled(self) -> bool:
        return self._lease.settled

    def _settle(
        self, actual: tuple[int, ...] | None, units: Mapping[str, int] | None = None
    ) -> None:
        lease = self._lease
        limiter = lease._limiter  # the limits it was made with
        if limiter._ledger is None:
            crossings = limiter._counted(_answer(lease._settle_op(actual)))
            lease._state = 2  # settled
        else:
            book = lease._book(units)
            got = _answer(lease._settle_op(actual, book))
            crossings = lease._settled(got, units, book)
        limiter._deliver(crossings, blocking=True)
        if limiter._watches:
            limiter._spent(actual, blocking=True)

    def commit(self, **actual: Amount) -> None:
        """Replace the estimate with the real usage (see ``Lease.commit``)."""
        self._settle(*self._lease._actual(actual))

    def release(self) -> None:
        """Give back the cap reservations; idempotent."""
        if self._lease._to_release():
            self._settle(None)

    def extend(self, ttl: float | None = None) -> None:
        """Keep the reservation ``ttl`` more seconds (see ``Lease.extend``)."""
        lease = self._lease
        ttl_ns = lease._extension(ttl)
        if not _answer(lease._limiter._b.extend(lease._key, ttl_ns)):
            raise lease._expired()

    def __enter__(self) -> SyncLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lease.settled:
            return
        if exc_type is None:
            self.commit()
        else:
            self.release()

    def __repr__(self) -> str:
        return repr(self._lease).replace("<Lease", "<SyncLease", 1)
