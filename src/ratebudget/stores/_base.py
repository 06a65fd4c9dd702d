"""The seam between a limiter and its store: ``Store``, ``Binding``, ``Call``.

A ``Limiter`` never asks which store it has (as httpx's client never asks
which transport): it validates a request, calls its ``Binding`` (the store's
view of one limiter), and sleeps on the answer. Every operation of a binding
returns the answer itself when the store decides inline (memory), or a
``Call`` to run (a store across a thread hop or a network): ``await call``
from async code, ``call.wait()`` from a plain thread.
"""

from __future__ import annotations

import abc
import re
import threading
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._decide import Crossing, Exceeded, Inexact, Shadowed, SlotView, TooLong
from .._waiters import Waiter

if TYPE_CHECKING:
    from .._clock import Clock
    from .._ledger import Ledger
    from .._limits import Cap, Rate
    from .._plan import PlanSpec
    from ._ops import Book

__all__ = ("Binding", "Call", "Store")

T = TypeVar("T")

_LIVE_LOCK = threading.Lock()
_SECRET_PARAM = re.compile(r"([?&](?:password|passwd|secret|token)=)[^&#]*", re.I)

Acquired = int | Waiter | Exceeded | TooLong | None
"""What an acquisition gets: a take id (granted now), a ``Waiter`` (queued:
sleep and ``poll``), a refusal, or ``None`` (``try_acquire`` would wait)."""


class Call(Generic[T]):
    """An operation for a store that does not decide inline.

    ``await call`` runs it from async code (coalesced with the event loop's
    other calls), ``call.wait()`` from a plain thread (blocking).
    """

    __slots__ = ()

    key: str = ""  # the lease id an acquisition's call uses

    def __await__(self) -> Generator[Any, None, T]:
        raise NotImplementedError  # pragma: no cover

    def wait(self) -> T:
        raise NotImplementedError  # pragma: no cover


class Binding(abc.ABC):
    """One limiter's state on one store: every operation a limiter needs.

    Times are the limiter clock's monotonic nanoseconds; amounts are units
    per slot of the plan (``req``). Waiters woken by an operation are woken
    by the binding.
    """

    spec: PlanSpec
    tick_ns: int  # nanoseconds per tick of the store's clock (take times, waits)
    # a shadow plan's reports: called with what its caps would have refused
    # (from the caller's task or thread, or a store worker thread)
    on_shadow: Callable[[list[Shadowed]], None] | None = None
    # a store that decides inline may offer the uncontended grant alone:
    # ``grab(req)`` takes ``req`` at once and returns its take id, or 0
    # (nothing changed: go through ``acquire``, which decides it all)
    grab: Callable[[tuple[int, ...]], int] | None = None

    @abc.abstractmethod
    def acquire(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> Acquired | Call[Acquired]:
        """Grant, enqueue (``waiter()`` makes the entry) or refuse."""

    @abc.abstractmethod
    def poll(self, w: Waiter) -> int | Call[int | None] | None:
        """A waiter looks: ``w.state`` is updated; its next deadline (ns)."""

    @abc.abstractmethod
    def abort(self, w: Waiter) -> None:
        """A waiter leaves (cancelled): it takes nothing. Never blocks."""

    @abc.abstractmethod
    def drop(self, key: str, take: int, est: tuple[int, ...]) -> None:
        """Release a lease nobody holds any more (from ``__del__``: never
        blocks, never takes a lock); done with the binding's next operation."""

    @abc.abstractmethod
    def settle(
        self,
        key: str,
        take: int,
        est: tuple[int, ...],
        actual: tuple[int, ...] | None,
        book: Book | None = None,
    ) -> list[Crossing] | Inexact | Call[list[Crossing] | Inexact | None] | None:
        """Commit ``actual`` (``None``: release); ``None`` if already settled.
        ``book``: the ledger row to write with it (a store that ``books``)."""

    @abc.abstractmethod
    def record(
        self, req: tuple[int, ...], book: Book | None = None
    ) -> (
        list[Crossing] | Exceeded | Inexact | Call[list[Crossing] | Exceeded | Inexact]
    ):
        """Charge usage after the fact, or refuse (a hard cap); ``book`` as
        for ``settle``."""

    @abc.abstractmethod
    def snapshot(
        self,
    ) -> tuple[tuple[SlotView, ...], int] | Call[tuple[tuple[SlotView, ...], int]]:
        """Every slot now, and how many callers wait."""

    @abc.abstractmethod
    def reset(self) -> Call[None] | None:
        """Zero every cap's usage this period."""

    @abc.abstractmethod
    def lower(self, slot: int, units: int) -> None:
        """Lower rate ``slot`` to hold at most ``units`` now (never blocks: a
        shared store sends it with its next call)."""

    @abc.abstractmethod
    def extend(self, key: str, ttl_ns: int | None) -> bool | Call[bool]:
        """Keep lease ``key`` alive ``ttl_ns`` longer; whether it still was."""

    def busy(self) -> bool:
        """Whether a store call is under way (for tests that let time settle)."""
        return False

    def forget(self) -> bool:
        """Let an idle per-key scope's state go (``Limiter.per_key``), if
        nothing of it still counts; whether it did (or has nothing to do:
        a shared store expires idle keys by their TTL)."""
        return True

    def rebound(self, limits: tuple[Rate | Cap, ...], shadow: bool) -> Binding:
        """A binding of this one's state with other ``limits`` (an unnamed
        limiter's live limits; only a memory store has unnamed limiters)."""
        raise NotImplementedError

    def peek(self) -> tuple[tuple[SlotView, ...], int] | None:
        """``snapshot()`` if it needs no store call, else ``None`` (for ``repr``)."""
        return None


class Store(abc.ABC):
    """Where limiter state lives, shared by every limiter of one name."""

    url: str = ""
    #: whether state outlives the process and is shared with other processes
    persistent: bool = True

    @abc.abstractmethod
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
    ) -> Binding:
        """The binding of limiter ``name`` (``None``: a private state);
        ``shadow``: its hard caps report (``Binding.on_shadow``) instead of
        refusing; ``parent``: the binding of the scope whose child ``name``
        (a full name) is, charged down its path with it; ``keyed``: one of
        a ``per_key``'s scopes (a shared store lists those by their state,
        not in its registry of limiters, which would grow with every key)."""

    def ledger(self) -> Ledger:
        """``ledger=True``: the ledger this store keeps beside its state."""
        from .._exceptions import InvalidRequest

        raise InvalidRequest(
            f"ledger=True: {self.url or 'this store'} keeps no ledger of its own "
            "(a SQLite store does, in its file); give a ledger URL"
        )

    def books(self, ledger: Ledger, name: str | None) -> bool:
        """Whether this store writes ``ledger``'s rows itself, each in the
        transaction of the settle or record it is about (then a limiter
        hands it the row, ``ops.Book``, instead of its ledger's writer);
        ``name``: the root of the limiter's tree."""
        return False

    # -- live limits (``Limiter.update``) ---------------------------------
    #: the limits stored for a name, in force over the code's (as this
    #: process last saw them); replaced whole, never changed in place
    live: Mapping[object, tuple[Rate | Cap, ...]] = MappingProxyType({})
    #: counts each change of ``live`` this process has seen
    live_rev: int = 0

    def live_due(self) -> None:  # noqa: B027 - a memory store knows at once
        """Look for live limits other processes stored, if it is time."""

    def set_live(self, key: object, limits: tuple[Rate | Cap, ...] | None) -> None:
        """Store ``limits`` as the live limits of ``key`` (a name, or an
        unnamed limiter itself); ``None``: back to the code's (blocking)."""
        with _LIVE_LOCK:
            live = dict(self.live)
            if limits is None:
                live.pop(key, None)
            else:
                live[key] = limits
            self.live = live
            self.live_rev += 1

    def limiters(self) -> dict[str, dict[str, Any]]:
        """Every limiter registered on this store: name -> its spec."""
        return {}

    def keys_of(self, name: str, root: str) -> list[str]:
        """The full names of the scopes right under scope ``name`` (of the
        tree of ``root``) that have a state on this store (per-key scopes
        are not registered)."""
        return []

    def close(self) -> None:  # noqa: B027 - nothing to release, by default
        """Release connections; the store may be used again afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def redact(url: str) -> str:
    """``url`` fit to print: its password (``user:secret@``, or a
    ``?password=`` parameter as libpq takes it) is ``***``."""
    url = re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
    return _SECRET_PARAM.sub(r"\1***", url)
