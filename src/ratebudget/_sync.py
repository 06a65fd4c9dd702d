"""The blocking, thread-safe facade: ``limiter.sync``."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ._amounts import Amount
from ._engine import CLAIMED, FAILED, Waiter
from ._limiter import Lease, logger, report, wake_all
from ._snapshot import Alert, Snapshot

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = ("SyncLease", "SyncLimiter")


class _ThreadWaiter(Waiter):
    """A waiter that is a plain thread: it blocks on a ``threading.Event``."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def arm(self) -> None:
        self.event.clear()

    def wake(self) -> None:
        self.event.set()


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


class SyncLimiter:
    """Blocking versions of ``Limiter``'s operations, safe from any thread.

    Do not call these from inside an event loop: they block the thread.
    """

    __slots__ = ("_limiter",)

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    def acquire(
        self, tokens: Amount = 0, *, timeout: float | None = None, **amounts: Amount
    ) -> SyncLease:
        """Block until granted; return a ``SyncLease`` (also a context manager)."""
        limiter = self._limiter
        lease = limiter.acquire(tokens, timeout=timeout, **amounts)
        remote = limiter._remote
        if remote is not None:
            lease._granted_sync(remote.acquire_sync(lease._req, lease._timeout))  # type: ignore[attr-defined]
            return SyncLease(self, lease)
        got = limiter._engine.begin(lease._req, lease._timeout, _ThreadWaiter)
        if isinstance(got, Waiter):
            self._wait(got)
            got = got.lease_id
        assert isinstance(got, int)
        lease._granted(got)
        return SyncLease(self, lease)

    def _wait(self, w: Waiter) -> None:
        engine = self._limiter._engine
        wait_until = self._limiter._clock.wait_until
        assert isinstance(w, _ThreadWaiter)
        deadline = w.sleep_deadline()  # ``begin`` armed it
        try:
            while True:
                wait_until(w.event, deadline)
                woken, deadline = engine.poll(w)
                wake_all(woken, but=w)
                if w.state == CLAIMED:
                    return
                if w.state == FAILED:
                    assert w.error is not None
                    raise w.error
        except BaseException:
            wake_all(engine.abort(w))
            raise

    def try_acquire(self, tokens: Amount = 0, **amounts: Amount) -> SyncLease | None:
        """A granted ``SyncLease`` now, or ``None``; never blocks."""
        limiter = self._limiter
        units = limiter._units(tokens, amounts, True)
        lease = limiter._lease_type(limiter, units, limiter._request(units, True), 0)
        remote = limiter._remote
        if remote is not None:
            from ._exceptions import AcquireTimeout

            try:
                lease._granted_sync(remote.acquire_sync(lease._req, 0))  # type: ignore[attr-defined]
            except AcquireTimeout:
                return None
            return SyncLease(self, lease)
        got = limiter._engine.begin(lease._req, 0, None)
        if got is None:
            return None
        assert isinstance(got, int)
        lease._granted(got)
        return SyncLease(self, lease)

    def record(self, tokens: Amount = 0, **amounts: Amount) -> None:
        """Charge usage after the fact (see ``Limiter.record``)."""
        limiter = self._limiter
        units = limiter._units(tokens, amounts, False)
        req = limiter._request(units, False)
        remote = limiter._remote
        if remote is not None:
            (r,) = remote.execute([["record", list(req), remote.periods()]])
            if r[0] == "exceeded":
                raise remote.exceeded(int(r[1]), int(r[2]), int(r[3]), req, "recording")
            self._deliver(remote.alerts(r[1]), [])
            return
        woken, alerts = limiter._engine.record(req)
        wake_all(woken)
        self._deliver(alerts, [])

    def snapshot(self) -> Snapshot:
        """Every limit's state now."""
        remote = self._limiter._remote
        if remote is not None:
            (r,) = remote.execute([["snapshot", remote.periods()]])
            return remote.snapshot_from(r)
        return self._limiter._engine.snapshot()

    def reset(self) -> None:
        """Zero every cap's usage for its current period."""
        remote = self._limiter._remote
        if remote is not None:
            remote.execute([["reset", remote.periods()]])
            return
        wake_all(self._limiter._engine.reset())

    def _deliver(self, alerts: list[Alert], overruns: list[str]) -> None:
        if not alerts and not overruns:
            return
        handler = self._limiter._on_alert
        report(alerts, overruns, handler is not None)
        if handler is None:
            return
        for alert in alerts:
            try:
                result = handler(alert)
                if inspect.isawaitable(result):
                    anyio.run(_await, result)
            except Exception:
                logger.exception("ratebudget: on_alert handler failed for %s", alert)

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
    def settled(self) -> bool:
        return self._lease.settled

    def commit(self, **actual: Amount) -> None:
        """Replace the estimate with the real usage (see ``Lease.commit``)."""
        self._sync._deliver(*self._lease._commit_nowait(actual))

    def release(self) -> None:
        """Give back the cap reservations; idempotent."""
        self._lease._release_nowait()

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
