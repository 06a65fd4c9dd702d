"""``Lease``: one acquisition, from its grant to its commit or release, and
the small helpers it shares with ``Limiter`` (``_limiter.py``).

A lease keeps the copy of its limiter's limits it was made with
(``Limiter._lay``): it settles by those whatever ``update`` changed since.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from collections.abc import Coroutine, Generator, Mapping
from decimal import Decimal
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import anyio
import anyio.lowlevel

from . import _telemetry as telemetry
from ._amounts import Amount, from_units, to_units
from ._decide import Crossing, Exceeded, Inexact, TooLong
from ._exceptions import InvalidRequest
from ._ids import new_id
from ._scope import EMPTY_LABELS
from ._telemetry import OBSERVERS
from ._waiters import TaskWaiter, Waiter
from .stores._base import Call

if TYPE_CHECKING:
    from ._limiter import Limiter
    from .stores._ops import Book

__all__ = ("Lease", "new_lease")

T = TypeVar("T")
L = TypeVar("L", bound="Lease")

_MAX_SECONDS: Final = 10.0**10  # timeouts and TTLs beyond ~300 years are "forever"

_PENDING: Final = 0
_ACTIVE: Final = 1
_SETTLED: Final = 2


@types.coroutine
def _nothing() -> Generator[None, None, None]:
    yield from ()


def _done() -> Coroutine[Any, Any, None]:
    """An awaitable that returns ``None`` at once, however often it is
    awaited: a generator-based coroutine that has finished (awaiting it is
    ``yield from`` a finished generator). Cheaper than a coroutine made
    for each ``await``, which can be awaited only once. (Typed as the
    coroutine ``__aexit__`` is expected to return: it has ``send``,
    ``throw`` and ``close``, and ``await`` takes it as one.)"""
    done = _nothing()
    for _ in cast("Generator[None, None, None]", done):
        pass
    return cast("Coroutine[Any, Any, None]", done)


_DONE: Final = _done()


async def _answer(got: T | Call[T]) -> T:
    """The answer of a binding's operation: at hand, or awaited."""
    if isinstance(got, Call):
        return cast("T", await got)
    return got


async def _shielded(got: T | Call[T]) -> T:
    """Like ``_answer``, but a cancellation cannot interrupt the store call
    (bounded by the store's timeout): a settle must be heard."""
    if isinstance(got, Call):
        with anyio.CancelScope(shield=True):
            return cast("T", await got)
    return cast("T", got)


def seconds(what: str, value: object, *, zero: bool) -> float:
    """``value`` as seconds (``zero``: 0 allowed; ``inf`` stays ``inf``; a
    finite value past ``_MAX_SECONDS`` too), or ``InvalidRequest``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{what}={value!r:.40}: expected seconds")
    if value != value or value < 0 or (value == 0 and not zero):  # NaN, < 0
        bound = ">= 0" if zero else "> 0"
        raise InvalidRequest(f"{what}={value!r:.40}: expected seconds {bound}")
    if value > _MAX_SECONDS:  # compared before a float conversion can overflow
        return math.inf
    return float(value)


def new_lease(
    cls: type[L],
    limiter: Limiter,
    units: dict[str, int] | int,
    req: tuple[int, ...],
    timeout: int | None,
) -> L:
    """A pending lease of ``limiter`` for ``req`` (``units`` per axis)."""
    lease = cls()
    lease._limiter = limiter
    lease._units = units
    lease._req = req
    lease._timeout = timeout
    lease._state = _PENDING
    lease._take = 0
    lease._key = ""
    lease._labels = EMPTY_LABELS
    return lease


class Lease:
    """One acquisition: reserved amounts, later committed or released.

    Await it (``lease = await limiter.acquire(500)``) or use it as
    ``async with limiter.acquire(500) as lease:``. In the block,
    ``await lease.commit(**actual)`` settles the real usage; leaving normally
    without a commit commits the estimate; leaving by an exception releases
    the cap reservations (rate tokens stay spent).
    """

    __slots__ = (
        "_key",
        "_labels",
        "_limiter",
        "_req",
        "_state",
        "_take",
        "_timeout",
        "_units",
    )
    _limiter: Limiter
    _units: dict[str, int] | int  # an int: ``acquire(tokens)`` alone
    _req: tuple[int, ...]
    _timeout: int | None
    _state: int
    _take: int  # the store's take id: refunds are measured from it
    _key: str  # the store's lease id (shared stores)
    _labels: Mapping[str, str]  # EMPTY_LABELS unless given (``labels``)

    # no ``__init__``: ``new_lease`` makes one (and ``Limiter.acquire``,
    # inlining it: a class called without an ``__init__`` is made fastest)

    async def _acquire(self) -> Lease:
        """``await lease``: the grant of ``async with``, once."""
        if self._state != _PENDING:
            raise InvalidRequest(
                "this lease was already acquired; call limiter.acquire() again"
            )
        return await self.__aenter__()

    async def _granted(self, got: object) -> Lease:
        """The slow path of an acquisition: a store call, a wait or a refusal."""
        limiter = self._limiter
        if isinstance(got, Call):
            self._key = got.key
            got = await got
        if isinstance(got, Waiter):
            w = got
            # the wait, here rather than in a coroutine of its own: thousands
            # may queue, and each object a waiter keeps alive feeds the
            # garbage collector's oldest generation
            assert isinstance(w, TaskWaiter)
            b = limiter._b
            deadline = w.sleep_deadline()  # ``acquire`` armed it
            began = limiter._clock.monotonic_ns() if OBSERVERS else None
            try:
                while True:
                    if deadline is None:  # nothing for the clock to time
                        await w.wait()
                    else:
                        await limiter._clock.wait(w, deadline)
                    # a cancellation that came while we slept wins over a
                    # grant made on our behalf meanwhile (``abort`` gives it back)
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    deadline = await _answer(b.poll(w))
                    if limiter._looked(w, self._req, self.labels):
                        break
            except BaseException:
                b.abort(w)
                raise
            finally:
                w.disarm()
            if began is not None:
                telemetry.waited(limiter, (limiter._clock.monotonic_ns() - began) / 1e9)
            self._key = w.id
            got = w.take
        if type(got) is not int:
            assert isinstance(got, (Exceeded, TooLong))
            raise limiter._refusal(got, self._req, self._timeout, self.labels)
        self._take = got
        self._state = _ACTIVE
        return self

    def __await__(self) -> Generator[Any, None, Lease]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Lease:
        # ``_acquire``'s grant, inlined: this is the hot path
        if self._state != _PENDING:
            if self._state == _ACTIVE:  # from try_acquire() or an earlier await
                return self
            raise InvalidRequest(
                f"lease {self.id} was already settled; call limiter.acquire() again"
            )
        limiter = self._limiter
        grab = limiter._grab
        if grab is not None:
            take = grab(self._req)
            if take:
                self._take = take
                self._state = _ACTIVE
                return self
        got = limiter._b.acquire(self._req, self._timeout, limiter._task_waiter)
        if type(got) is not int:
            return await self._granted(got)
        self._take = got
        self._state = _ACTIVE
        return self

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Coroutine[Any, Any, None]:
        # not ``async``: when there is nothing to settle, leaving makes no
        # coroutine object (``_DONE``)
        if self._state != _ACTIVE:
            return _DONE
        if not self._limiter._settles:  # rates keep what they granted either way
            self._state = _SETTLED
            return _DONE
        if exc_type is None:
            # the estimate, committed (its units only for the ledger's row)
            limiter = self._limiter
            units = _ESTIMATE if limiter._ledger is None else self._unit_amounts()
            return self._settle(self._req, units)
        return self._settle(None)

    @property
    def id(self) -> str:
        """This lease's id: the store's (shared stores), else made at random
        when first asked (the memory store keeps none); the ledger's rows
        carry it. ``"unmetered"`` for a lease granted without the store."""
        if not self._key and self._take:
            self._key = new_id()
        return self._key or "unmetered"

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
    def labels(self) -> Mapping[str, str]:
        """The labels it was acquired with (read-only; empty if none)."""
        return self._labels

    @property
    def settled(self) -> bool:
        """Whether the lease was committed or released."""
        return self._state == _SETTLED

    def _actual(
        self, actual: Mapping[str, Amount]
    ) -> tuple[tuple[int, ...], dict[str, int]]:
        """A commit's usage: as the store counts it, and in units per axis."""
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
        return limiter._request(units, False), units

    def _settle_op(
        self, actual: tuple[int, ...] | None, book: Book | None = None
    ) -> list[Crossing] | Inexact | Call[list[Crossing] | Inexact | None] | None:
        """The store operation that settles this lease (``None``: nothing to
        do; but a ``book``, the ledger's row, always goes)."""
        limiter = self._limiter
        if book is None:
            if (actual is None or actual == self._req) and not any(
                self._req[i] for i in limiter._caps
            ):
                return None  # rates keep what they granted, no cap holds it
            return limiter._b.settle(self._key, self._take, self._req, actual)
        return limiter._b.settle(self._key, self._take, self._req, actual, book)

    def _book(self, units: Mapping[str, int] | None) -> Book | None:
        """The ledger's row, for a store that writes it in the settle's own
        transaction (``None``: the ledger's thread writes it after)."""
        limiter = self._limiter
        if not (limiter._booked and self._take):
            return None
        return limiter._booking(self.id, _outcome(units), units or {}, self.labels)

    def _settled(
        self,
        got: list[Crossing] | Inexact | None,
        units: Mapping[str, int] | None,
        book: Book | None,
    ) -> list[Crossing] | None:
        """The store heard a settle with a ledger (``book``: its row went
        with it): the lease is settled, its row (else) on its way."""
        crossings = self._limiter._counted(got)
        self._state = _SETTLED
        if book is None:
            self._logged(units)
        return crossings

    async def _settle(
        self, actual: tuple[int, ...] | None, units: Mapping[str, int] | None = None
    ) -> None:
        # shielded, as a memory store's settle cannot be interrupted either;
        # the lease stays active until the store has heard, so a settle that
        # failed (StoreUnavailable) can be retried, and counts once
        limiter = self._limiter
        if limiter._ledger is None:  # the common case, first
            crossings = limiter._counted(await _shielded(self._settle_op(actual)))
            self._state = _SETTLED
        else:
            book = self._book(units)
            got = await _shielded(self._settle_op(actual, book))
            crossings = self._settled(got, units, book)
        limiter._deliver(crossings)

    def _logged(self, units: Mapping[str, int] | None) -> None:
        """Its row, for the ledger's thread: committed ``units``, or (``None``)
        released."""
        key = self._key
        if not key:  # a memory lease's id, made now (``id``), or (granted
            # unmetered) a row's own
            key = new_id()
            if self._take:
                self._key = key
        limiter = self._limiter
        assert limiter._ledger is not None
        limiter._ledger._put(
            (
                key,
                limiter._wall(),
                limiter._name or "",
                self._labels,
                _outcome(units),
                _NO_UNITS if units is None else units,
            )
        )

    async def commit(self, **actual: Amount) -> None:
        """Replace the estimate with the real usage on every limit.

        Axes not given keep their estimate. Unused estimate goes back; overuse
        is charged (a hard cap records it past its limit and logs the overrun;
        a rate goes into debt that later callers wait off). Raises
        ``InvalidRequest`` for bad amounts, unknown axes or a settled lease,
        and ``StoreUnavailable`` if the store cannot be reached (the lease
        stays active: retry the commit; it counts once).
        """
        await self._settle(*self._actual(actual))

    def _to_release(self) -> bool:
        """Whether a release has anything to do."""
        if self._state == _PENDING:
            raise InvalidRequest("this lease has not been acquired yet: await it first")
        return self._state == _ACTIVE

    async def release(self) -> None:
        """Give back the cap reservations; rate tokens stay spent.

        Idempotent: releasing a settled lease does nothing.
        """
        if self._to_release():
            await self._settle(None)

    async def extend(self, ttl: float | None = None) -> None:
        """Keep this lease's reservation for ``ttl`` more seconds (default: the
        limiter's ``lease_ttl``), for calls that may outlive it (long streams).

        On a shared store an unsettled lease gives its cap reservation back
        ``lease_ttl`` seconds after its grant; memory leases never expire, so
        there this only checks the lease is active. Raises ``InvalidRequest``
        if the lease is not active, or was already reclaimed.
        """
        ttl_ns = self._extension(ttl)
        if not await _answer(self._limiter._b.extend(self._key, ttl_ns)):
            raise self._expired()

    def _extension(self, ttl: float | None) -> int | None:
        if self._state != _ACTIVE:
            raise InvalidRequest(f"lease {self.id} is not active")
        if ttl is None:
            return None
        t = seconds("ttl", ttl, zero=False)
        if math.isinf(t) or t > _MAX_SECONDS:
            raise InvalidRequest(f"ttl={ttl!r}: at most {_MAX_SECONDS:g} seconds")
        return math.ceil(t * 1e9)

    def _expired(self) -> InvalidRequest:
        return InvalidRequest(
            f"lease {self.id} expired before it was extended: its reservation "
            "was reclaimed (raise lease_ttl, or extend sooner)"
        )

    def __repr__(self) -> str:
        state = ("pending", "active", "settled")[self._state]
        amounts = ", ".join(f"{k}={v}" for k, v in self.amounts.items())
        return f"<Lease {self.id} {state} {amounts}>"


class _RateLease(Lease):
    """A lease of a limiter of rates alone, without a ledger: leaving its
    block has nothing to settle (rates keep what they granted either way)."""

    __slots__ = ()

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Coroutine[Any, Any, None]:
        # (entered, so active, or already settled by a commit or release)
        self._state = _SETTLED
        return _DONE


class _HeldLease(Lease):
    """A lease of a limiter with caps: one dropped while active (never
    committed or released) gives its reservation back, with a
    ``ResourceWarning`` naming where it was acquired, as Python does for a
    coroutine never awaited."""

    __slots__ = ("_site",)  # file:line of the acquisition (``_caller``)

    def __del__(self) -> None:
        # (a lease whose construction failed has no state at all)
        if getattr(self, "_state", _PENDING) != _ACTIVE:
            return
        limiter = self._limiter
        if limiter._ledger is not None:
            self._state = _SETTLED
            self._logged(None)
        if not any(self._req[i] for i in limiter._caps):
            return
        self._state = _SETTLED
        limiter._b.drop(self._key, self._take, self._req)
        name = f"limiter {limiter._name!r}" if limiter._name else "a limiter"
        warnings.warn(
            f"lease {self.id} of {name} was never committed or released: its "
            f"reservation was given back (acquired at "
            f"{getattr(self, '_site', 'an unknown place')}); use "
            "'async with limiter.acquire(...)', or commit() or release() it",
            ResourceWarning,
            stacklevel=1,
            source=self,
        )


class _WatchedLease(_HeldLease):
    """A lease of a scope under a ``Runaway`` watch: refused while the
    watch blocks, and what it commits counted by the watch."""

    __slots__ = ()

    async def __aenter__(self) -> Lease:
        if self._state == _PENDING:
            self._limiter._admit(self)
        return await super().__aenter__()

    async def _settle(
        self, actual: tuple[int, ...] | None, units: Mapping[str, int] | None = None
    ) -> None:
        await super()._settle(actual, units)
        self._limiter._spent(actual)


_ESTIMATE: Final[Mapping[str, int]] = MappingProxyType({})  # a commit of it, unlogged
_NO_UNITS: Final[Mapping[str, int]] = MappingProxyType({})  # a release's row


def _outcome(units: Mapping[str, int] | None) -> str:
    return "released" if units is None else "committed"


def _caller() -> str:
    """``file:line`` of the first frame outside ratebudget (who acquired)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "ratebudget."
    ):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
