"""A limiter's client side of a persistent store (SQLite, Redis).

Every decision is one store call (one transaction, one script). Store calls
are blocking; each event loop's run on a worker thread of its own, which
hands the answers back to the loop, so they work on asyncio and trio alike
and no caller has to stay to collect an answer (any cancellation just stops
its wait). Calls from the tasks of one event loop are *coalesced*: the first
caller's operation goes at once; calls that arrive while one is on its way
queue up and go together, in arrival order, in the next call (group commit).
So one caller alone pays one round trip and no added wait, and many callers
share round trips.

Waiting for a rate is a local sleep until the moment the store scheduled;
waiting on a hard cap that other callers' reservations block is a bounded
poll, cut short when a lease settles here or (Redis pub/sub) in another process.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from asyncio import _get_running_loop as _running_loop
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel

from ._amounts import from_units
from ._clock import SYSTEM_CLOCK, Clock, Sleeper
from ._exceptions import AcquireTimeout, BudgetExceeded, StoreUnavailable
from ._limits import Cap, Rate
from ._periods import period_window
from ._snapshot import Alert, LimitSnapshot, Snapshot
from .stores import periods_of, plan_of, spec_of
from .stores._base import Store

if TYPE_CHECKING:
    from asyncio import Future

__all__ = ("Remote",)

logger: Final = logging.getLogger("ratebudget")

_POLL_MIN: Final = 0.005  # s: first re-check of a cap blocked by reservations
_POLL_MAX: Final = 0.25  # s: the longest a blocked caller goes without a look
_SETTLED_KEPT_US: Final = 60_000_000  # a settled lease's record, for retries
_WORKER_IDLE: Final = 10.0  # s: a store worker thread this idle exits


def inline_of(r: list[Any]) -> list[Any] | None:
    """From an acquire's answer: what a lease the store keeps no record of
    (it reserves no cap) must send with its commit or release."""
    if len(r) < 4:
        return None
    at = int(r[2])
    return [at, at + int(r[1]), r[3]]


class _FutureEvent:
    """An event for one waiter of an asyncio loop: a bare future (an
    ``anyio.Event`` costs several times more, and a batch wakes many)."""

    __slots__ = ("fut",)

    def __init__(self, fut: Future[None]) -> None:
        self.fut = fut

    def set(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)

    def wait(self) -> Future[None]:
        return self.fut


def _event() -> Sleeper:
    loop = _running_loop()
    if loop is not None:
        return _FutureEvent(loop.create_future())
    return anyio.Event()


class _Call:
    __slots__ = ("abandoned", "done", "error", "event", "op", "result")

    def __init__(self, op: list[Any]) -> None:
        self.op = op
        self.event: Sleeper | None = None
        self.done = False
        self.abandoned = False
        self.result: list[Any] = []
        self.error: BaseException | None = None


class _Worker:
    """A thread that runs one event loop's store calls, one at a time.

    It hands each answer back to the loop itself, so no task has to stay to
    collect it: a caller cancelled in any way (an anyio scope, trio,
    ``asyncio.Task.cancel``) just stops waiting. It exits when idle.
    """

    __slots__ = ("alive", "lock", "queue")

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[..., None]]]
        self.queue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.alive = False

    def submit(self, work: Callable[[], Any], done: Callable[..., None]) -> None:
        with self.lock:
            self.queue.put((work, done))
            if not self.alive:
                self.alive = True
                threading.Thread(
                    target=self._run, name="ratebudget-store", daemon=True
                ).start()

    def _run(self) -> None:
        while True:
            try:
                work, done = self.queue.get(timeout=_WORKER_IDLE)
            except queue.Empty:
                with self.lock:
                    if self.queue.empty():
                        self.alive = False
                        return
                continue
            try:
                result = work()
            except BaseException as e:  # delivered to the callers
                done(None, e)
            else:
                done(result, None)


class _Batcher:
    """The calls of one event loop: waiting to go, or on their way."""

    __slots__ = ("hot", "loop", "pending", "running", "soon", "worker")

    def __init__(
        self, loop: object, soon: Callable[[Callable[[], object]], object]
    ) -> None:
        self.loop = loop  # the event loop (asyncio) or trio token it serves
        self.soon = soon  # run a callback in that loop, from any thread
        self.pending: list[_Call] = []
        self.running = False  # a store call is on its way
        self.hot = False  # the last call carried several: more are coming
        self.worker = _Worker()


def _loop_and_soon() -> tuple[object, Callable[[Callable[[], object]], object]]:
    loop = _running_loop()
    if loop is not None:
        return loop, loop.call_soon_threadsafe
    token = anyio.lowlevel.current_token()
    native = token.native_token
    soon = getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon  # type: ignore[attr-defined]
    return native, soon


class Remote:
    """The store, name and plan of one limiter, and its coalescing client."""

    def __init__(
        self,
        store: Store,
        name: str,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        lease_ttl: float,
        on_store_error: str,
    ) -> None:
        self.store = store
        self.name = name
        self.limits = limits
        self.plan = plan_of(limits)
        self.clock = clock
        self.fake_time = clock is not SYSTEM_CLOCK
        self.ttl_us = math.ceil(lease_ttl * 1e6)
        self.keep_us = self.ttl_us
        self.fail_open = on_store_error == "allow"
        self.hard = [isinstance(x, Cap) and not x.soft for x in limits]
        # no calendar cap: the period keys never change
        calendar = any(isinstance(x, Cap) and x.per is not None for x in limits)
        self._static_periods = None if calendar else [""] * len(limits)
        self._local = threading.local()
        self._registered = False
        self._calls = 0  # store calls under way, from every thread
        # callers blocked on a cap, woken when a lease settles (here, or in
        # another process when the store can tell: Redis pub/sub)
        self._watch_lock = threading.Lock()
        self._watchers: set[Callable[[], None]] = set()
        self._subscribed = False
        # releases sent with the next store call (grants whose caller left)
        self._deferred: list[list[Any]] = []
        self._reg_lock = threading.Lock()

    # -- the store ----------------------------------------------------------

    def periods(self) -> list[str]:
        if self._static_periods is not None:
            return self._static_periods
        return periods_of(self.limits, self.clock.time())

    def _register(self) -> None:
        if self._registered:
            return
        with self._reg_lock:
            if self._registered:
                return
            for warning in self.store.register(self.name, spec_of(self.limits)):
                logger.warning("ratebudget: %s", warning)
            self._registered = True

    def execute(self, ops: list[list[Any]]) -> list[list[Any]]:
        """Run ``ops`` in one store call, here (blocking).

        Deferred settles ride along, ahead of ``ops``; their results are dropped.
        """
        self._register()
        now = round(self.clock.time() * 1e6) if self.fake_time else None
        with self._watch_lock:
            extra, self._deferred = self._deferred, []
        out = self.store.execute(
            self.name, self.plan, extra + ops, keep_us=self.keep_us, now_us=now
        )
        return out[len(extra) :]

    def defer(self, op: list[Any]) -> None:
        """Send ``op`` with the next store call (no round trip of its own)."""
        with self._watch_lock:
            # bounded: past that, a lease left unsettled expires after its TTL
            if len(self._deferred) < 1024:
                self._deferred.append(op)

    def busy(self) -> bool:
        """Whether a store call is under way (for tests that settle time)."""
        return self._calls > 0

    async def call(self, op: list[Any]) -> list[Any]:
        """Run ``op``, coalesced with the other calls of this event loop."""
        self._calls += 1
        try:
            return await self._call(op)
        finally:
            self._calls -= 1

    def _batcher(self) -> _Batcher:
        b: _Batcher | None = getattr(self._local, "batcher", None)
        loop, soon = _loop_and_soon()
        if b is None or b.loop is not loop:
            # this thread's first call, or a new event loop in it
            b = self._local.batcher = _Batcher(loop, soon)
        return b

    async def _call(self, op: list[Any]) -> list[Any]:
        b = self._batcher()
        c = _Call(op)
        c.event = event = _event()
        b.pending.append(c)
        if not b.running:
            b.running = True
            if b.hot:
                # a call of several just came back and its callers are about
                # to call again: let them queue first, so they go together
                # (a caller alone never waits for company: it goes at once)
                b.hot = False
                b.soon(lambda: self._flush(b))
            else:
                self._flush(b)
        try:
            await event.wait()
        except BaseException:
            if c.done:  # answered as it left: give back a grant
                if op[0] == "acquire" and c.result[:1] == ["ok"]:
                    self.defer(self._release_op(op[1], inline_of(c.result)))
            elif c in b.pending:
                if op[0] == "acquire":  # not sent: it never happened
                    b.pending.remove(c)
                # a settle or a record asked for is sent all the same
            else:  # on its way: what it gets is released when it lands
                c.abandoned = True
            raise
        if c.error is not None:
            raise c.error
        return c.result

    def _flush(self, b: _Batcher) -> None:
        """Send what is pending in one store call (in the loop's thread)."""
        batch, b.pending = b.pending, []
        if not batch:
            b.running = False
            return
        ops = [c.op for c in batch]

        def landed(
            results: list[list[Any]] | None, error: BaseException | None
        ) -> None:
            try:  # in the worker thread: hand the answers to the loop
                b.soon(lambda: self._deliver(b, batch, results, error))
            except RuntimeError:  # the loop has closed: nobody is waiting
                pass

        b.worker.submit(lambda: self.execute(ops), landed)

    def _deliver(
        self,
        b: _Batcher,
        batch: list[_Call],
        results: list[list[Any]] | None,
        error: BaseException | None,
    ) -> None:
        """A store call came back: wake its callers, send what queued meanwhile."""
        if results is None:
            for c in batch:
                c.error = (
                    error
                    if isinstance(error, Exception)
                    else StoreUnavailable(f"the store call was interrupted: {error!r}")
                )
        else:
            for c, r in zip(batch, results, strict=True):
                c.result = r
                if c.abandoned and c.op[0] == "acquire" and r[0] == "ok":
                    # its caller left while the grant was on its way
                    b.pending.append(_Call(self._release_op(c.op[1], inline_of(r))))
        for c in batch:
            c.done = True
            if c.event is not None:
                c.event.set()
        b.hot = len(batch) > 1
        if not b.pending:
            b.running = False
        elif b.hot:
            b.soon(lambda: self._flush(b))
        else:
            self._flush(b)

    # -- operations ---------------------------------------------------------

    def _release_op(self, lease_id: str, inline: list[Any] | None) -> list[Any]:
        return self.settle_op(lease_id, None, inline)

    def _kept(self) -> int:
        return min(self.ttl_us, _SETTLED_KEPT_US)

    def acquire_op(
        self, lease_id: str, req: tuple[int, ...], timeout_us: int
    ) -> list[Any]:
        return ["acquire", lease_id, list(req), timeout_us, self.ttl_us, self.periods()]

    def settle_op(
        self,
        lease_id: str,
        actual: tuple[int, ...] | None,
        inline: list[Any] | None = None,
    ) -> list[Any]:
        op = [
            "settle",
            lease_id,
            None if actual is None else list(actual),
            self._kept(),
            self.periods(),
        ]
        if inline is not None:
            op.append(inline)
        return op

    def unavailable(self, e: StoreUnavailable, what: str) -> bool:
        """Whether to go on without the store (``on_store_error="allow"``)."""
        if not self.fail_open:
            return False
        logger.error(
            "ratebudget: store %s unavailable, %s NOT METERED (on_store_error='allow'): %s",
            self.store.url,
            what,
            e,
        )
        return True

    def changed(self) -> None:
        """A lease settled: callers blocked on a cap look again now."""
        with self._watch_lock:
            watchers = list(self._watchers)
        for wake in watchers:
            wake()

    def _watch(self, event: anyio.Event) -> Callable[[], None]:
        """Have ``changed`` set ``event`` (from any thread); returns the undo."""
        soon = _loop_and_soon()[1]

        def wake() -> None:
            try:
                soon(event.set)
            except RuntimeError:  # its event loop has closed
                pass

        with self._watch_lock:
            self._watchers.add(wake)
            subscribe = not self._subscribed
            self._subscribed = True
        if subscribe:
            self.store.subscribe(self.name, self.changed)
        return lambda: self._unwatch(wake)

    def _unwatch(self, wake: Callable[[], None]) -> None:
        with self._watch_lock:
            self._watchers.discard(wake)

    async def acquire(
        self, req: tuple[int, ...], timeout_ns: int | None
    ) -> tuple[str, list[Any] | None]:
        """Reserve ``req``; once it may proceed, the lease id and, for a lease
        the store keeps no record of (it reserves no cap), what a commit or
        a release of it must send along."""
        lease_id = os.urandom(9).hex()
        clock = self.clock
        deadline = None if timeout_ns is None else clock.monotonic_ns() + timeout_ns
        poll = _POLL_MIN
        while True:
            left = None if deadline is None else deadline - clock.monotonic_ns()
            timeout_us = -1 if left is None else max(0, left // 1000)
            try:
                r = await self.call(self.acquire_op(lease_id, req, timeout_us))
            except StoreUnavailable as e:
                if self.unavailable(e, "an acquisition"):
                    return "", None
                raise
            if r[0] == "ok":
                wait_us = int(r[1])
                inline = inline_of(r)
                try:
                    if wait_us:
                        await clock.sleep_until(clock.monotonic_ns() + wait_us * 1000)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self.release(lease_id, inline)
                    raise
                return lease_id, inline
            until = self._refuse_or_poll(r, req, timeout_ns, deadline, poll)
            # a hard cap is held by outstanding reservations: look again when
            # a lease settles, or after a bounded, growing poll
            event = anyio.Event()
            unwatch = self._watch(event)
            try:
                with anyio.move_on_after(poll):
                    await clock.wait(event, until)
            finally:
                unwatch()
            poll = min(poll * 2, _POLL_MAX)

    def _refuse_or_poll(
        self,
        r: list[Any],
        req: tuple[int, ...],
        timeout_ns: int | None,
        deadline: int | None,
        poll: float,
    ) -> int:
        """Raise for an acquire's refusal; for "blocked", when to look again."""
        kind = r[0]
        if kind == "timeout":
            retry = int(r[1]) / 1e6
            raise AcquireTimeout(
                f"acquisition needs {retry:.3f}s; timeout is "
                f"{(timeout_ns or 0) / 1e9:g}s",
                retry_after=retry,
            )
        if kind == "exceeded":
            raise self.exceeded(int(r[1]), int(r[2]), int(r[3]), req, "acquiring")
        assert kind == "blocked", r
        now = self.clock.monotonic_ns()
        if deadline is not None and now >= deadline:
            raise AcquireTimeout(
                "acquisition was not granted within its timeout: a cap is "
                "held by other callers' reservations",
                retry_after=None,
            )
        until = now + int(poll * 1e9)
        return until if deadline is None or until < deadline else deadline

    async def release(self, lease_id: str, inline: list[Any] | None = None) -> None:
        if not lease_id:
            return
        await self.settle(lease_id, None, inline)

    async def settle(
        self,
        lease_id: str,
        actual: tuple[int, ...] | None,
        inline: list[Any] | None = None,
    ) -> tuple[list[Alert], list[str]]:
        """Commit ``actual`` (``None``: release); the alerts and overruns it caused."""
        if not lease_id:  # granted without the store (fail open)
            return [], []
        try:
            r = await self.call(self.settle_op(lease_id, actual, inline))
        except StoreUnavailable as e:
            if self.unavailable(e, "a commit"):
                return [], []
            raise
        return self._settled(r)

    def _settled(self, r: list[Any]) -> tuple[list[Alert], list[str]]:
        """After a settle: wake callers blocked on a cap; its alerts and overruns."""
        self.changed()
        if r[0] != "ok":
            return [], []
        return self.alerts(r[1]), self.overruns(r[1])

    def alerts(self, crossed: list[list[int]]) -> list[Alert]:
        """Alerts for thresholds a commit's usage crossed (each fires once)."""
        out: list[Alert] = []
        wall = self.clock.time()
        for i, before, after in crossed:
            spec = self.limits[int(i)]
            assert isinstance(spec, Cap)
            for t in spec.alert_at:
                units = math.ceil(Decimal(repr(t)) * spec._limit_units)
                if int(before) < units <= int(after):
                    window = (
                        period_window(spec.per, spec.tz, wall) if spec.per else None
                    )
                    out.append(
                        Alert(
                            limit=spec,
                            threshold=t,
                            used=from_units(spec.axis, int(after)),
                            period=window.key if window else None,
                            resets_at=window.end if window else None,
                        )
                    )
        return out

    def overruns(self, crossed: list[list[int]]) -> list[str]:
        notes = []
        for i, _before, after in crossed:
            spec = self.limits[int(i)]
            if self.hard[int(i)] and int(after) > spec._limit_units:
                notes.append(
                    f"commit pushed {spec!r} over its limit: used "
                    f"{from_units(spec.axis, int(after))}"
                )
        return notes

    def exceeded(
        self, i: int, used: int, reserved: int, req: tuple[int, ...], kind: str
    ) -> BudgetExceeded:
        spec = self.limits[i]
        assert isinstance(spec, Cap)
        axis = spec.axis
        window = (
            period_window(spec.per, spec.tz, self.clock.time()) if spec.per else None
        )
        period = f" this {spec.per}" if spec.per else ""
        resets = f"; it resets at {window.end.isoformat()}" if window else ""
        return BudgetExceeded(
            f"{kind} {axis}={from_units(axis, req[i])} would push {spec!r} past its "
            f"limit: {from_units(axis, used)} of {spec.limit} used{period}{resets}",
            axis=axis,
            limit=spec.limit,
            used=from_units(axis, used),
            reserved=from_units(axis, reserved),
            requested=from_units(axis, req[i]),
            resets_at=window.end if window else None,
        )

    def snapshot_from(self, r: list[Any]) -> Snapshot:
        out: list[LimitSnapshot] = []
        wall = self.clock.time()
        for spec, p, vals in zip(self.limits, self.plan.slots, r[1], strict=True):
            axis = spec.axis
            if isinstance(spec, Rate):
                per = getattr(p, "per", 1)
                level = int(vals[0])
                tokens = level // per
                burst = spec._burst_units
                out.append(
                    LimitSnapshot(
                        limit=spec,
                        kind="rate",
                        axis=axis,
                        limit_amount=spec.limit,
                        used=from_units(axis, burst - tokens),
                        reserved=from_units(axis, 0),
                        remaining=from_units(axis, max(tokens, 0)),
                        tokens=from_units(axis, tokens),
                    )
                )
            else:
                used, reserved = int(vals[0]), int(vals[1])
                window = period_window(spec.per, spec.tz, wall) if spec.per else None
                out.append(
                    LimitSnapshot(
                        limit=spec,
                        kind="cap",
                        axis=axis,
                        limit_amount=spec.limit,
                        used=from_units(axis, used),
                        reserved=from_units(axis, reserved),
                        remaining=from_units(
                            axis, max(0, spec._limit_units - used - reserved)
                        ),
                        period=window.key if window else None,
                        resets_at=window.end if window else None,
                    )
                )
        return Snapshot(limits=tuple(out), waiting=0)

    # -- the blocking facade --------------------------------------------------

    def acquire_sync(
        self, req: tuple[int, ...], timeout_ns: int | None
    ) -> tuple[str, list[Any] | None]:
        lease_id = os.urandom(9).hex()
        clock = self.clock
        deadline = None if timeout_ns is None else clock.monotonic_ns() + timeout_ns
        poll = _POLL_MIN
        while True:
            left = None if deadline is None else deadline - clock.monotonic_ns()
            timeout_us = -1 if left is None else max(0, left // 1000)
            try:
                (r,) = self.execute([self.acquire_op(lease_id, req, timeout_us)])
            except StoreUnavailable as e:
                if self.unavailable(e, "an acquisition"):
                    return "", None
                raise
            if r[0] == "ok":
                if int(r[1]):
                    clock.wait_until(
                        threading.Event(), clock.monotonic_ns() + int(r[1]) * 1000
                    )
                return lease_id, inline_of(r)
            until = self._refuse_or_poll(r, req, timeout_ns, deadline, poll)
            clock.wait_until(threading.Event(), until)
            poll = min(poll * 2, _POLL_MAX)

    def settle_sync(
        self,
        lease_id: str,
        actual: tuple[int, ...] | None,
        inline: list[Any] | None = None,
    ) -> tuple[list[Alert], list[str]]:
        if not lease_id:
            return [], []
        try:
            (r,) = self.execute([self.settle_op(lease_id, actual, inline)])
        except StoreUnavailable as e:
            if self.unavailable(e, "a commit"):
                return [], []
            raise
        return self._settled(r)
