"""The client side of a shared store (SQLite, Redis): ``SharedStore`` and its
``RemoteBinding``.

Every decision is one store call (one transaction, one script). Store calls
are blocking; each event loop's run on a worker thread of its own, which
hands the answers back to the loop, so they work on asyncio and trio alike
and no caller has to stay to collect an answer (any cancellation just stops
its wait). Calls from the tasks of one event loop are *coalesced*: the first
caller's operation goes at once; calls that arrive while one is on its way
queue up and go together, in arrival order, in the next call (group commit).
So one caller alone pays one round trip and no added wait, and many callers
share round trips.

A caller that cannot be served at once waits in the store's queue. It
sleeps until the time the store foresaw, or until an answer (to any caller
of this process) or a message from another process (Redis pub/sub) says the
queue moved; then it looks again. A caller the store cannot give a time
(blocked by a cap's reservations, or behind the head) also looks on its own
now and then, so a wake-up lost between processes only delays it.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import logging
import math
import os
import queue
import threading
import time
import weakref
from asyncio import _get_running_loop as _running_loop
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.lowlevel

from .._clock import SYSTEM_CLOCK, Clock, wall_us
from .._decide import (
    CLAIMED,
    FAILED,
    GRANTED,
    WAITING,
    Crossing,
    Exceeded,
    Inexact,
    SlotView,
    TooLong,
)
from .._exceptions import StoreUnavailable
from .._plan import PlanSpec, plan_spec, spec_of
from .._waiters import Waiter
from . import _ops as ops
from ._base import Acquired, Binding, Call, Store

if TYPE_CHECKING:
    from asyncio import Future

    from .._limits import Cap, Rate

__all__ = ("RemoteBinding", "SharedStore")

logger: Final = logging.getLogger("ratebudget")

T = TypeVar("T")

_POLL_MIN: Final = 0.005  # s: a waiter with no time of its own looks again after this
_POLL_MAX: Final = 0.25  # s: ... doubling up to this
_SETTLED_KEPT_US: Final = 60_000_000  # a settled lease's record, for retries
_WORKER_IDLE: Final = 10.0  # s: a store worker thread this idle exits
_DEFERRED_KEPT: Final = 1024

# every waiter of this process, by (store url, name) and lease id: an answer
# to any caller, or a message from another process, wakes the ones it names
_registry: dict[tuple[str, str], weakref.WeakValueDictionary[str, Waiter]] = {}
_registry_lock = threading.Lock()

# store calls under way in this process (for tests that let fake time settle)
_busy = [0]


def busy() -> bool:
    """Whether any store call of this process is under way."""
    return _busy[0] > 0


def _waiters(url: str, name: str) -> weakref.WeakValueDictionary[str, Waiter]:
    with _registry_lock:
        got = _registry.get((url, name))
        if got is None:
            got = _registry[(url, name)] = weakref.WeakValueDictionary()
        return got


def wake(url: str, name: str, keys: list[str] | None) -> None:
    """Wake this process's waiters ``keys`` of ``name`` (``None``: all of them)."""
    waiters = _waiters(url, name)
    with _registry_lock:
        found = (
            list(waiters.values())
            if keys is None
            else [w for k in keys if (w := waiters.get(k)) is not None]
        )
    for w in found:
        w.deadline = None  # it looks now: its time may have changed
        w.wake()


class _Ticker:
    """One thread that wakes waiters at real times (their own look-again)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, weakref.ref[Waiter]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def after(self, delay: float, w: Waiter) -> None:
        with self._lock:
            heapq.heappush(
                self._heap, (time.monotonic() + delay, next(self._seq), weakref.ref(w))
            )
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="ratebudget-ticker", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap:
                    if not self._lock.wait(_WORKER_IDLE):
                        self._thread = None
                        return
                at, _, ref = self._heap[0]
                delay = at - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
                heapq.heappop(self._heap)
            w = ref()
            if w is not None and w.state == WAITING:
                w.wake()


_ticker = _Ticker()


# -- running calls: worker threads and coalescing ----------------------------------


class _Pending:
    """One op on its way, for one caller of one event loop."""

    __slots__ = ("abandoned", "call", "done", "error", "event", "now", "result")

    def __init__(self, call: _RemoteCall[Any]) -> None:
        self.call = call
        self.event: Any = None
        self.done = False
        self.abandoned = False
        self.result: Any = None
        self.now = 0
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
        self.pending: list[_Pending] = []
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


class _FutureEvent:
    """An event for one caller of an asyncio loop: a bare future."""

    __slots__ = ("fut",)

    def __init__(self, fut: Future[None]) -> None:
        self.fut = fut

    def set(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)

    def wait(self) -> Future[None]:
        return self.fut


def _event() -> Any:
    loop = _running_loop()
    if loop is not None:
        return _FutureEvent(loop.create_future())
    return anyio.Event()


class _RemoteCall(Call[T], Generic[T]):
    """One op for the store, and what its answer means to the caller."""

    __slots__ = ("binding", "finish", "key", "leave", "op", "unavailable")

    def __init__(
        self,
        binding: RemoteBinding,
        op: ops.Op,
        finish: Callable[[ops.Result, int], T],
        unavailable: Callable[[StoreUnavailable], T] | None = None,
        leave: Callable[[ops.Result], ops.Op | None] | None = None,
        key: str = "",
    ) -> None:
        self.binding = binding
        self.op = op
        self.finish = finish  # the answer, given the store's time
        self.unavailable = unavailable  # fail open: what to answer instead
        self.leave = leave  # its caller left: what to send when it lands
        self.key = key

    def __await__(self) -> Generator[Any, None, T]:
        return self.binding._run(self).__await__()

    def wait(self) -> T:
        b = self.binding
        try:
            answer = b.execute([self.op])
        except StoreUnavailable as e:
            if self.unavailable is None or not b.fail_open:
                raise
            b.unmetered(e, self.op)
            return self.unavailable(e)
        return self.finish(answer.results[0], answer.now)


class SharedStore(Store):
    """A store shared by processes: every operation is a batch of ops run
    atomically where the state lives (``execute``)."""

    persistent = True

    def bind(
        self,
        name: str | None,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        lease_ttl: float,
        on_store_error: str,
    ) -> RemoteBinding:
        assert name is not None
        return RemoteBinding(self, name, limits, clock, lease_ttl, on_store_error)

    def validate(self, spec: PlanSpec) -> None:
        """Refuse a plan this store cannot count exactly (``InvalidRequest``)."""

    def check(self, spec: PlanSpec, amounts: tuple[int, ...]) -> None:
        """Refuse amounts this store cannot count exactly (``InvalidRequest``)."""

    @abc.abstractmethod
    def register(self, name: str, spec: dict[str, Any]) -> list[str]:
        """Note limiter ``name`` and its limits (for ``ratebudget status``).

        Returns warnings to log once (a Redis without persistence, say).
        """

    @abc.abstractmethod
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
        """Run ``batch`` atomically, in order (blocking); raise
        ``StoreUnavailable`` when the store cannot be reached in time.

        ``now_us`` overrides the store's clock (tests with a fake clock);
        ``ttl`` is the lease TTL and ``keep`` how long settled records stay (µs).
        """

    def subscribe(self, name: str) -> bool:
        """Relay other processes' wake-ups of ``name`` to this process's
        waiters (``wake``); returns whether the store can."""
        return False


class RemoteBinding(Binding):
    """One limiter on a shared store."""

    def __init__(
        self,
        store: SharedStore,
        name: str,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        lease_ttl: float,
        on_store_error: str,
    ) -> None:
        self.store = store
        self.name = name
        self.limits = limits
        self.tick_ns = 1000
        self.spec = plan_spec(limits, 1000)
        store.validate(self.spec)
        self.clock = clock
        self.fake_time = clock is not SYSTEM_CLOCK
        self.wall_us = wall_us(clock)
        self.ttl = math.ceil(lease_ttl * 1e6)
        self.keep = min(self.ttl, _SETTLED_KEPT_US)
        self.fail_open = on_store_error == "allow"
        self._local = threading.local()
        self._registered = False
        self._reg_lock = threading.Lock()
        self._lock = threading.Lock()
        self._deferred: list[ops.Op] = []  # sent with the next store call
        self._waiters = _waiters(store.url, name)
        self._subscribed = False
        self.calls = 0  # store calls under way, from every thread

    # -- the store ----------------------------------------------------------

    def _register(self) -> None:
        if self._registered:
            return
        with self._reg_lock:
            if self._registered:
                return
            for warning in self.store.register(self.name, spec_of(self.limits)):
                logger.warning("ratebudget: %s", warning)
            self._registered = True

    def execute(self, batch: list[ops.Op]) -> ops.Answer:
        """Run ``batch`` in one store call, here (blocking).

        Deferred ops ride along, ahead of ``batch``; their results are dropped.
        """
        self._register()
        now = self.wall_us() if self.fake_time else None
        with self._lock:
            extra, self._deferred = self._deferred, []
        answer = self.store.execute(
            self.name,
            self.spec,
            extra + batch,
            ttl=self.ttl,
            keep=self.keep,
            now_us=now,
        )
        if answer.woken:
            wake(self.store.url, self.name, [w.key for w in answer.woken])
        if extra:
            return ops.Answer(answer.results[len(extra) :], answer.now, answer.woken)
        return answer

    def defer(self, op: ops.Op) -> None:
        """Send ``op`` with the next store call (no round trip of its own)."""
        with self._lock:
            # bounded: past that, a lease left unsettled expires after its TTL
            if len(self._deferred) < _DEFERRED_KEPT:
                self._deferred.append(op)

    def unmetered(self, e: StoreUnavailable, op: ops.Op) -> None:
        logger.error(
            "ratebudget: store %s unavailable, %s NOT METERED (on_store_error='allow'): %s",
            self.store.url,
            type(op).__name__.lower(),
            e,
        )

    def _batcher(self) -> _Batcher:
        b: _Batcher | None = getattr(self._local, "batcher", None)
        loop, soon = _loop_and_soon()
        if b is None or b.loop is not loop:
            # this thread's first call, or a new event loop in it
            b = self._local.batcher = _Batcher(loop, soon)
        return b

    async def _run(self, call: _RemoteCall[T]) -> T:
        """Run ``call``, coalesced with the other calls of this event loop."""
        self.calls += 1
        _busy[0] += 1
        try:
            return await self._run_batched(call)
        finally:
            self.calls -= 1
            _busy[0] -= 1

    async def _run_batched(self, call: _RemoteCall[T]) -> T:
        b = self._batcher()
        p = _Pending(call)
        p.event = event = _event()
        b.pending.append(p)
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
            if p.done:  # answered as it left
                if p.error is None and call.leave is not None:
                    follow = call.leave(p.result)
                    if follow is not None:
                        self.defer(follow)
            elif p in b.pending and call.leave is not None:
                b.pending.remove(p)  # not sent: it never happened
            else:  # on its way (or a settle, sent all the same)
                p.abandoned = True
            raise
        if p.error is not None:
            if isinstance(p.error, StoreUnavailable) and call.unavailable is not None:
                if self.fail_open:
                    self.unmetered(p.error, call.op)
                    return call.unavailable(p.error)
            raise p.error
        return call.finish(p.result, p.now)

    def _flush(self, b: _Batcher) -> None:
        """Send what is pending in one store call (in the loop's thread)."""
        batch, b.pending = b.pending, []
        if not batch:
            b.running = False
            return
        todo = [p.call.op for p in batch]
        self.calls += 1
        _busy[0] += 1

        def landed(answer: ops.Answer | None, error: BaseException | None) -> None:
            try:  # in the worker thread: hand the answers to the loop
                b.soon(lambda: self._deliver(b, batch, answer, error))
            except RuntimeError:  # the loop has closed: nobody is waiting
                pass

        b.worker.submit(lambda: self.execute(todo), landed)

    def _deliver(
        self,
        b: _Batcher,
        batch: list[_Pending],
        answer: ops.Answer | None,
        error: BaseException | None,
    ) -> None:
        """A store call came back: wake its callers, send what queued meanwhile."""
        self.calls -= 1
        _busy[0] -= 1
        if answer is None:
            for p in batch:
                p.error = (
                    error
                    if isinstance(error, Exception)
                    else StoreUnavailable(f"the store call was interrupted: {error!r}")
                )
        else:
            for p, r in zip(batch, answer.results, strict=True):
                p.result = r
                p.now = answer.now
                if p.abandoned and p.call.leave is not None:
                    # its caller left while the answer was on its way
                    follow = p.call.leave(r)
                    if follow is not None:
                        b.pending.append(_Pending(_RemoteCall(self, follow, _ignore)))
        for p in batch:
            p.done = True
            if p.event is not None:
                p.event.set()
        b.hot = len(batch) > 1
        if not b.pending:
            b.running = False
        elif b.hot:
            b.soon(lambda: self._flush(b))
        else:
            self._flush(b)

    def busy(self) -> bool:
        return self.calls > 0

    # -- waiters ------------------------------------------------------------

    def _queued(self, w: Waiter, deadline: int | None, store_now: int) -> int | None:
        """``w`` waits: when it sleeps until (ns), and its own look-again."""
        if deadline is None:
            # no time of its own: look again now and then, in real time,
            # doubling (a wake-up from another process may be lost)
            _ticker.after(min(w.backoff, _POLL_MAX), w)
            w.backoff *= 2
            w.deadline = None
            return w.timeout_at
        w.deadline = self.clock.monotonic_ns() + (deadline - store_now) * 1000
        return w.sleep_deadline()

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self.store.subscribe(self.name)

    # -- the operations -------------------------------------------------------

    def acquire(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> Call[Acquired]:
        self.store.check(self.spec, req)
        key = os.urandom(9).hex()
        timeout = None if timeout_ns is None else -(-timeout_ns // 1000)
        op = ops.Acquire(key, req, timeout, waiter is not None)

        def finish(r: ops.Result, now: int) -> Acquired:
            if isinstance(r, ops.Granted):
                return r.take
            if isinstance(r, ops.Queued):
                assert waiter is not None
                w = waiter()
                w.id, w.req = key, req
                w.timeout_at = (
                    None
                    if timeout_ns is None
                    else self.clock.monotonic_ns() + timeout_ns
                )
                self._waiters[key] = w
                self._subscribe()
                self._queued(w, r.deadline, now)
                w.arm()
                return w
            assert r is None or isinstance(r, (Exceeded, TooLong))
            return r

        def leave(r: ops.Result) -> ops.Op | None:
            if isinstance(r, (ops.Granted, ops.Queued)):
                return ops.Leave(key, req)
            return None

        return _RemoteCall(self, op, finish, _unmetered_grant, leave, key)

    def poll(self, w: Waiter) -> int | Call[int | None] | None:
        if w.state == GRANTED:
            w.state = CLAIMED
            return None
        if w.state != WAITING:
            return None

        def finish(r: ops.Result, now: int) -> int | None:
            if isinstance(r, ops.Granted):
                w.take, w.state = r.take, CLAIMED
                self._waiters.pop(w.id, None)
                return None
            if isinstance(r, ops.Queued):
                deadline = self._queued(w, r.deadline, now)
                w.arm()
                return deadline
            self._waiters.pop(w.id, None)
            if isinstance(r, (Exceeded, TooLong)):
                w.error, w.state = r, FAILED
                return None
            raise StoreUnavailable(
                f"the store {self.store.url} no longer knows a waiter of "
                f"{self.name!r}: its place in the queue was given up after "
                "lease_ttl without a look"
            )

        def unavailable(e: StoreUnavailable) -> int | None:
            w.take, w.id, w.state = 0, "", CLAIMED  # granted, unmetered
            return None

        def leave(r: ops.Result) -> ops.Op | None:
            if isinstance(r, (ops.Granted, ops.Queued)):
                return ops.Leave(w.id, w.req)
            return None

        return _RemoteCall(self, ops.Poll(w.id), finish, unavailable, leave)

    def abort(self, w: Waiter) -> None:
        self._waiters.pop(w.id, None)
        if w.id and w.state in (WAITING, GRANTED):
            w.state = CLAIMED
            self.defer(ops.Leave(w.id, w.req))
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Send the deferred ops without waiting for another call."""
        try:
            b = self._batcher()
        except Exception:  # no event loop: a thread; send it now, ignore failures
            try:
                self.execute([])
            except StoreUnavailable:
                pass
            return
        if not b.running:
            b.running = True
            self._flush_empty(b)

    def _flush_empty(self, b: _Batcher) -> None:
        b.pending.append(_Pending(_RemoteCall(self, ops.Snapshot(), _ignore)))
        self._flush(b)

    def settle(
        self,
        key: str,
        take: int,
        est: tuple[int, ...],
        actual: tuple[int, ...] | None,
    ) -> list[Crossing] | Inexact | Call[list[Crossing] | Inexact | None] | None:
        if not take:  # granted without the store (fail open)
            return []
        if actual is not None:
            self.store.check(self.spec, actual)

        def finish(r: ops.Result, now: int) -> list[Crossing] | Inexact | None:
            assert r is None or isinstance(r, (list, Inexact))
            return r

        return _RemoteCall(
            self, ops.Settle(key, take, est, actual), finish, lambda e: []
        )

    def record(self, req: tuple[int, ...]) -> Call[list[Crossing] | Exceeded | Inexact]:
        self.store.check(self.spec, req)

        def finish(r: ops.Result, now: int) -> list[Crossing] | Exceeded | Inexact:
            assert isinstance(r, (list, Exceeded, Inexact))
            return r

        return _RemoteCall(self, ops.Record(req), finish, lambda e: [])

    def snapshot(self) -> Call[tuple[tuple[SlotView, ...], int]]:
        def finish(r: ops.Result, now: int) -> tuple[tuple[SlotView, ...], int]:
            assert isinstance(r, tuple)
            return r

        return _RemoteCall(self, ops.Snapshot(), finish)

    def reset(self) -> Call[None]:
        return _RemoteCall(self, ops.Reset(), _ignore)

    def lower(self, slot: int, units: int) -> None:
        self.defer(ops.Lower(slot, units))

    def extend(self, key: str, ttl_ns: int | None) -> bool | Call[bool]:
        if not key:
            return True  # nothing in the store expires

        def finish(r: ops.Result, now: int) -> bool:
            return bool(r)

        ttl = None if ttl_ns is None else -(-ttl_ns // 1000)
        return _RemoteCall(self, ops.Extend(key, ttl), finish)


def _ignore(r: ops.Result, now: int) -> None:
    return None


def _unmetered_grant(e: StoreUnavailable) -> Acquired:
    return 0  # granted without the store: the lease is "unmetered"
