"""``Limiter`` and ``Lease``: waiting, timeouts and cancellation over the engine."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import sys
import threading
from asyncio import _get_running_loop as _running_loop
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Hashable,
    Iterable,
    Mapping,
)
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel

from ._amounts import STANDARD_AXES, Amount, from_units, to_units
from ._clock import SYSTEM_CLOCK, Clock, Schedule, Sleeper
from ._engine import CLAIMED, FAILED, WAITING, Engine, Waiter
from ._exceptions import AcquireTimeout, InvalidRequest, StoreUnavailable
from ._limits import Cap, Rate
from ._snapshot import Alert, Snapshot

if TYPE_CHECKING:
    from asyncio import Future

    from ._remote import Remote
    from ._sync import SyncLimiter
    from .integrations.meter import Meter
    from .stores import MemoryStore, Store

__all__ = ("AlertHandler", "Lease", "Limiter")

logger: Final = logging.getLogger("ratebudget")

AlertHandler = Callable[[Alert], Awaitable[None] | None]
"""``on_alert``: a plain or async callable taking an ``Alert``."""

_new: Final = object.__new__


_FAST_KEPT: Final = 1024  # token counts whose request tuple is cached

_PENDING: Final = 0
_ACTIVE: Final = 1
_SETTLED: Final = 2


class _TaskWaiter(Waiter):
    """A waiter that is an async task; it is also the event it sleeps on.

    On asyncio it sleeps on a bare future (no ``asyncio.Event``, no cancel
    scope: a waiter allocates little, which keeps the garbage collector
    quiet with thousands queued); elsewhere on the backend's own event.
    """

    __slots__ = (
        "call_soon",
        "event",
        "fut",
        "loop",
        "new_event",
        "schedule",
        "thread",
        "timer",
    )

    def __init__(self, schedule: Schedule | None = None) -> None:
        super().__init__()
        self.schedule = schedule
        self.timer: Callable[[], object] | None = None
        self.thread = threading.get_ident()
        self.fut: Future[None] | None = None
        self.event: Sleeper | None = None
        # how another thread wakes this one: asyncio's loop, found cheaply,
        # else whatever anyio's token says (trio's ``run_sync_soon``)
        loop = self.loop = _running_loop()
        self.new_event: Callable[[], Sleeper] = anyio.Event
        if loop is not None:
            self.call_soon: Callable[[Callable[[], object]], object] = (
                loop.call_soon_threadsafe
            )
            return
        trio = sys.modules.get("trio")
        if trio is not None and trio.lowlevel.in_trio_run():
            # trio's own token and event, without anyio's backend dispatch
            self.call_soon = trio.lowlevel.current_trio_token().run_sync_soon
            self.new_event = trio.Event
            return
        native = anyio.lowlevel.current_token().native_token
        call_soon = getattr(native, "call_soon_threadsafe", None)
        self.call_soon = (
            call_soon if call_soon is not None else native.run_sync_soon  # type: ignore[attr-defined]
        )

    def arm(self) -> None:
        self.disarm()
        if self.loop is not None:
            self.fut = self.loop.create_future()
        else:
            self.event = self.new_event()

    def disarm(self) -> None:
        """Cancel the timer ``wake`` may have set (the waiter looks anyway)."""
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer()

    def set(self) -> None:
        """End the current sleep (in the waiter's own thread)."""
        fut = self.fut
        if fut is not None:
            if not fut.done():
                fut.set_result(None)
        elif self.event is not None:
            self.event.set()

    def wait(self) -> Awaitable[object]:
        """The current sleep, to await (see ``Clock.wait``)."""
        if self.fut is not None:
            return self.fut
        assert self.event is not None
        return self.event.wait()

    def wake(self) -> None:
        if threading.get_ident() == self.thread:
            deadline = self.deadline
            if (
                self.state == WAITING
                and deadline is not None
                and self.schedule is not None
            ):
                # woken only to learn its turn (it became the head): rather
                # than wake it now to set its own timer, set the timer for
                # it, so it wakes once, when its turn comes
                timer = self.schedule(deadline, self.set)
                if timer is not None:
                    self.disarm()
                    self.timer = timer
                    return
            self.set()
        else:
            try:
                self.call_soon(self.set)
            except RuntimeError:  # its event loop has closed: nobody to wake
                pass


def wake_all(woken: Iterable[Waiter], but: Waiter | None = None) -> None:
    for w in woken:
        if w is not but:
            w.wake()


def report(alerts: list[Alert], overruns: list[str], handled: bool) -> None:
    """Log overruns (WARNING) and alerts (WARNING, or INFO when a handler gets them)."""
    for note in overruns:
        logger.warning("ratebudget: %s", note)
    level = logging.INFO if handled else logging.WARNING
    for alert in alerts:
        logger.log(level, "ratebudget alert: %s", alert)


class Limiter:
    """A set of rates and caps enforced together.

    ``Limiter(Rate(tokens=90_000, per="minute"), Cap(usd="25", per="day"))``.
    ``clock`` is for tests (``ratebudget.testing.FakeClock``); ``on_alert`` a
    plain or async callable that receives each ``Alert``. One limiter may be
    shared by the tasks of one event loop, by threads each running their own
    loop, and by plain threads through ``limiter.sync``.
    """

    __slots__ = (
        "__weakref__",  # integrations keep per-limiter state in weak maps
        "_axes",
        "_clock",
        "_engine",
        "_fast",
        "_index",
        "_lease_type",
        "_limits",
        "_n",
        "_name",
        "_on_alert",
        "_remote",
        "_seen",
        "_store",
        "_sync",
        "_task_waiter",
    )

    def __init__(
        self,
        *limits: Rate | Cap,
        store: str | Store | MemoryStore | None = None,
        name: str | None = None,
        lease_ttl: float = 600.0,
        on_store_error: str = "raise",
        clock: Clock | None = None,
        on_alert: AlertHandler | None = None,
    ) -> None:
        for limit in limits:
            if not isinstance(limit, (Rate, Cap)):
                raise InvalidRequest(
                    f"Limiter() takes Rate and Cap objects, not {limit!r}"
                )
        if on_alert is not None and not callable(on_alert):
            raise InvalidRequest(f"on_alert={on_alert!r} is not callable")
        if name is not None and (
            not isinstance(name, str)
            or not name
            or len(name) > 200
            or not all(c.isalnum() or c in "-_.:/@" for c in name)
        ):
            raise InvalidRequest(
                f"name={name!r}: use up to 200 letters, digits and - _ . : / @"
            )
        if (
            isinstance(lease_ttl, bool)
            or not isinstance(lease_ttl, (int, float))
            or not math.isfinite(lease_ttl)
            or lease_ttl <= 0
        ):
            raise InvalidRequest(f"lease_ttl={lease_ttl!r}: expected seconds > 0")
        if on_store_error not in ("raise", "allow"):
            raise InvalidRequest(
                f"on_store_error={on_store_error!r}: use 'raise' (fail closed) "
                "or 'allow' (fail open)"
            )
        self._limits = limits
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._on_alert = on_alert
        self._name = name
        self._remote: Remote | None = None
        self._lease_type: type[Lease] = Lease
        from .stores import MemoryStore, open_store

        resolved = open_store(store) if isinstance(store, str) else store
        self._store = resolved
        if resolved is None:
            self._engine = Engine(limits, self._clock)
        elif isinstance(resolved, MemoryStore):
            if name is None:
                self._engine = Engine(limits, self._clock)
            else:
                self._engine = resolved.engine(
                    name, limits, lambda: Engine(limits, self._clock)
                )
        else:
            from ._remote import Remote
            from .stores import Store as _Store

            if not isinstance(resolved, _Store):
                raise InvalidRequest(
                    f"store={store!r}: expected a URL or a store object"
                )
            if name is None:
                raise InvalidRequest(
                    f"a shared store ({resolved.url}) needs name=: limiters of "
                    "one name share their state, in every process"
                )
            self._remote = Remote(
                resolved, name, limits, self._clock, lease_ttl, on_store_error
            )
            self._lease_type = _RemoteLease
            # the memory paths' engine, never used on a shared store (it keeps
            # ``_engine`` of one type, and holds nothing but empty buckets)
            self._engine = Engine(limits, self._clock)
        self._n = len(limits)
        index: dict[str, list[int]] = {}
        for i, limit in enumerate(limits):
            index.setdefault(limit.axis, []).append(i)
        self._index = {axis: tuple(ix) for axis, ix in index.items()}
        self._axes = frozenset(index) | STANDARD_AXES
        self._sync: SyncLimiter | None = None
        # the hot path: acquire(n) with no other amounts, validated once per n
        self._fast: dict[int, tuple[int, ...]] = {}
        self._task_waiter = functools.partial(
            _TaskWaiter, getattr(self._clock, "schedule", None)
        )
        self._seen: dict[Hashable, tuple[dict[str, int], tuple[int, ...]]] = {}

    @property
    def limits(self) -> tuple[Rate | Cap, ...]:
        """The limits, in the order given."""
        return self._limits

    @property
    def sync(self) -> SyncLimiter:
        """The blocking, thread-safe facade: ``with limiter.sync.acquire(...)``."""
        if self._sync is None:
            from ._sync import SyncLimiter

            self._sync = SyncLimiter(self)
        return self._sync

    # -- requests -------------------------------------------------------------

    def _units(
        self, tokens: Amount, amounts: Mapping[str, Amount], implicit: bool
    ) -> dict[str, int]:
        units: dict[str, int] = {}
        if type(tokens) is not int or tokens:
            units["tokens"] = to_units("tokens", tokens)
        for axis, value in amounts.items():
            if axis not in self._axes:
                raise InvalidRequest(
                    f"unknown axis {axis!r}: this limiter counts "
                    f"{', '.join(sorted(self._axes))}"
                )
            units[axis] = to_units(axis, value)
        if implicit and "requests" not in units:
            units["requests"] = 1
        return units

    def _request(self, units: Mapping[str, int], check_burst: bool) -> tuple[int, ...]:
        req = [0] * self._n
        for axis, n in units.items():
            for i in self._index.get(axis, ()):
                req[i] = n
                if check_burst:
                    spec = self._limits[i]
                    if isinstance(spec, Rate) and n > spec._burst_units:
                        raise InvalidRequest(
                            f"{axis}={from_units(axis, n)} is more than {spec!r} can ever "
                            f"hold (burst {spec.burst}): it could never be served; "
                            "split the request or raise the burst"
                        )
        return tuple(req)

    @staticmethod
    def _timeout_ns(timeout: float | None) -> int | None:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise InvalidRequest(f"timeout={timeout!r}: expected seconds or None")
        if math.isnan(timeout) or timeout < 0:
            raise InvalidRequest(f"timeout={timeout!r}: expected seconds >= 0 or None")
        return None if math.isinf(timeout) else math.ceil(timeout * 1e9)

    # -- the API --------------------------------------------------------------

    def acquire(
        self, tokens: Amount = 0, *, timeout: float | None = None, **amounts: Amount
    ) -> Lease:
        """Reserve ``tokens`` and ``amounts`` on every limit at once.

        Returns a ``Lease`` to ``await`` or use as ``async with``. Waits (FIFO)
        for rates; raises ``BudgetExceeded`` if a hard cap would be crossed,
        ``AcquireTimeout`` if the wait would exceed ``timeout`` seconds, and
        ``InvalidRequest`` (here, at the call) for bad amounts. Counts one
        request unless ``requests=`` is given. An uncontended grant returns
        without yielding to the event loop.
        """
        if not amounts and type(tokens) is int:
            try:
                req = self._fast[tokens]
            except KeyError:
                req = self._request(self._units(tokens, amounts, True), True)
                if len(self._fast) < _FAST_KEPT:
                    self._fast[tokens] = req
            # ``Lease(...)`` without the call to ``__init__`` (a third cheaper)
            lease = _new(self._lease_type)
            lease._limiter = self
            lease._units = tokens
            lease._req = req
            lease._timeout = None if timeout is None else self._timeout_ns(timeout)
            lease._state = _PENDING
            lease._id = 0
            return lease
        # other amounts: validated once per distinct call, like ``_fast``; the
        # types are part of the key so that ``usd=True`` never hits ``usd=1``
        try:
            key: Hashable = (
                tokens,
                type(tokens),
                tuple(amounts.items()),
                tuple(map(type, amounts.values())),
            )
            hit = self._seen.get(key)
        except TypeError:  # an unhashable amount: validation will say why
            key = hit = None
        if hit is None:
            units = self._units(tokens, amounts, True)
            hit = units, self._request(units, True)
            if key is not None and len(self._seen) < _FAST_KEPT:
                self._seen[key] = hit
        # the units dict is shared by the leases of one key: never mutated
        return self._lease_type(self, hit[0], hit[1], self._timeout_ns(timeout))

    async def try_acquire(self, tokens: Amount = 0, **amounts: Amount) -> Lease | None:
        """Like ``acquire`` but never waits: a granted ``Lease``, or ``None``.

        Still raises ``BudgetExceeded`` when a hard cap would certainly be crossed.
        """
        units = self._units(tokens, amounts, True)
        req = self._request(units, True)
        if self._remote is not None:
            lease: Lease = _RemoteLease(self, units, req, 0)
            try:
                await lease._acquire()
            except AcquireTimeout:
                return None
            return lease
        got = self._engine.begin(req, 0, None)
        if got is None:
            return None
        assert isinstance(got, int)
        lease = Lease(self, units, req, 0)
        lease._granted(got)
        return lease

    async def record(self, tokens: Amount = 0, **amounts: Amount) -> None:
        """Charge usage after the fact: rates go into debt, caps count it.

        Raises ``BudgetExceeded`` and records nothing if a hard cap would be
        crossed. Counts no request unless ``requests=`` is given.
        """
        units = self._units(tokens, amounts, False)
        req = self._request(units, False)
        remote = self._remote
        if remote is not None:
            try:
                r = await remote.call(["record", list(req), remote.periods()])
            except StoreUnavailable as e:
                if remote.unavailable(e, "a record"):
                    return
                raise
            if r[0] == "exceeded":
                raise remote.exceeded(int(r[1]), int(r[2]), int(r[3]), req, "recording")
            await self._deliver(remote.alerts(r[1]), [])
            return
        woken, alerts = self._engine.record(req)
        wake_all(woken)
        await self._deliver(alerts, [])

    async def snapshot(self) -> Snapshot:
        """Every limit's state now (see ``Snapshot``)."""
        remote = self._remote
        if remote is not None:
            return remote.snapshot_from(
                await remote.call(["snapshot", remote.periods()])
            )
        return self._engine.snapshot()

    async def reset(self) -> None:
        """Zero every cap's usage for its current period.

        Outstanding reservations stay reserved: their commit or release still
        settles exactly what they hold.
        """
        remote = self._remote
        if remote is not None:
            await remote.call(["reset", remote.periods()])
            remote.changed()
            return
        wake_all(self._engine.reset())

    def lower(self, *, per: float | None = None, **remaining: Amount) -> None:
        """Lower the rates on each axis to hold at most ``remaining`` now.

        For what a provider says remains (its ``x-ratelimit-remaining-*``
        headers), so that clients sharing one API key converge: a rate is
        only ever lowered, never raised, and refills as usual afterwards.
        ``per`` (seconds) limits it to the rates of that period (a provider's
        per-minute limits: ``per=60``). On a shared store this does nothing:
        its clients already share one bucket.
        """
        units = {axis: to_units(axis, value) for axis, value in remaining.items()}
        if self._remote is not None:
            return
        for axis, n in units.items():
            for i in self._index.get(axis, ()):
                limit = self._limits[i]
                if isinstance(limit, Rate) and (
                    per is None or limit._per_ns == round(per * 1e9)
                ):
                    self._engine.lower(i, n)

    def meter(self, *, model: str, **call: Any) -> Meter:
        """Meter one LLM call made without the httpx transport.

        ``async with limiter.meter(model="gpt-4o", messages=msgs, max_tokens=500) as m:``
        reserves the call's estimate; ``await m.settle(reply)`` commits the
        usage an OpenAI or Anthropic SDK response reports. Keywords:
        ``messages``, ``prompt``, ``system``, ``max_tokens``, ``n``,
        ``provider``, ``timeout``, ``count_tokens``, ``unknown_model`` (see
        ``ratebudget.integrations.meter.Meter``).
        """
        from .integrations.meter import Meter

        return Meter(self, model=model, **call)

    @property
    def name(self) -> str | None:
        """The name limiters share state under on a store (``None``: not shared)."""
        return self._name

    @property
    def store(self) -> Store | MemoryStore | None:
        """The store holding this limiter's state (``None``: its own memory)."""
        return self._store

    # -- internals --------------------------------------------------------------

    async def _wait(self, w: Waiter) -> None:
        engine = self._engine
        wait = self._clock.wait
        assert isinstance(w, _TaskWaiter)
        deadline = w.sleep_deadline()  # ``begin`` armed it
        try:
            while True:
                await wait(w, deadline)
                # a cancellation that came while we slept wins over a grant
                # made on our behalf meanwhile (which ``abort`` gives back)
                await anyio.lowlevel.checkpoint_if_cancelled()
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
        finally:
            w.disarm()

    async def _deliver(self, alerts: list[Alert], overruns: list[str]) -> None:
        if not alerts and not overruns:
            return
        handler = self._on_alert
        report(alerts, overruns, handler is not None)
        if handler is None:
            return
        for alert in alerts:
            try:
                result = handler(alert)
                if inspect.isawaitable(result):
                    with anyio.CancelScope(shield=True):
                        await result
            except Exception:
                logger.exception("ratebudget: on_alert handler failed for %s", alert)

    def __repr__(self) -> str:
        if self._remote is not None:
            limits = ", ".join(map(repr, self._limits))
            return f"<Limiter {self._name!r} on {self._remote.store.url}: {limits}>"
        return f"<Limiter {self._engine.describe()}>"


class Lease:
    """One acquisition: reserved amounts, later committed or released.

    Await it (``lease = await limiter.acquire(500)``) or use it as
    ``async with limiter.acquire(500) as lease:``. In the block,
    ``await lease.commit(**actual)`` settles the real usage; leaving normally
    without a commit commits the estimate; leaving by an exception releases
    the cap reservations (rate tokens stay spent).
    """

    __slots__ = ("_id", "_limiter", "_req", "_state", "_timeout", "_units")

    def __init__(
        self,
        limiter: Limiter,
        units: dict[str, int] | int,
        req: tuple[int, ...],
        timeout: int | None,
    ) -> None:
        self._limiter = limiter
        self._units = units  # an int: ``acquire(tokens)`` alone (see ``_amounts``)
        self._req = req
        self._timeout = timeout
        self._state = _PENDING
        self._id = 0

    def _granted(self, lease_id: int) -> None:
        self._id = lease_id
        self._state = _ACTIVE

    async def _acquire(self) -> Lease:
        if self._state != _PENDING:
            raise InvalidRequest(
                "this lease was already acquired; call limiter.acquire() again"
            )
        got = self._limiter._engine.begin(
            self._req, self._timeout, self._limiter._task_waiter
        )
        if isinstance(got, Waiter):
            await self._limiter._wait(got)
            got = got.lease_id
        assert isinstance(got, int)
        self._id = got
        self._state = _ACTIVE
        return self

    def __await__(self) -> Generator[Any, None, Lease]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Lease:
        if self._state != _PENDING:
            if self._state == _ACTIVE:  # from try_acquire() or an earlier await
                return self
            raise InvalidRequest(
                f"lease {self.id} was already settled; call limiter.acquire() again"
            )
        got = self._limiter._engine.begin(
            self._req, self._timeout, self._limiter._task_waiter
        )
        if type(got) is not int:
            assert isinstance(got, Waiter)
            await self._limiter._wait(got)
            got = got.lease_id
        self._id = got
        self._state = _ACTIVE
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != _ACTIVE:
            return
        self._state = _SETTLED
        engine = self._limiter._engine
        if not engine.caps:  # rates keep what they granted either way
            return
        if exc_type is None:
            woken, alerts, overruns = engine.settle(self._id, self._req, self._req)
            wake_all(woken)
            if alerts or overruns:
                await self._limiter._deliver(alerts, overruns)
        else:
            woken, _, _ = engine.settle(self._id, self._req, None)
            wake_all(woken)

    @property
    def id(self) -> str:
        """This lease's id (unique within the process)."""
        return f"{self._id:x}"

    @property
    def amounts(self) -> dict[str, int | Decimal]:
        """The reserved estimate per axis (``requests`` included)."""
        return {axis: from_units(axis, n) for axis, n in self._unit_amounts().items()}

    def _unit_amounts(self) -> dict[str, int]:
        units = self._units
        if type(units) is int:  # acquire(tokens) took the fast path
            units = self._units = self._limiter._units(units, {}, True)
        assert isinstance(units, dict)
        return units

    @property
    def settled(self) -> bool:
        """Whether the lease was committed or released."""
        return self._state == _SETTLED

    def _actual(self, actual: Mapping[str, Amount]) -> tuple[int, ...]:
        if self._state == _PENDING:
            raise InvalidRequest("this lease has not been acquired yet: await it first")
        if self._state == _SETTLED:
            raise InvalidRequest(f"lease {self.id} was already committed or released")
        units = dict(self._unit_amounts())
        limiter = self._limiter
        for axis, value in actual.items():
            if axis not in limiter._axes:
                raise InvalidRequest(
                    f"unknown axis {axis!r} in commit: this limiter counts "
                    f"{', '.join(sorted(limiter._axes))}"
                )
            units[axis] = to_units(axis, value)
        return limiter._request(units, False)

    def _commit_nowait(
        self, actual: Mapping[str, Amount]
    ) -> tuple[list[Alert], list[str]]:
        req = self._actual(actual)
        self._state = _SETTLED
        woken, alerts, overruns = self._limiter._engine.settle(self._id, self._req, req)
        wake_all(woken)
        return alerts, overruns

    async def commit(self, **actual: Amount) -> None:
        """Replace the estimate with the real usage on every limit.

        Axes not given keep their estimate. Unused estimate goes back; overuse
        is charged (a hard cap records it past its limit and logs the overrun;
        a rate goes into debt that later callers wait off). Raises
        ``InvalidRequest`` for bad amounts, unknown axes or a settled lease.
        """
        alerts, overruns = self._commit_nowait(actual)
        await self._limiter._deliver(alerts, overruns)

    def _to_release(self) -> bool:
        """Whether a release has anything to do (it marks the lease settled)."""
        if self._state == _PENDING:
            raise InvalidRequest("this lease has not been acquired yet: await it first")
        if self._state == _SETTLED:
            return False
        self._state = _SETTLED
        return True

    def _release_nowait(self) -> None:
        if not self._to_release():
            return
        woken, _, _ = self._limiter._engine.settle(self._id, self._req, None)
        wake_all(woken)

    async def release(self) -> None:
        """Give back the cap reservations; rate tokens stay spent.

        Idempotent: releasing a settled lease does nothing.
        """
        self._release_nowait()

    async def extend(self, ttl: float | None = None) -> None:
        """Keep this lease's reservation for ``ttl`` more seconds (default: the
        limiter's ``lease_ttl``), for calls that may outlive it (long streams).

        On a shared store an unsettled lease gives its cap reservation back
        ``lease_ttl`` seconds after its grant; memory leases never expire, so
        there this only checks the lease is active. Raises ``InvalidRequest``
        if the lease is not active, or was already reclaimed.
        """
        if self._state != _ACTIVE:
            raise InvalidRequest(f"lease {self.id} is not active")
        if ttl is not None and (
            isinstance(ttl, bool)
            or not isinstance(ttl, (int, float))
            or not math.isfinite(ttl)
            or ttl <= 0
        ):
            raise InvalidRequest(f"ttl={ttl!r}: expected seconds > 0")

    def __repr__(self) -> str:
        state = ("pending", "active", "settled")[self._state]
        amounts = ", ".join(f"{k}={v}" for k, v in self.amounts.items())
        return f"<Lease {self.id} {state} {amounts}>"


class _RemoteLease(Lease):
    """A lease on a shared store: its id is the store's lease id.

    A lease that reserves no cap is not recorded by the store (nothing would
    need reclaiming); it keeps ``_inline``, what the store answered, and
    sends it with a commit that changes something.
    """

    __slots__ = ("_inline",)

    @property
    def id(self) -> str:
        return str(self._id) if self._id else "unmetered"

    def _remote(self) -> Remote:
        remote = self._limiter._remote
        assert remote is not None
        return remote

    async def _acquire(self) -> Lease:
        if self._state != _PENDING:
            raise InvalidRequest(
                "this lease was already acquired; call limiter.acquire() again"
            )
        lease_id, self._inline = await self._remote().acquire(self._req, self._timeout)
        self._id = lease_id  # type: ignore[assignment]
        self._state = _ACTIVE
        return self

    def _granted_sync(self, got: tuple[str, list[Any] | None]) -> None:
        self._id, self._inline = got  # type: ignore[assignment]
        self._state = _ACTIVE

    async def __aenter__(self) -> Lease:
        if self._state != _PENDING:
            if self._state == _ACTIVE:
                return self
            raise InvalidRequest(
                f"lease {self.id} was already settled; call limiter.acquire() again"
            )
        return await self._acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != _ACTIVE:
            return
        self._state = _SETTLED
        if self._inline is not None:
            # no cap reserved, and its time has come: committing the estimate
            # or releasing changes nothing in the store
            return
        if exc_type is None:
            await self._settle(self._req)
        else:
            with anyio.CancelScope(shield=True):
                await self._remote().release(str(self._id))

    async def _settle(self, actual: tuple[int, ...]) -> None:
        remote = self._remote()
        if self._inline is not None and actual == self._req:
            return  # the estimate, on rates only: nothing to change
        # shielded, as a memory store's commit cannot be interrupted either:
        # the lease is settled already, so the store must hear of it (the
        # call is bounded by the store's timeout)
        with anyio.CancelScope(shield=True):
            alerts, overruns = await remote.settle(str(self._id), actual, self._inline)
        if alerts or overruns:
            await self._limiter._deliver(alerts, overruns)

    async def commit(self, **actual: Amount) -> None:
        req = self._actual(actual)
        self._state = _SETTLED
        await self._settle(req)

    async def release(self) -> None:
        if not self._to_release() or self._inline is not None:
            return  # an unrecorded lease: its rate tokens stay spent, nothing else
        with anyio.CancelScope(shield=True):
            await self._remote().release(str(self._id))

    async def extend(self, ttl: float | None = None) -> None:
        await super().extend(ttl)
        if self._inline is not None or not self._id:
            return  # nothing in the store expires
        remote = self._remote()
        ttl_us = remote.ttl_us if ttl is None else math.ceil(ttl * 1e6)
        r = await remote.call(["extend", str(self._id), ttl_us])
        if r[0] != "ok":
            raise InvalidRequest(
                f"lease {self.id} expired before it was extended: its reservation "
                "was reclaimed (raise lease_ttl, or extend sooner)"
            )

    def _commit_nowait(
        self, actual: Mapping[str, Amount]
    ) -> tuple[list[Alert], list[str]]:
        req = self._actual(actual)
        self._state = _SETTLED
        if self._inline is not None and req == self._req:
            return [], []
        return self._remote().settle_sync(str(self._id), req, self._inline)

    def _release_nowait(self) -> None:
        if not self._to_release() or self._inline is not None:
            return
        self._remote().settle_sync(str(self._id), None)
