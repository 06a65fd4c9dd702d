"""What a limiter tells: refusals, alerts, runaway watches, forecasts.

``Telling`` is ``Limiter``'s half that reports rather than decides: the
``BudgetExceeded`` and ``AcquireTimeout`` of a refusal (told to the
observers and the ledger's events), every alert it fires (``_fire``: logged,
written as events, queued for the handlers of its scope and ancestors),
the runaway watches on its path, and the forecasts of its hard caps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import _telemetry as telemetry
from ._alerts import Dispatch, logger, report
from ._decide import Crossing, Exceeded, Shadowed, TooLong
from ._exceptions import BudgetExceeded, InvalidRequest
from ._ids import new_id
from ._limits import Cap, Rate
from ._scope import EMPTY_LABELS
from ._snapshot import (
    Alert,
    Snapshot,
    alerts_of,
    exceeded,
    shadow_alert,
    timed_out,
)
from ._telemetry import OBSERVERS

if TYPE_CHECKING:
    from ._clock import Clock
    from ._lease import Lease
    from ._ledger import Ledger
    from ._limiter import Limiter
    from ._runaway import Watch
    from .stores._base import Binding

__all__ = ("Telling",)

E = TypeVar("E", bound=Exception)


class Telling:
    """The reporting half of ``Limiter`` (its state is the limiter's)."""

    __slots__ = ()

    _b: Binding
    _clock: Clock
    _code: tuple[Rate | Cap, ...]
    _foreseen: set[str]
    _ledger: Ledger | None
    _limits: tuple[Rate | Cap, ...]
    _name: str | None
    _routes: tuple[tuple[Dispatch, ...], ...]
    _scopes: tuple[str | None, ...]
    _usd: int
    _wall: Any
    _watch: Watch | None
    _watches: tuple[Watch, ...]

    def _refusal(
        self,
        got: Exceeded | TooLong,
        req: tuple[int, ...],
        timeout: int | None,
        labels: Mapping[str, str] = EMPTY_LABELS,
    ) -> Exception:
        if isinstance(got, Exceeded):
            return self._exceeded(got, req, "acquiring", labels)
        return self._said(
            self._name, "timeout", timed_out(got, self._b.tick_ns, timeout)
        )

    def _exceeded(
        self,
        got: Exceeded,
        req: tuple[int, ...],
        kind: str,
        labels: Mapping[str, str] = EMPTY_LABELS,
    ) -> Exception:
        """The ``BudgetExceeded`` for a refusal, naming the scope that refused."""
        scope = self._scopes[got.slot]
        error = exceeded(self._limits, got, req, kind, scope, labels)
        return self._said(scope, "cap", error)

    def _said(self, scope: str | None, reason: str, error: E) -> E:
        """``error``, a refusal, told to the observers and the ledger's events."""
        if OBSERVERS:
            telemetry.refused(cast("Limiter", self), scope, reason)
        if self._ledger is not None:
            self._ledger._refused(self._wall(), scope or "", reason, error)
        return error

    def _fire(
        self,
        fired: list[tuple[tuple[Dispatch, ...], Alert]],
        overruns: list[str] | None = None,
        blocking: bool | None = False,
    ) -> None:
        """Log ``fired`` alerts (each with the handlers it goes to: its
        scope's and its ancestors') and ``overruns``, write the alerts as
        events of the ledger, and queue each handler's, in the order they
        fired, off the caller's path: in its event loop, for a ``blocking``
        caller in the alerts thread (``None``: wherever this runs)."""
        alerts = [a for _, a in fired]
        report(alerts, overruns or [], any(routes for routes, _ in fired))
        if alerts and self._ledger is not None:
            self._ledger._alerted(alerts, self._wall())
        batches: dict[Dispatch, list[Alert]] = {}
        for routes, alert in fired:
            for dispatch in routes:
                batches.setdefault(dispatch, []).append(alert)
        for dispatch, batch in batches.items():
            if blocking is None:
                dispatch.post_here(batch)
            elif blocking:
                dispatch.post_sync(batch)
            else:
                dispatch.post(batch)

    def _deliver(
        self, crossings: list[Crossing] | None, blocking: bool = False
    ) -> None:
        """Log what ``crossings`` fired and queue its alerts (``_fire``)."""
        if not crossings:
            return
        alerts, overruns = alerts_of(self._limits, crossings, self._scopes)
        if alerts or overruns:
            routes = self._routes
            self._fire([(routes[c.slot], a) for c, a in alerts], overruns, blocking)

    def _watching(self) -> None:
        """A runaway watch needs a USD cap on its scope's path to read spend from."""
        watch = self._watch
        if watch is None:
            return
        if watch.cap is None:
            raise InvalidRequest(
                f"runaway={watch.rule!r} watches USD spend, but {self!r} counts "
                "no USD: give it (or an ancestor) a USD cap; Cap(usd=..., "
                "soft=True) counts without refusing"
            )
        watch.born = self._clock.monotonic_ns()

    def _forecasting(self) -> None:
        """With a ledger and a hard cap of a calendar period, its ledger's
        thread forecasts it now and then (a forecast past the cap alerts)."""
        if self._ledger is not None and any(
            isinstance(x, Cap) and x.per is not None and not x.soft for x in self._code
        ):
            self._ledger._forecast_for(self)

    def _admit(self, lease: Lease, blocking: bool = False) -> None:
        """Refuse ``lease`` if a watch on its path blocks a runaway now."""
        now, wall = self._clock.monotonic_ns(), self._wall()
        refusal: BudgetExceeded | None = None
        for watch in self._watches:
            verdict, running, alert = watch.check(now, wall)
            if alert is not None:
                self._fire([(watch.routes, alert)], None, blocking)
            if running and watch.rule.action == "block" and refusal is None:
                usd = lease._unit_amounts().get("usd", 0)
                refusal = watch.refusal(verdict, now, wall, usd, dict(lease.labels))
        if refusal is not None:
            raise self._said(refusal.scope, "runaway", refusal)

    def _spent(self, actual: tuple[int, ...] | None, blocking: bool = False) -> None:
        """Count a settle's USD (``None``: released, nothing) on every watch
        of its path; alert those it sends running away. Never raises."""
        usd = 0 if actual is None or self._usd < 0 else actual[self._usd]
        now, wall = self._clock.monotonic_ns(), self._wall()
        for watch in self._watches:
            alert = watch.add(now, wall, usd)
            if alert is not None:
                self._fire([(watch.routes, alert)], None, blocking)

    def _foresee(self, snap: Snapshot, blocking: bool = False) -> None:
        """Alert on each hard cap of ``snap`` whose forecast crosses its
        limit: once per cap and period (in this process; receivers
        deduplicate by ``Alert.id`` across processes)."""
        fired: list[tuple[tuple[Dispatch, ...], Alert]] = []
        for slot, s in enumerate(snap.limits):
            f = s.forecast
            spec = s.limit
            if (
                f is None
                or f.expected is None
                or not isinstance(spec, Cap)
                or spec.soft
                or f.expected <= spec.limit
            ):
                continue
            alert = Alert(
                cap=spec,
                threshold=1.0,
                used=s.used,
                period=s.period,
                resets_at=s.resets_at,
                scope=self._name,
                kind="forecast",
                forecast=f,
            )
            if alert.id not in self._foreseen:
                self._foreseen.add(alert.id)
                fired.append((self._routes[slot], alert))
        if fired:
            self._fire(fired, None, blocking)

    def _on_shadow(self, shadowed: list[Shadowed]) -> None:
        """Shadow mode: what the caps would have refused. The first of each
        cap and period (in any process: the store latches it) is an alert;
        the others are logged (INFO); each is a ``shadowed`` row of the
        ledger. Never raises: it runs where a store's answer is delivered."""
        try:
            first: list[tuple[tuple[Dispatch, ...], Alert]] = []
            ledger = self._ledger
            for x in shadowed:
                if ledger is not None:  # its row: what would have been refused
                    axis = self._limits[x.slot].axis
                    scope = self._scopes[x.slot] or ""
                    at = self._wall()
                    units = {axis: x.requested}
                    ledger._put((new_id(), at, scope, EMPTY_LABELS, "shadowed", units))
                alert = shadow_alert(self._limits, x, self._scopes[x.slot])
                if x.first:
                    first.append((self._routes[x.slot], alert))
                else:
                    logger.info("ratebudget: %s", alert)
            if first:
                self._fire(first, None, None)
        except Exception:  # pragma: no cover - reporting must not lose a grant
            logger.exception("ratebudget: reporting a shadow refusal failed")
