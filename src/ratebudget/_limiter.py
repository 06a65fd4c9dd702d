"""``Limiter``: validate, one store call, sleep on the answer (``Lease``,
in ``_lease.py``, is what an acquisition holds).

The limiter never asks which store it has: every operation goes through its
``Binding`` (``stores/_base.py``), whose answer is either at hand (the memory
store decides inline, without yielding) or a ``Call`` to await.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

import anyio
import anyio.lowlevel

from . import _telemetry as telemetry
from ._alerts import AlertHandler, Dispatch, handlers_of
from ._amounts import STANDARD_AXES, Amount, from_units, to_units
from ._clock import SYSTEM_CLOCK, Clock, wall_us
from ._decide import CLAIMED, FAILED, Crossing, Exceeded, Inexact, TooLong
from ._exceptions import InvalidRequest
from ._forecast import needs_history, with_forecasts
from ._ids import new_id
from ._lease import (
    _ACTIVE,
    _MAX_SECONDS,
    _PENDING,
    Lease,
    _answer,
    _caller,
    _HeldLease,
    _RateLease,
    _WatchedLease,
    new_lease,
    seconds,
)
from ._ledger import Ledger, ledger_of
from ._ledger_db import labels_text
from ._limits import Cap, Rate
from ._plan import RateSpec, plan_spec
from ._runaway import Runaway, Watch
from ._scope import EMPTY_LABELS, labels_of
from ._snapshot import (
    Snapshot,
    snapshot_of,
)
from ._telling import Telling
from ._waiters import TaskWaiter, Waiter
from .stores._base import Binding, Call, Store
from .stores._ops import Book

if TYPE_CHECKING:
    from ._keys import Keys
    from ._sync import SyncLimiter
    from .integrations.meter import Meter

__all__ = ("AlertHandler", "Lease", "Limiter")

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

_new: Final = object.__new__

_FAST_KEPT: Final = 1024  # token counts whose request tuple is cached


def _check_limits(limits: tuple[object, ...]) -> None:
    for limit in limits:
        if not isinstance(limit, (Rate, Cap)):
            raise InvalidRequest(f"Limiter() takes Rate and Cap objects, not {limit!r}")


def _segment(name: object, what: str) -> str:
    """``name`` if it is one segment of a scope's name (DESIGN §6)."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 200
        or "/" in name
        or not name.isprintable()
    ):
        raise InvalidRequest(
            f"{what} {name!r:.60}: expected a non-empty string of at most 200 "
            "printable characters without '/'"
        )
    return name


def _scoped(
    parent: Limiter,
    name: str,
    limits: tuple[Rate | Cap, ...],
    handlers: tuple[AlertHandler, ...],
    keyed: bool = False,
    runaway: Runaway | None = None,
) -> Limiter:
    """The child scope ``name`` (its full name) of ``parent``."""
    parent._now()  # its path as it is now
    self = _new(Limiter)
    self._watch = None if runaway is None else Watch(runaway, name, 0)
    telemetry.LIMITERS.add(self)
    self._code = limits
    self._keyed = keyed
    self._clock = parent._clock
    self._wall = parent._wall
    self._dispatch = Dispatch(handlers) if handlers else None
    self._name = name
    self._store = parent._store
    self._opts = parent._opts
    self._shadow = parent._shadow
    self._ledger = parent._ledger
    self._booked = parent._booked
    self._foreseen = set()
    self._parent = parent
    self._bind(None)
    self._watching()
    self._forecasting()
    return self


async def _set_live(
    store: Store, key: object, live: tuple[Rate | Cap, ...] | None
) -> None:
    """Store ``live`` as ``key``'s live limits (a shared store: off the event loop)."""
    if store.persistent:
        await anyio.to_thread.run_sync(store.set_live, key, live)
    else:
        store.set_live(key, live)


def _check_clock(clock: object) -> Clock:
    needs = ("monotonic_ns", "time", "sleep_until", "wait", "wait_until")
    missing = [n for n in needs if not callable(getattr(clock, n, None))]
    if missing:
        raise InvalidRequest(
            f"clock={clock!r} is not a Clock: it lacks {', '.join(missing)} "
            "(use ratebudget.SystemClock() or ratebudget.testing.FakeClock())"
        )
    return clock  # type: ignore[return-value]


class Limiter(Telling):
    """A set of rates and caps enforced together.

    ``Limiter(Rate(tokens=90_000, per="minute"), Cap(usd="25", per="day"))``.
    ``store`` (a URL or a store object) holds the state: this process's
    memory by default; limiters of one ``name`` on one store share it.
    ``clock`` is for tests (``ratebudget.testing.FakeClock``); ``on_alert`` a
    plain or async callable that receives each ``Alert`` (or a list of them,
    each called in turn: ``ratebudget.alerts.Webhook(url)`` is one);
    ``shadow=True`` makes hard caps report what they would refuse instead of
    refusing it; ``ledger`` (a URL, ``sqlite:///usage.db`` or
    ``postgresql://...``, a ``Ledger``, or ``True``: a SQLite store's own
    file) gets a row for every lease it and its scopes settle. One limiter
    may be shared by the tasks of one event loop,
    by threads each running their own loop, and by plain threads through
    ``limiter.sync``.
    """

    __slots__ = (
        "__weakref__",  # integrations keep per-limiter state in weak maps
        "_axes",
        "_b",
        "_booked",
        "_caps",
        "_clock",
        "_code",
        "_dispatch",
        "_fast",
        "_foreseen",
        "_grab",
        "_index",
        "_keyed",
        "_lay",
        "_lease",
        "_ledger",
        "_limits",
        "_n",
        "_name",
        "_opts",
        "_own",
        "_parent",
        "_pers",
        "_rev",
        "_routes",
        "_routes_up",
        "_scopes",
        "_seen",
        "_settles",
        "_shadow",
        "_store",
        "_sync",
        "_task_waiter",
        "_up",
        "_usd",
        "_wall",
        "_watch",
        "_watches",
    )

    def __init__(
        self,
        *limits: Rate | Cap,
        store: str | Store | None = None,
        name: str | None = None,
        lease_ttl: float = 600.0,
        on_store_error: str = "raise",
        clock: Clock | None = None,
        on_alert: AlertHandler | Sequence[AlertHandler] | None = None,
        shadow: bool = False,
        ledger: str | Ledger | bool | None = None,
        runaway: Runaway | None = None,
    ) -> None:
        _check_limits(limits)
        if runaway is not None and not isinstance(runaway, Runaway):
            raise InvalidRequest(f"runaway={runaway!r}: expected a Runaway(...)")
        handlers = handlers_of(on_alert)
        if not isinstance(shadow, bool):
            raise InvalidRequest(f"shadow={shadow!r}: expected True or False")
        if name is not None and (
            not isinstance(name, str)
            or not name
            or len(name) > 200
            or not all(c.isalnum() or c in "-_.:/@" for c in name)
        ):
            raise InvalidRequest(
                f"name={name!r}: use up to 200 letters, digits and - _ . : / @"
            )
        ttl = seconds("lease_ttl", lease_ttl, zero=False)
        if math.isinf(ttl):
            raise InvalidRequest(
                f"lease_ttl={lease_ttl!r:.40}: at most {_MAX_SECONDS:g} seconds; "
                "an unsettled lease must come back some day"
            )
        if on_store_error not in ("raise", "allow"):
            raise InvalidRequest(
                f"on_store_error={on_store_error!r}: use 'raise' (fail closed) "
                "or 'allow' (fail open)"
            )
        self._limits = limits
        self._clock: Clock = SYSTEM_CLOCK if clock is None else _check_clock(clock)
        self._wall = wall_us(self._clock)  # its wall clock in µs (ledger rows)
        self._dispatch = Dispatch(handlers) if handlers else None
        self._name = name
        from .stores import MemoryStore, open_store

        if store is None:
            resolved: Store = MemoryStore()
        elif isinstance(store, str):
            resolved = open_store(store)
        elif isinstance(store, Store):
            resolved = store
        else:
            raise InvalidRequest(f"store={store!r}: expected a URL or a store object")
        if resolved.persistent and name is None:
            raise InvalidRequest(
                f"a shared store ({resolved.url}) needs name=: limiters of "
                "one name share their state, in every process"
            )
        self._store = resolved
        self._opts = (ttl, on_store_error)
        self._shadow = shadow
        if ledger is True:  # the store's own (a SQLite store's file)
            ledger = resolved.ledger()
        self._ledger = ledger_of(None if ledger is False else ledger)
        # its store writes the ledger's rows, each in the transaction of its
        # operation; else the ledger's own thread does
        self._booked = self._ledger is not None and resolved.books(self._ledger, name)
        self._parent: Limiter | None = None
        self._foreseen: set[str] = set()  # forecast alerts fired (their ids)
        self._watch = None if runaway is None else Watch(runaway, name, 0)
        self._code = limits
        self._keyed = False
        self._bind(None)
        self._watching()
        self._forecasting()
        telemetry.LIMITERS.add(self)

    def _live_key(self) -> object:
        """Its key in the store's live limits: its name (an unnamed limiter:
        itself, as its state is its own)."""
        return self if self._name is None else self._name

    def _keys_key(self) -> object:
        """The key of the live limits of its per-key scopes' template: its
        name and a ``/`` (no scope's name ends so)."""
        return (self, "/") if self._name is None else self._name + "/"

    def _in_force(self) -> tuple[Rate | Cap, ...]:
        """Its own limits now: those ``update`` stored for it, else (a
        per-key scope) those stored for its template, else its code's."""
        live = self._store.live
        own = live.get(self._live_key())
        if own is None and self._keyed:
            assert self._parent is not None
            own = live.get(self._parent._keys_key())
        return self._code if own is None else own

    def _bind(self, old: Binding | None) -> None:
        """Bind to the store with the limits in force: those ``update``
        stored for its name, else its code's (``old``: the binding to
        replace, whose state it keeps)."""
        store = self._store
        store.live_due()
        self._rev = store.live_rev  # read before ``live``: a change between is seen
        own = self._in_force()
        parent = self._parent
        up = None if parent is None else parent._b
        ttl, on_store_error = self._opts
        if old is not None and self._name is None:  # a private state: kept
            b = old.rebound(own, self._shadow)
        else:  # a name's state, wherever it is
            b = store.bind(
                self._name,
                own,
                self._clock,
                ttl,
                on_store_error,
                shadow=self._shadow,
                parent=up,
                keyed=self._keyed,
            )
        self._b: Binding = b
        self._up = up
        self._setup(own)
        if self._shadow:
            b.on_shadow = self._lay._on_shadow

    def _refresh(self) -> None:
        """The store's live limits changed (``update``, here or in another
        process): take the ones in force now, and the path of a parent
        that changed. Leases already made keep the limits they were made
        with (``_lay``)."""
        parent = self._parent
        if parent is not None:
            parent._now()
        rev = self._store.live_rev
        own = self._in_force()
        if own != self._limits[: self._own] or (
            parent is not None and self._up is not parent._b
        ):
            self._bind(self._b)
        else:
            self._rev = rev

    def _now(self) -> Limiter:
        """Its limits now (the copy ``_lay``), once the store's live limits
        were taken: read it once per operation, so that another thread's
        refresh cannot mix two sets of limits in one. (``acquire`` inlines
        this.)"""
        if self._rev != self._store.live_rev:
            self._refresh()
        return self._lay

    def _setup(self, own: tuple[Rate | Cap, ...]) -> None:
        """What a limiter derives from its limits and its binding; a scope's
        run over its path (its own limits, then its parent's path)."""
        parent = self._parent
        self._own = len(own)
        routes: tuple[Dispatch, ...] = (self._dispatch,) if self._dispatch else ()
        if parent is None:
            limits = own
            self._scopes: tuple[str | None, ...] = (self._name,) * len(own)
            self._routes: tuple[tuple[Dispatch, ...], ...] = (routes,) * len(own)
        else:
            limits = own + parent._limits
            self._scopes = (self._name,) * len(own) + parent._scopes
            up = parent._routes_up
            self._routes = (routes + up,) * len(own) + parent._routes
            routes += up
        self._routes_up: tuple[Dispatch, ...] = routes
        self._limits = limits
        self._grab = self._b.grab
        self._pers = tuple(
            s.per if isinstance(s, RateSpec) else 1 for s in self._b.spec.slots
        )
        self._caps = tuple(i for i, x in enumerate(limits) if isinstance(x, Cap))
        # whether leaving a lease's block does anything: give a cap's
        # reservation back, or write the ledger's row
        self._settles = bool(self._caps) or self._ledger is not None
        # a lease that can hold a cap reservation is released (and warned
        # about) if dropped unsettled; a rate-only lease has nothing to give back
        # (and one that can write no ledger row has nothing to settle at all)
        self._lease: type[Lease] = (
            _HeldLease if self._caps else Lease if self._settles else _RateLease
        )
        self._n = len(limits)
        index: dict[str, list[int]] = {}
        for i, limit in enumerate(limits):
            index.setdefault(limit.axis, []).append(i)
        self._index = {axis: tuple(ix) for axis, ix in index.items()}
        self._axes = frozenset(index) | STANDARD_AXES
        # runaway watches: its own, then its ancestors' (they count its spend)
        watch = self._watch
        self._watches: tuple[Watch, ...] = ((watch,) if watch else ()) + (
            () if parent is None else parent._watches
        )
        usd = [i for i in self._index.get("usd", ()) if isinstance(limits[i], Cap)]
        self._usd = usd[0] if usd else -1  # the slot a commit's USD is read from
        if watch is not None:
            watch.routes = routes
            watch.cap = limits[self._usd] if usd else None  # type: ignore[assignment]
        if self._watches and self._caps:
            self._lease = _WatchedLease
        self._sync: SyncLimiter | None = None
        # the hot path: acquire(n) with no other amounts, validated once per n
        self._fast: dict[int, tuple[int, ...]] = {}
        self._task_waiter = functools.partial(
            TaskWaiter, getattr(self._clock, "schedule", None)
        )
        self._seen: dict[Hashable, tuple[dict[str, int], tuple[int, ...]]] = {}
        # what its leases keep: a copy of all this, left as it is when live
        # limits change this one (a lease settles by the limits it was made
        # with); it shares the caches and the alert handlers. (Its own
        # ``_lay`` stays unset: a copy pointing at itself would be a cycle,
        # left for the garbage collector with all it holds.)
        lay: Limiter = _new(Limiter)
        for slot in _STATE:
            setattr(lay, slot, getattr(self, slot))
        self._lay: Limiter = lay

    @property
    def limits(self) -> tuple[Rate | Cap, ...]:
        """The limits in force, in the order given (a scope's own: not its
        ancestors'): those ``update`` stored, else the code's."""
        lay = self._now()
        return lay._limits[: lay._own]

    @property
    def code_limits(self) -> tuple[Rate | Cap, ...]:
        """The limits it was made with (in force unless ``update`` stored others)."""
        return self._code

    async def update(self, *limits: Rate | Cap) -> None:
        """Replace this scope's limits, for every limiter object of its
        name in every process using the store (objects made later too),
        until ``update()`` with no limits goes back to the code's.

        Usage carries over: a cap of the same axis, period, zone and kind
        keeps counting what was used and reserved this period (a lowered
        cap refuses at once what would cross it); a rate whose numbers
        changed starts full at its new burst. Leases already made settle
        by the limits they were made with. This process uses the new
        limits when ``update`` returns; on a shared store other processes
        within about a second (Redis: as soon as its message arrives).
        Raises ``InvalidRequest`` for limits the store cannot hold and
        ``StoreUnavailable`` if it cannot be reached.
        """
        await _set_live(self._store, self._live_key(), self._checked(limits))
        self._refresh()

    def _checked(self, limits: tuple[object, ...]) -> tuple[Rate | Cap, ...] | None:
        """``update``'s limits, checked as the store would bind them."""
        if not limits:
            return None
        _check_limits(limits)
        checked = cast("tuple[Rate | Cap, ...]", limits)
        spec = plan_spec(checked, self._b.tick_ns, self._shadow)
        validate = getattr(self._store, "validate", None)
        if validate is not None:
            validate(spec)
        return checked

    def per_key(
        self,
        *limits: Rate | Cap,
        max_keys: int = 100_000,
        on_alert: AlertHandler | Sequence[AlertHandler] | None = None,
        runaway: Runaway | None = None,
    ) -> Keys:
        """A child scope per key, with ``limits``: ``users = org.per_key(...)``,
        then ``users["alice"]`` (made on first use; see ``Keys``).

        ``max_keys`` bounds the keys held while idle: past it, the least
        recently used keys whose state counts nothing any more are
        forgotten (a key that still counts is never forgotten, and a new
        key is never refused). ``runaway`` gives each key's scope a watch
        of its own (an agent run stuck in a loop is stopped, the other
        keys go on); a key forgotten and made again starts a fresh watch.
        """
        _check_limits(limits)
        if type(max_keys) is not int or max_keys < 1:
            raise InvalidRequest(f"max_keys={max_keys!r}: expected a positive int")
        if runaway is not None:
            if not isinstance(runaway, Runaway):
                raise InvalidRequest(f"runaway={runaway!r}: expected a Runaway(...)")
            if self._usd < 0 and not any(
                isinstance(x, Cap) and x.axis == "usd" for x in limits
            ):
                raise InvalidRequest(
                    f"runaway={runaway!r} watches USD spend, but the keys of "
                    f"{self!r} count no USD: give them (or an ancestor) a USD "
                    "cap; Cap(usd=..., soft=True) counts without refusing"
                )
        from ._keys import Keys

        return Keys(self, limits, max_keys, handlers_of(on_alert), runaway)

    @property
    def parent(self) -> Limiter | None:
        """The scope this one is a child of (``None``: a root)."""
        return self._parent

    def child(
        self,
        name: str,
        *limits: Rate | Cap,
        on_alert: AlertHandler | Sequence[AlertHandler] | None = None,
        runaway: Runaway | None = None,
    ) -> Limiter:
        """A scope under this one, named ``name`` (its full name is this
        one's, ``/``, ``name``), with a ``runaway`` watch of its own if given.

        An acquisition on it is charged to its own ``limits`` and to every
        ancestor's in one decision, or refused with nothing charged
        anywhere; ``BudgetExceeded.scope`` names the scope that refused.
        Its store, clock, lease TTL and shadow mode are this one's; its
        alerts reach its ``on_alert`` and every ancestor's. Children of
        one name on one parent share their state (as limiters of one name
        do).
        """
        _check_limits(limits)
        segment = _segment(name, "child name")
        full = segment if self._name is None else f"{self._name}/{segment}"
        if runaway is not None and not isinstance(runaway, Runaway):
            raise InvalidRequest(f"runaway={runaway!r}: expected a Runaway(...)")
        return _scoped(self, full, limits, handlers_of(on_alert), runaway=runaway)

    @property
    def sync(self) -> SyncLimiter:
        """The blocking, thread-safe facade: ``with limiter.sync.acquire(...)``."""
        if self._sync is None:
            from ._sync import SyncLimiter

            self._sync = SyncLimiter(self)
        return self._sync

    @property
    def shadow(self) -> bool:
        """Whether hard caps only report what they would refuse (shadow mode)."""
        return self._shadow

    @property
    def name(self) -> str | None:
        """The name limiters share state under on a store (``None``: not shared)."""
        return self._name

    @property
    def store(self) -> Store:
        """The store holding this limiter's state."""
        return self._store

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
        t = seconds("timeout", timeout, zero=True)
        if math.isinf(t):
            if timeout == math.inf:
                return None
            raise InvalidRequest(
                f"timeout={timeout!r:.40}: at most {_MAX_SECONDS:g} seconds; use "
                "None (or float('inf')) to wait as long as it takes"
            )
        return math.ceil(t * 1e9)

    # -- the API --------------------------------------------------------------

    @overload
    def acquire(
        self, tokens: Amount = 0, *, timeout: float | None = None, **amounts: Amount
    ) -> Lease: ...

    @overload
    def acquire(
        self,
        tokens: Amount = 0,
        *,
        timeout: float | None = None,
        labels: Mapping[str, str] | None,
        **amounts: Amount,
    ) -> Lease: ...

    def acquire(
        self,
        tokens: Amount = 0,
        *,
        timeout: float | None = None,
        labels: Any = None,  # Mapping[str, str] (checked at the call)
        **amounts: Amount,
    ) -> Lease:
        """Reserve ``tokens`` and ``amounts`` on every limit at once.

        Returns a ``Lease`` to ``await`` or use as ``async with``. Waits (FIFO)
        for rates; raises ``BudgetExceeded`` if a hard cap would be crossed,
        ``AcquireTimeout`` if the wait would exceed ``timeout`` seconds, and
        ``InvalidRequest`` (here, at the call) for bad amounts. Counts one
        request unless ``requests=`` is given. ``labels`` (at most 16 string
        pairs) go with the lease (``Lease.labels``) and a refusal
        (``BudgetExceeded.labels``). An uncontended grant on the memory
        store returns without yielding to the event loop.
        """
        if self._rev != self._store.live_rev:
            self._refresh()
        # its limits now, read once: another thread's refresh cannot mix
        # the request of one set of limits with the lease of another
        lay = self._lay
        if not amounts and type(tokens) is int and labels is None:
            try:
                req = lay._fast[tokens]
            except KeyError:
                req = lay._request(lay._units(tokens, amounts, True), True)
                if len(lay._fast) < _FAST_KEPT:
                    lay._fast[tokens] = req
            # ``new_lease``, inlined
            cls = lay._lease  # (a class in a slot: read, then called)
            lease = cls()
            lease._limiter = lay
            lease._units = tokens
            lease._req = req
            lease._timeout = None if timeout is None else self._timeout_ns(timeout)
            lease._state = _PENDING
            lease._take = 0
            lease._key = ""
            lease._labels = EMPTY_LABELS
            if lay._caps:  # ``_made``, inlined: a rate-only lease skips it
                lease._site = _caller()  # type: ignore[attr-defined]
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
            hit = lay._seen.get(key)
        except TypeError:  # an unhashable amount: validation will say why
            key = hit = None
        if hit is None:
            units = lay._units(tokens, amounts, True)
            hit = units, lay._request(units, True)
            if key is not None and len(lay._seen) < _FAST_KEPT:
                lay._seen[key] = hit
        # the units dict is shared by the leases of one key: never mutated
        lease = new_lease(lay._lease, lay, hit[0], hit[1], self._timeout_ns(timeout))
        if labels is not None:
            lease._labels = labels_of(labels)
        return lay._made(lease)

    def _made(self, lease: Lease) -> Lease:
        """``lease``, stamped with where it was made if it can hold a cap
        reservation (its ``ResourceWarning`` names it, should it be dropped)."""
        if self._caps:
            lease._site = _caller()  # type: ignore[attr-defined]
        return lease

    @overload
    async def try_acquire(
        self, tokens: Amount = 0, **amounts: Amount
    ) -> Lease | None: ...

    @overload
    async def try_acquire(
        self,
        tokens: Amount = 0,
        *,
        labels: Mapping[str, str] | None,
        **amounts: Amount,
    ) -> Lease | None: ...

    async def try_acquire(
        self,
        tokens: Amount = 0,
        *,
        labels: Any = None,  # Mapping[str, str] (checked at the call)
        **amounts: Amount,
    ) -> Lease | None:
        """Like ``acquire`` but never waits: a granted ``Lease``, or ``None``.

        Still raises ``BudgetExceeded`` when a hard cap would certainly be crossed.
        """
        lay = self._now()
        units = lay._units(tokens, amounts, True)
        lease = lay._made(
            new_lease(lay._lease, lay, units, lay._request(units, True), 0)
        )
        if labels is not None:
            lease._labels = labels_of(labels)
        lay = lease._limiter  # the limits it was made with
        if lay._watches:
            lay._admit(lease)
        got = lay._b.acquire(lease._req, 0, None)
        if isinstance(got, Call):
            lease._key = got.key
            got = await got
        if got is None or isinstance(got, TooLong):
            return None
        if isinstance(got, Exceeded):
            raise lay._refusal(got, lease._req, 0, lease.labels)
        assert type(got) is int
        lease._take = got
        lease._state = _ACTIVE
        return lease

    @overload
    async def record(self, tokens: Amount = 0, **amounts: Amount) -> None: ...

    @overload
    async def record(
        self,
        tokens: Amount = 0,
        *,
        labels: Mapping[str, str] | None,
        **amounts: Amount,
    ) -> None: ...

    async def record(
        self,
        tokens: Amount = 0,
        *,
        labels: Any = None,  # Mapping[str, str] (checked at the call)
        **amounts: Amount,
    ) -> None:
        """Charge usage after the fact: rates go into debt, caps count it.

        Raises ``BudgetExceeded`` and records nothing if a hard cap would be
        crossed. Counts no request unless ``requests=`` is given. ``labels``
        as for ``acquire``.
        """
        checked = labels_of(labels)
        lay = self._now()
        units = lay._units(tokens, amounts, False)
        req = lay._request(units, False)
        book = lay._record_book(units, checked)
        got: list[Crossing] | Exceeded | Inexact = await _answer(
            lay._b.record(req, book)
        )
        lay._deliver(lay._recorded(got, req, units, checked, book))
        if lay._watches:
            lay._spent(req)

    async def snapshot(self) -> Snapshot:
        """Every limit's state now (see ``Snapshot``), each cap with its
        ``forecast`` (read from the ledger, off the event loop)."""
        lay = self._now()
        views, waiting = await _answer(lay._b.snapshot())
        snap = snapshot_of(lay._limits[: lay._own], views, lay._pers, waiting)
        args = (snap, lay._ledger, lay._name or "", lay._wall())
        if lay._ledger is not None and needs_history(snap):
            snap = await anyio.to_thread.run_sync(with_forecasts, *args)
        else:
            snap = with_forecasts(*args)
        lay._foresee(snap)
        return snap

    async def reset(self) -> None:
        """Zero every cap's usage for its current period, and fill every rate
        (any debt a ``record`` left is gone).

        Outstanding reservations stay reserved: their commit or release still
        settles exactly what they hold (a rate gives nothing back for a
        lease granted before the reset). Waiters are served at once if the
        limits now allow them.
        """
        await _answer(self._now()._b.reset())

    def lower(self, *, per: float | None = None, **remaining: Amount) -> None:
        """Lower the rates on each axis to hold at most ``remaining`` now.

        For what a provider says remains (its ``x-ratelimit-remaining-*``
        headers), so that clients sharing one API key converge: a rate is
        only ever lowered, never raised, and refills as usual afterwards.
        ``per`` (seconds) limits it to the rates of that period (a provider's
        per-minute limits: ``per=60``). Never blocks: on a shared store the
        change goes with the next store call.
        """
        per_s = None if per is None else seconds("per", per, zero=False)
        per_ns = None if per_s is None or math.isinf(per_s) else round(per_s * 1e9)
        units = {axis: to_units(axis, value) for axis, value in remaining.items()}
        lay = self._now()
        for axis, n in units.items():
            for i in lay._index.get(axis, ()):
                limit = lay._limits[i]
                if isinstance(limit, Rate) and (
                    per_s is None or limit._per_ns == per_ns
                ):
                    lay._b.lower(i, n)

    def meter(self, *, model: str, **call: Any) -> Meter:
        """Meter one LLM call made without the httpx transport.

        ``async with limiter.meter(model="gpt-4o", messages=msgs, max_tokens=500) as m:``
        reserves the call's estimate; ``await m.settle(reply)`` commits the
        usage an OpenAI, Anthropic or Gemini SDK response reports. Keywords:
        ``messages``, ``prompt``, ``system``, ``max_tokens``, ``n``,
        ``provider``, ``timeout``, ``count_tokens``, ``unknown_model``,
        ``labels`` (see ``ratebudget.integrations.meter.Meter``). Inside
        ``ratebudget.scope(other, ...)`` it charges ``other`` instead, with
        the scope's labels.
        """
        from .integrations.meter import Meter

        return Meter(self, model=model, **call)

    # -- internals --------------------------------------------------------------

    def _booking(
        self,
        lease_id: str,
        outcome: str,
        units: Mapping[str, int],
        labels: Mapping[str, str],
    ) -> Book:
        """A ledger row for its store to write with the operation (``_booked``)."""
        return Book(
            lease_id,
            self._name or "",
            labels_text(labels),
            outcome,
            tuple(units.items()),
        )

    def _record_book(
        self, units: Mapping[str, int], labels: Mapping[str, str]
    ) -> Book | None:
        """A ``record``'s ledger row, if its store books it."""
        if not self._booked:
            return None
        return self._booking(new_id(), "recorded", units, labels)

    def _recorded(
        self,
        got: list[Crossing] | Exceeded | Inexact,
        req: tuple[int, ...],
        units: Mapping[str, int],
        labels: Mapping[str, str],
        book: Book | None,
    ) -> list[Crossing] | None:
        """A ``record``'s answer: refused (``BudgetExceeded``), or counted,
        its ledger row (if the store did not book it) on its way."""
        if isinstance(got, Exceeded):
            raise self._exceeded(got, req, "recording", labels)
        crossings = self._counted(got)
        if self._ledger is not None and book is None:
            row = (new_id(), self._wall(), self._name or "", labels, "recorded", units)
            self._ledger._put(row)
        return crossings

    def _looked(
        self, w: Waiter, req: tuple[int, ...], labels: Mapping[str, str] = EMPTY_LABELS
    ) -> bool:
        """After ``w`` looked (``poll``): whether it was granted; raises why it
        was refused."""
        if w.state == FAILED:
            assert w.error is not None
            raise self._refusal(w.error, req, None, labels)
        return w.state == CLAIMED

    def _counted(self, got: list[Crossing] | Inexact | None) -> list[Crossing] | None:
        """A settle's or record's changes, or ``InvalidRequest`` if the store
        refused to count past what it holds exactly."""
        if isinstance(got, Inexact):
            raise InvalidRequest(
                f"{self._store.url} cannot count this exactly ({got.what} would "
                "leave the range its numbers hold); nothing was counted: split "
                "the amount, or use a store with exact big numbers (SQLite)"
            )
        return got

    async def flush_alerts(self) -> None:
        """Wait until ``on_alert`` has handled every alert fired so far
        (this scope's handlers and its ancestors').

        Handlers run off the callers' path (a slow webhook never delays a
        commit), in the order the alerts fired; call this before a program
        or a test ends to be sure the last ones were delivered.
        """
        for dispatch in self._routes_up:
            await dispatch.flush()

    def __repr__(self) -> str:
        lay = self._now()
        own = lay._limits[: lay._own]
        peek = lay._b.peek()
        if peek is None:
            limits = ", ".join(map(repr, own))
            return f"<Limiter {self._name!r} on {self._store.url}: {limits}>"
        views, waiting = peek
        parts = []
        for spec, view, per in zip(own, views, lay._pers, strict=True):
            axis = spec.axis
            if isinstance(spec, Rate):
                tokens = from_units(axis, view.level // per)
                parts.append(
                    f"{axis} {tokens:,}/{spec.limit:,} per {spec.per_seconds:g}s"
                )
            else:
                every = f" per {spec.per}" if spec.per else ""
                used = from_units(axis, view.used)
                parts.append(f"{axis} {used:,}/{spec.limit:,} used{every}")
        parts.append(f"{waiting} waiting")
        return f"<Limiter {', '.join(parts)}>"


# what a limiter's leases keep of it (``_setup``): all but the weak reference
_STATE: Final = tuple(s for s in Limiter.__slots__ if s not in ("__weakref__", "_lay"))
