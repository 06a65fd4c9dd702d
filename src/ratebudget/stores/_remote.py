"""The client side of a shared store (SQLite, Redis): ``SharedStore`` and its
``RemoteBinding``.

Every decision is one store call (one transaction, one script), coalesced
with the other calls of the event loop (``_calls.py``). A caller that
cannot be served at once waits in the store's queue. It sleeps until the
time the store foresaw, or until an answer (to any caller of this process)
or a message from another process (Redis pub/sub) says the queue moved;
then it looks again. A caller the store cannot give a time (blocked by a
cap's reservations, or behind the head) also looks on its own now and then,
so a wake-up lost between processes only delays it.
"""

from __future__ import annotations

import abc
import heapq
import itertools
import json
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._clock import SYSTEM_CLOCK, Clock, wall_us
from .._decide import (
    CLAIMED,
    FAILED,
    GRANTED,
    WAITING,
    Crossing,
    Exceeded,
    Inexact,
    Shadowed,
    SlotView,
    TooLong,
)
from .._exceptions import InvalidRequest, StoreUnavailable
from .._ids import new_id
from .._plan import PlanSpec, limits_of, plan_spec, spec_of
from .._waiters import Waiter
from . import _ops as ops
from ._base import _LIVE_LOCK, Acquired, Binding, Call, Store, redact
from ._calls import Coalescer, RemoteCall

if TYPE_CHECKING:
    from .._limits import Cap, Rate

__all__ = ("RemoteBinding", "SharedStore")

logger: Final = logging.getLogger("ratebudget")

T = TypeVar("T")

_POLL_MAX: Final = 0.25  # s: the longest a waiter with no time goes without a look
_LOOK_AGAIN_NS: Final = 1_000_000_000  # the longest a waiter told a time sleeps
_SETTLED_KEPT_US: Final = 60_000_000  # a settled lease's record, for retries
_TICKER_IDLE: Final = 10.0  # s: the look-again thread this idle exits
_DEFERRED_KEPT: Final = 1024

# every waiter of this process, by (store url, name) and lease id: an answer
# to any caller, or a message from another process, wakes the ones it names
_registry: dict[tuple[str, str], weakref.WeakValueDictionary[str, Waiter]] = {}
_registry_lock = threading.Lock()


def _waiters(url: str, name: str) -> weakref.WeakValueDictionary[str, Waiter]:
    with _registry_lock:
        got = _registry.get((url, name))
        if got is None:
            got = _registry[(url, name)] = weakref.WeakValueDictionary()
        return got


def wake(url: str, name: str, keys: list[str] | None) -> None:
    """Wake this process's waiters ``keys`` of ``name`` (``None``: all of them)."""
    with _registry_lock:
        waiters = _registry.get((url, name))
        if waiters is None:
            return  # nobody of this process ever waited on it
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
                    if not self._lock.wait(_TICKER_IDLE):
                        self._thread = None
                        return
                at, _, ref = self._heap[0]
                delay = at - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
                heapq.heappop(self._heap)
            w = ref()
            # a waiter that has since been given a time of its own sleeps on
            if w is not None and w.state == WAITING and w.deadline is None:
                w.wake()


_ticker = _Ticker()


# -- running calls: worker threads and coalescing ----------------------------------


class SharedStore(Store):
    """A store shared by processes: every operation is a batch of ops run
    atomically where the state lives (``execute``)."""

    persistent = True
    #: whether it runs batches down a path of scopes (``execute_path``)
    scopes = False

    def bind(
        self,
        name: str | None,
        limits: tuple[Rate | Cap, ...],
        clock: Clock,
        lease_ttl: float,
        on_store_error: str,
        shadow: bool = False,
        parent: Binding | None = None,
        keyed: bool = False,
    ) -> RemoteBinding:
        assert name is not None
        if parent is not None:
            if not self.scopes:
                raise InvalidRequest(
                    f"scopes (Limiter.child, per_key) are not available on "
                    f"{redact(self.url)} yet, only on the memory and SQLite "
                    "stores (issue 12); until then, nest limiters of their own names"
                )
            if not isinstance(parent, RemoteBinding) or parent.store is not self:
                raise TypeError(f"{parent!r} is not a binding of {self!r}")
        return RemoteBinding(
            self, name, limits, clock, lease_ttl, on_store_error, shadow, parent, keyed
        )

    # -- live limits --------------------------------------------------------
    #: how often (s) a process looks for live limits other processes set;
    #: ``None``: the store tells its listener (Redis), so it looks only once
    live_every: float | None = 1.0
    _live_at = 0.0  # time.monotonic() of the next look (0: never looked yet)
    _live_seen = -1  # the store's revision of what ``live`` holds
    _live_raw: Mapping[str, str] = MappingProxyType({})

    def read_live(self) -> tuple[int, dict[str, str]]:
        """The store's revision of its live limits and each name's (JSON)."""
        return 0, {}

    def write_live(self, name: str, raw: str | None) -> None:
        """Store ``raw`` (JSON, ``None``: none) as ``name``'s live limits, in
        a new revision, and tell the other processes where the store can."""
        raise InvalidRequest(f"{redact(self.url)} cannot keep live limits")

    def set_live(self, key: object, limits: tuple[Rate | Cap, ...] | None) -> None:
        assert isinstance(key, str)  # a shared store's limiters have names
        raw = None if limits is None else json.dumps(spec_of(limits), sort_keys=True)
        self.write_live(key, raw)
        self.load_live()

    def load_live(self) -> None:
        """Read the live limits from the store (blocking)."""
        rev, raw = self.read_live()
        every = self.live_every
        self._live_at = math.inf if every is None else time.monotonic() + every
        with _LIVE_LOCK:
            if rev <= self._live_seen or raw == self._live_raw:
                self._live_seen = max(rev, self._live_seen)
                return
            live: dict[object, tuple[Rate | Cap, ...]] = {}
            for name, text in raw.items():
                try:
                    live[name] = limits_of(json.loads(text))
                except (ValueError, TypeError, KeyError, AttributeError) as e:
                    logger.warning(
                        "ratebudget: the live limits of %r on %s cannot be read "
                        "(%s); its limiters keep the limits in their code",
                        name,
                        redact(self.url),
                        e,
                    )
            self._live_seen = rev
            self._live_raw = raw
            self.live = live
            self.live_rev += 1

    def live_due(self) -> None:
        """Look for live limits if it is time (errors: at the next look)."""
        if time.monotonic() >= self._live_at:
            try:
                self.load_live()
            except StoreUnavailable:
                pass  # the operation that follows says so, if it matters

    def validate(self, spec: PlanSpec) -> None:
        """Refuse a plan this store cannot count exactly (``InvalidRequest``)."""

    def check(self, spec: PlanSpec, amounts: tuple[int, ...]) -> None:
        """Refuse amounts this store cannot count exactly (``InvalidRequest``)."""

    def most(self, spec: PlanSpec) -> int | None:
        """The largest amount that ``check`` passes in every slot of ``spec``
        (``None``: any), for a quick look before it."""
        return None

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
        """``execute`` down a path of scopes: the states of ``names`` (a
        scope's, then each ancestor's) in one atomic call (``_path_ops``);
        ``root``: the tree's root, if ``names`` stops short of it."""
        raise NotImplementedError  # pragma: no cover - ``scopes`` is False

    def send(
        self,
        name: str,
        spec: PlanSpec,
        batch: list[ops.Op],
        done: Callable[[ops.Answer | None, BaseException | None], None],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
    ) -> bool:
        """Like ``execute``, but without blocking, from the running event
        loop: ``done(answer, error)`` runs in the loop when it lands. Returns
        ``False`` if it cannot here (a worker thread then runs ``execute``)."""
        return False

    def send_path(
        self,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        done: Callable[[ops.Answer | None, BaseException | None], None],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
    ) -> bool:
        """``send`` down a path of scopes (as ``execute_path``)."""
        return False

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
        shadow: bool = False,
        parent: RemoteBinding | None = None,
        keyed: bool = False,
    ) -> None:
        self.store = store
        self.keyed = keyed  # a per-key scope: not in the store's registry
        self.name = name
        self.limits = limits
        self.tick_ns = 1000
        self.spec = plan_spec(limits, 1000, shadow)
        # a scope's path: its name and plan, then each ancestor's
        self.names = [name]
        self.specs = [self.spec]
        self.bounds = [(0, len(self.spec.slots))]
        self.root = name  # waiters of a tree wake by the root's name
        if parent is not None:
            n = len(self.spec.slots)
            self.names += parent.names
            self.specs += parent.specs
            self.bounds += [(a + n, b + n) for a, b in parent.bounds]
            self.root = parent.root
        self.path = parent is not None
        self.parent = parent
        # what a store call names: a scope's whole path (``execute_path``),
        # a root's state alone (``execute``)
        self.where: tuple[Any, Any] = (
            (self.names, self.specs) if self.path else (name, self.spec)
        )
        # a waiter down a path: where it waits and what it holds below
        self._climbs: dict[str, ops.PathQueued] = {}
        self.on_shadow: Callable[[list[Shadowed]], None] | None = None
        store.validate(self.spec)
        # amounts up to this pass ``store.check`` at every level (None: any)
        most = [m for m in map(store.most, self.specs) if m is not None]
        self._most = min(most) if most else None
        self.clock = clock
        self.fake_time = clock is not SYSTEM_CLOCK
        self.wall_us = wall_us(clock)
        self.ttl = math.ceil(lease_ttl * 1e6)
        self.keep = min(self.ttl, _SETTLED_KEPT_US)
        self.fail_open = on_store_error == "allow"
        self._registered = False
        self._reg_lock = threading.Lock()
        self._lock = threading.Lock()
        self._deferred: list[ops.Op] = []  # sent with the next store call
        # leases dropped unsettled (appended by ``__del__``, without a lock)
        self._dropped: deque[ops.Op] = deque(maxlen=_DEFERRED_KEPT)
        self._waiters = _waiters(store.url, self.root)
        self._subscribed = False
        self.calls = Coalescer(self.execute, self.defer, self._fail_open, self.send)
        # listen for other processes' wake-ups from the start: one sent while
        # a listener starts is lost (it then has every waiter look once)
        self._subscribe()

    # -- the store ----------------------------------------------------------

    def _register(self) -> None:
        if self._registered:
            return
        if self.parent is not None:  # its ancestors too: each shows in status
            self.parent._register()
        if self.keyed:  # listed by its state instead (``keys_of``)
            self._registered = True
            return
        with self._reg_lock:
            if self._registered:
                return
            spec = spec_of(self.limits)
            if self.path:  # a scope: where its state lives (Redis: the root's slot)
                spec["root"] = self.root
            for warning in self.store.register(self.name, spec):
                logger.warning("ratebudget: %s", warning)
            self._registered = True

    def execute(self, batch: list[ops.Op]) -> ops.Answer:
        """Run ``batch`` in one store call, here (blocking).

        Deferred ops ride along, ahead of ``batch``; their results are dropped.
        """
        self._register()
        self.store.live_due()
        local = self.clock.monotonic_ns()  # the instant the store's ``now`` pairs with
        now = self.wall_us() if self.fake_time else None
        extra = self._take_deferred()
        run = self.store.execute_path if self.path else self.store.execute
        answer = run(
            *self.where, extra + batch, ttl=self.ttl, keep=self.keep, now_us=now
        )
        return self._landed(extra, batch, answer, local)

    def send(
        self,
        batch: list[ops.Op],
        done: Callable[[ops.Answer | None, BaseException | None], None],
    ) -> bool:
        """Send ``batch`` from the event loop, without blocking, if the store
        can (``SharedStore.send``); ``done`` runs in the loop when it lands."""
        if not self._registered:
            return False  # the first call registers, on the worker thread
        local = self.clock.monotonic_ns()
        now = self.wall_us() if self.fake_time else None
        extra = self._take_deferred()

        def landed(answer: ops.Answer | None, error: BaseException | None) -> None:
            if answer is not None:
                try:
                    answer = self._landed(extra, batch, answer, local)
                except StoreUnavailable as e:
                    answer, error = None, e
            done(answer, error)

        send = self.store.send_path if self.path else self.store.send
        sent = send(
            *self.where, extra + batch, landed, ttl=self.ttl, keep=self.keep, now_us=now
        )
        if not sent:
            with self._lock:  # they go with the worker thread's call instead
                self._deferred[:0] = extra
        return sent

    def _landed(
        self, extra: list[ops.Op], batch: list[ops.Op], answer: ops.Answer, local: int
    ) -> ops.Answer:
        """A store call's answer: checked, its woken waiters woken, the
        results of ``batch`` alone."""
        if len(answer.results) != len(extra) + len(batch):
            raise StoreUnavailable(
                f"the store {self.store.url} answered {len(answer.results)} of "
                f"{len(extra) + len(batch)} operations on {self.name!r}"
            )
        if answer.woken:
            wake(self.store.url, self.root, [w.key for w in answer.woken])
        if answer.shadowed and self.on_shadow is not None:
            self.on_shadow(answer.shadowed)
        return ops.Answer(answer.results[len(extra) :], answer.now, answer.woken, local)

    def _take_deferred(self) -> list[ops.Op]:
        """The deferred ops, to send now (one deferred meanwhile goes next)."""
        if not self._deferred and not self._dropped:  # the common case: no lock
            return []
        with self._lock:
            extra, self._deferred = self._deferred, []
        dropped = self._dropped
        while dropped:
            try:
                extra.append(dropped.popleft())
            except IndexError:  # pragma: no cover - another thread took it
                break
        return extra

    def drop(self, key: str, take: int, est: tuple[int, ...]) -> None:
        if take:  # a lease granted without the store (fail open) holds nothing
            self._dropped.append(ops.Settle(key, take, est, None))

    def defer(self, op: ops.Op) -> None:
        """Send ``op`` with the next store call (no round trip of its own)."""
        with self._lock:
            # bounded: past that, a lease left unsettled expires after its TTL
            if len(self._deferred) < _DEFERRED_KEPT:
                self._deferred.append(op)

    def _fail_open(self, e: StoreUnavailable, op: ops.Op) -> bool:
        """Whether to go on without the store (``on_store_error="allow"``)."""
        if not self.fail_open:
            return False
        logger.error(
            "ratebudget: store %s unavailable, %s NOT METERED (on_store_error='allow'): %s",
            self.store.url,
            type(op).__name__.lower(),
            e,
        )
        return True

    def busy(self) -> bool:
        return bool(self.calls.calls)

    # -- waiters ------------------------------------------------------------

    def _queued(
        self, w: Waiter, deadline: int | None, answer: ops.Answer
    ) -> int | None:
        """``w`` waits: when it sleeps until (ns), and its own look-again."""
        if deadline is None:
            # no time of its own: look again now and then, in real time,
            # doubling (a wake-up from another process may be lost)
            _ticker.after(min(w.backoff, _POLL_MAX), w)
            w.backoff *= 2
            w.deadline = None
            return w.timeout_at
        w.deadline = answer.local + (deadline - answer.now) * 1000
        if not self.fake_time:
            # a cap-blocked head is told the first lease expiry, but another
            # process's commit may serve it long before, and its wake-up may
            # never come (SQLite relays none; Redis' pub/sub drops what is
            # sent while a listener starts or reconnects): a wait longer
            # than _LOOK_AGAIN_NS looks again after it (a rate's wait, usually
            # shorter, is left alone; a fake clock's tests run in one
            # process, woken by its own calls)
            soon = answer.local + _LOOK_AGAIN_NS
            if soon < w.deadline:
                w.deadline = soon
        return w.sleep_deadline()

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self.store.subscribe(self.root)

    # -- the operations -------------------------------------------------------

    def acquire(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> Call[Acquired]:
        self._check(req)
        key = new_id()
        timeout = None if timeout_ns is None else -(-timeout_ns // 1000)
        op = ops.Acquire(key, req, timeout, waiter is not None)
        w: Waiter | None = None
        if waiter is not None:
            # armed and findable before the call leaves: once the store has
            # queued it, another caller may move the queue and wake it before
            # this call's answer is read, and that wake-up must not be lost
            w = waiter()
            w.id, w.req = key, req
            w.arm()
            self._waiters[key] = w

        def finish(r: ops.Result, answer: ops.Answer) -> Acquired:
            if isinstance(r, ops.PathQueued):
                self._climbs[key] = r
            if isinstance(r, (ops.Queued, ops.PathQueued)):
                assert w is not None
                w.timeout_at = None if timeout_ns is None else answer.local + timeout_ns
                self._subscribe()  # other processes' wake-ups, from now on
                self._queued(w, r.deadline, answer)
                return w
            self._waiters.pop(key, None)
            if isinstance(r, ops.Granted):
                return r.take
            assert r is None or isinstance(r, (Exceeded, TooLong))
            return r

        def leave(r: ops.Result) -> ops.Op | None:
            self._waiters.pop(key, None)
            return self._leave_op(key, req, r)

        def unavailable(e: StoreUnavailable) -> Acquired:
            self._waiters.pop(key, None)
            return _unmetered_grant(e)

        return RemoteCall(self.calls, op, finish, unavailable, leave, key)

    def poll(self, w: Waiter) -> int | Call[int | None] | None:
        if w.state == GRANTED:
            w.state = CLAIMED
            return None
        if w.state != WAITING:
            return None

        w.arm()  # before the look leaves: a wake-up meanwhile means look again

        def finish(r: ops.Result, answer: ops.Answer) -> int | None:
            if isinstance(r, ops.PathQueued):
                self._climbs[w.id] = r
            else:
                self._climbs.pop(w.id, None)
            if isinstance(r, ops.Granted):
                w.take, w.state = r.take, CLAIMED
                self._waiters.pop(w.id, None)
                return None
            if isinstance(r, (ops.Queued, ops.PathQueued)):
                return self._queued(w, r.deadline, answer)
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
            self._climbs.pop(w.id, None)
            w.take, w.id, w.state = 0, "", CLAIMED  # granted, unmetered
            return None

        def leave(r: ops.Result) -> ops.Op | None:
            return self._leave_op(w.id, w.req, r)

        return RemoteCall(self.calls, self._look(w), finish, unavailable, leave)

    def _look(self, w: Waiter) -> ops.Op:
        """The op of a waiter's look (down a path: where it waits)."""
        at = self._climbs.get(w.id)
        if at is None:
            return ops.Poll(w.id)
        return ops.PathPoll(w.id, w.req, at.at, at.takes, at.timeout_at)

    def _leave_op(self, key: str, req: tuple[int, ...], r: ops.Result) -> ops.Op | None:
        """What gives back what a caller that left (cancelled) was granted
        or holds while waiting (``r``: the answer it did not take)."""
        if isinstance(r, ops.PathQueued):
            self._climbs.pop(key, None)
            return ops.PathLeave(key, req, r.at, r.takes)
        if isinstance(r, ops.Granted) and self.path:
            return ops.PathLeave(key, req, len(self.names), self._takes(r.take))
        if isinstance(r, (ops.Granted, ops.Queued)):
            return ops.Leave(key, req)
        return None

    def _takes(self, take: int) -> tuple[int, ...]:
        from ._path_ops import unpack

        return tuple(unpack(take, len(self.names)))

    def _check(self, req: tuple[int, ...]) -> None:
        """Refuse amounts the store cannot count exactly (each level's)."""
        most = self._most
        if most is None or max(req, default=0) <= most:
            return
        for spec, (a, b) in zip(self.specs, self.bounds, strict=True):
            self.store.check(spec, req[a:b])

    def abort(self, w: Waiter) -> None:
        self._waiters.pop(w.id, None)
        if w.id and w.state in (WAITING, GRANTED):
            w.state = CLAIMED
            at = self._climbs.pop(w.id, None)
            self.defer(
                ops.Leave(w.id, w.req)
                if at is None
                else ops.PathLeave(w.id, w.req, at.at, at.takes)
            )
            self.calls.flush_soon()

    def settle(
        self,
        key: str,
        take: int,
        est: tuple[int, ...],
        actual: tuple[int, ...] | None,
        book: ops.Book | None = None,
    ) -> list[Crossing] | Inexact | Call[list[Crossing] | Inexact | None] | None:
        if not take:  # granted without the store (fail open)
            return []
        if actual is not None:
            self._check(actual)

        def finish(
            r: ops.Result, answer: ops.Answer
        ) -> list[Crossing] | Inexact | None:
            assert r is None or isinstance(r, (list, Inexact))
            return r

        return RemoteCall(
            self.calls, ops.Settle(key, take, est, actual, book), finish, lambda e: []
        )

    def record(
        self, req: tuple[int, ...], book: ops.Book | None = None
    ) -> Call[list[Crossing] | Exceeded | Inexact]:
        self._check(req)

        def finish(
            r: ops.Result, answer: ops.Answer
        ) -> list[Crossing] | Exceeded | Inexact:
            assert isinstance(r, (list, Exceeded, Inexact))
            return r

        return RemoteCall(self.calls, ops.Record(req, book), finish, lambda e: [])

    def snapshot(self) -> Call[tuple[tuple[SlotView, ...], int]]:
        def finish(
            r: ops.Result, answer: ops.Answer
        ) -> tuple[tuple[SlotView, ...], int]:
            assert isinstance(r, tuple)
            return r

        return RemoteCall(self.calls, ops.Snapshot(), finish)

    def reset(self) -> Call[None]:
        return RemoteCall(self.calls, ops.Reset(), _ignore)

    def lower(self, slot: int, units: int) -> None:
        self.defer(ops.Lower(slot, units))

    def extend(self, key: str, ttl_ns: int | None) -> bool | Call[bool]:
        if not key:
            return True  # nothing in the store expires

        def finish(r: ops.Result, answer: ops.Answer) -> bool:
            return bool(r)

        ttl = None if ttl_ns is None else -(-ttl_ns // 1000)
        return RemoteCall(self.calls, ops.Extend(key, ttl), finish)


def _ignore(r: ops.Result, answer: ops.Answer) -> None:
    return None


def _unmetered_grant(e: StoreUnavailable) -> Acquired:
    return 0  # granted without the store: the lease is "unmetered"
