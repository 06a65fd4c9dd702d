"""The state the decision core (``_decide``) reads and changes: plain data.

A token ``Bucket`` per rate, a ``Counter`` per cap, a FIFO queue of
``Entry`` objects and, on stores shared by processes, lease ``Record``s,
all in one ``State``; and the results a decision returns (``Exceeded``,
``TooLong``, ``Inexact``, ``Crossing``). Every quantity is an integer; time
is in ticks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = (
    "ACTIVE",
    "CLAIMED",
    "EXPIRED",
    "FAILED",
    "GRANTED",
    "REFUSED",
    "SETTLED",
    "UNCLAIMED",
    "WAITING",
    "Bucket",
    "CapSlot",
    "Counter",
    "Crossing",
    "E",
    "Entry",
    "Exceeded",
    "Inexact",
    "Plan",
    "Record",
    "State",
    "TooLong",
    "Window",
    "refill",
    "wait_ticks",
)

# an entry's state
WAITING: Final = 0
GRANTED: Final = 1  # granted on the waiter's behalf, not yet claimed
FAILED: Final = 2
CLAIMED: Final = 3  # granted and claimed, or gone (timed out, cancelled)

# a lease record's state (stores shared by processes keep records)
ACTIVE: Final = 1
EXPIRED: Final = 2  # its cap reservation was reclaimed; a late commit still counts
SETTLED: Final = 3
UNCLAIMED: Final = 4  # granted on a waiter's behalf; its owner has not looked yet
REFUSED: Final = 5  # a waiter failed on its behalf (its owner learns why when it looks)

_PEAKS_KEPT: Final = 32

E = TypeVar("E", bound="Entry")

Window = tuple[str, int, int]
"""A calendar period: its key (``"2026-11"``), start and end (wall µs)."""


# -- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exceeded:
    """A hard cap refused: it would be pushed past its limit."""

    slot: int  # the cap's index in the caller's plan
    used: int
    reserved: int
    period: str
    end: int | None  # when the period ends (wall µs); None: a lifetime cap


@dataclass(frozen=True, slots=True)
class Shadowed:
    """A cap of a shadow plan would have refused ``requested`` (it counted
    it all the same): for ``Limiter(shadow=True)``'s reports."""

    slot: int  # the cap's index in the caller's plan
    used: int
    reserved: int
    requested: int
    period: str
    end: int | None
    first: bool = True  # the first of the cap's period, in any process


@dataclass(frozen=True, slots=True)
class TooLong:
    """The foreseeable wait (ticks; ``None``: not foreseeable) exceeds the timeout."""

    wait: int | None


@dataclass(frozen=True, slots=True)
class Inexact:
    """A count would leave the range the store holds exactly (``State.exact``)."""

    what: str


@dataclass(frozen=True, slots=True)
class Crossing:
    """A cap's usage changed from ``before`` to ``after`` (for alerts and
    overruns; ``before`` is the period's peak, should a ``reset`` have
    lowered the usage since)."""

    slot: int
    before: int
    after: int
    period: str
    end: int | None


# -- state ----------------------------------------------------------------------


def refill(level: int, last: int, now: int, rate: int, cap: int) -> int:
    """The level at ``now`` of a bucket that held ``level`` at ``last``.

    Time running backwards mints nothing.
    """
    if now <= last or level >= cap:
        return level
    level += rate * (now - last)
    return cap if level > cap else level


def wait_ticks(level: int, need: int, rate: int) -> int:
    """Ticks until a bucket at ``level`` holds ``need`` (0 if it does)."""
    if level >= need:
        return 0
    return -((level - need) // rate)


class Bucket:
    """One rate's token bucket, plus what a refund needs to know of its past.

    ``level`` counts units x ``per`` and refills ``rate`` per tick up to
    ``cap`` (``rate`` and ``per`` reduced by their gcd), so every quantity is
    an exact integer; below zero it is debt, never deeper than ``debt``
    (what refills in one period: a provider forgets usage after its window,
    and so does the bucket; ``None``: unbounded, for a bucket no plan of
    this call binds, which nothing charges).

    A refund (a commit below the estimate, a grant given back) must not mint
    tokens that the clamp at the burst already absorbed: had the lease taken
    only what it used, the extra tokens would have been lost to the clamp as
    soon as the bucket filled up. So the refund is cut to ``cap - peak``,
    where ``peak`` is the highest level the bucket held since the grant.
    Levels peak just before a take, so each take records ``(take, level
    before it)`` on a stack kept strictly decreasing in level (a later,
    higher peak hides earlier, lower ones), and ``full`` is the last take
    made from a full bucket (every grant before it gets no refund). Take ids
    grow with time, so the first entry whose id is above the lease's is the
    peak since the lease.
    """

    __slots__ = (
        "cap",
        "debt",
        "full",
        "key",
        "last",
        "level",
        "peaks",
        "per",
        "rate",
    )

    def __init__(
        self,
        key: str,
        rate: int,
        per: int,
        cap: int,
        level: int,
        last: int,
        debt: int | None = None,
    ) -> None:
        self.key = key
        self.rate = rate
        self.per = per
        self.cap = cap
        self.level = level
        self.last = last
        self.debt = debt
        self.full = 0
        self.peaks: list[list[int]] = []

    def now(self, now: int) -> int:
        """Refill to ``now`` (and stamp it); the level."""
        level = self.level
        if now > self.last:
            if level < self.cap:
                level += self.rate * (now - self.last)
                if level > self.cap:
                    level = self.cap
                self.level = level
            self.last = now
        return level

    def mark(self, take: int) -> None:
        """Record the (refilled) level just before take ``take``."""
        level = self.level
        if level >= self.cap:
            self.full = take
            if self.peaks:
                self.peaks.clear()
            return
        peaks = self.peaks
        while peaks and peaks[-1][1] <= level:
            peaks.pop()
        peaks.append([take, level])
        if len(peaks) > _PEAKS_KEPT:
            # forget the oldest entry by lending its (higher) peak to the next:
            # leases older than that see a higher peak, so a smaller refund
            peaks[1][1] = peaks[0][1]
            del peaks[0]

    def refund(self, since: int, amount: int, now: int) -> None:
        """Give back ``amount`` of take ``since``, clamp-aware."""
        level = self.now(now)
        if self.full > since:
            return
        peak = level
        for take, before in self.peaks:
            if take > since:
                if before > peak:
                    peak = before
                break
        room = self.cap - peak
        if room > 0:
            self.level = level + (amount if amount < room else room)

    def charge(self, amount: int, now: int, take: int) -> None:
        """Take ``amount`` (usage above an estimate): it may go into debt,
        down to ``-debt``."""
        self.now(now)
        self.mark(take)
        level = self.level - amount
        if self.debt is not None and level < -self.debt:
            level = -self.debt
        self.level = level

    def fill(self, now: int, take: int) -> None:
        """Full now, as if nothing had been taken (``reset``): no grant
        before take ``take`` gets a refund."""
        self.level = self.cap
        self.last = max(self.last, now)
        self.full = take
        self.peaks.clear()

    def lower(self, top: int, now: int) -> bool:
        """Hold at most ``top`` now (never raise); whether it changed."""
        if self.now(now) > top:
            self.level = top
            return True
        return False


class Counter:
    """One cap's usage in its current period, and what leases hold on it.

    ``window`` gives the calendar period holding a wall-clock time (µs),
    or ``None`` when it does not know it (the shared stores know only the
    periods their caller sent: the counter keeps its period); ``window`` is
    ``None`` for a lifetime cap. ``reserved`` spans periods: a lease granted
    in one period and committed in the next counts in the next.

    The alert latches of the period: ``peak``, the most its usage reached
    (a threshold fires once, when usage first passes it, even after a
    ``reset``), and ``noted``, whether a shadow refusal was reported.
    """

    __slots__ = ("end", "key", "noted", "peak", "period", "reserved", "used", "window")

    def __init__(
        self,
        key: str,
        window: Callable[[int], Window | None] | None,
        period: str = "",
        end: int | None = None,
        used: int = 0,
        reserved: int = 0,
    ) -> None:
        self.key = key
        self.window = window
        self.period = period
        self.end = end
        self.used = used
        self.reserved = reserved
        self.peak = used
        self.noted = False

    def add(self, n: int) -> int:
        """Count ``n`` more used; the usage alerts start from (the period's
        peak before it)."""
        before = self.used
        peak = self.peak if self.peak > before else before
        self.used = after = before + n
        if after > peak:
            self.peak = after
        return peak

    def roll(self, wall: int) -> bool:
        """Move to the period holding ``wall`` if the current one ended."""
        end = self.end
        if (end is None or wall < end) and (self.period or self.window is None):
            return False
        assert self.window is not None
        got = self.window(wall)
        if got is None:
            return False
        period, _start, end = got
        if period == self.period:  # pragma: no cover - a window that never ends
            return False
        self.period, self.end, self.used = period, end, 0
        self.peak, self.noted = 0, False
        return True


class CapSlot:
    """A cap as one plan declares it: its counter, limit and kind (``shadow``:
    a hard cap that does not refuse, only reports what it would have)."""

    __slots__ = ("counter", "hard", "limit", "shadow")

    def __init__(
        self, counter: Counter, limit: int, hard: bool, shadow: bool = False
    ) -> None:
        self.counter = counter
        self.limit = limit
        self.hard = hard
        self.shadow = shadow


class Plan:
    """One limiter's limits bound to the state they count in, in its order."""

    __slots__ = ("calendar", "caps", "hard", "rates", "shadow", "slots", "tick_ns")

    def __init__(self, slots: Iterable[Bucket | CapSlot], tick_ns: int) -> None:
        self.slots: tuple[Bucket | CapSlot, ...] = tuple(slots)
        self.rates = tuple(
            (i, s) for i, s in enumerate(self.slots) if isinstance(s, Bucket)
        )
        self.caps = tuple(
            (i, s) for i, s in enumerate(self.slots) if isinstance(s, CapSlot)
        )
        self.hard = tuple((i, s) for i, s in self.caps if s.hard)
        self.shadow = tuple((i, s) for i, s in self.caps if s.shadow)
        self.calendar = any(s.counter.window is not None for _, s in self.caps)
        self.tick_ns = tick_ns  # nanoseconds per tick of ``now``


class Entry:
    """One caller in the queue; the memory store's waiters subclass it."""

    __slots__ = (
        "alive",
        "deadline",
        "error",
        "id",
        "plan",
        "req",
        "state",
        "take",
        "timeout_at",
    )

    def __init__(self) -> None:
        self.id = ""  # its lease id on shared stores
        self.plan: Plan | None = None
        self.req: tuple[int, ...] = ()
        self.state = WAITING
        self.deadline: int | None = None  # when it should next look (ticks)
        self.timeout_at: int | None = None
        self.error: Exceeded | TooLong | None = None
        self.take = 0  # the take that granted it
        self.alive: int | None = None  # shared stores: look again before this

    def sleep_deadline(self) -> int | None:
        """When to look again, fresh from ``begin``: its turn or its timeout."""
        deadline, timeout_at = self.deadline, self.timeout_at
        if timeout_at is not None and (deadline is None or timeout_at < deadline):
            return timeout_at
        return deadline


class Record:
    """A lease as a shared store keeps it, for expiry and idempotent retries."""

    __slots__ = ("caps", "error", "exp", "status", "take")

    def __init__(
        self,
        status: int,
        exp: int,
        take: int,
        caps: tuple[tuple[Counter, int], ...],
        error: Exceeded | TooLong | None = None,
    ) -> None:
        self.status = status
        self.exp = exp  # ticks: ACTIVE expires (reclaimed), others are dropped
        self.take = take
        self.caps = caps  # the cap reservations it holds while ACTIVE
        self.error = error  # FAILED entries: why (kept for the owner's poll)


class State:
    """Everything one name's limiters share on a store.

    ``ttl`` (ticks) is ``None`` on the memory store: leases never expire and
    no records are kept. On shared stores a lease that reserves caps (or is
    granted on its waiter's behalf) is recorded, reclaimed ``ttl`` after its
    grant, and its settled record kept ``keep`` ticks for retries.
    """

    __slots__ = (
        "buckets",
        "clock",
        "counters",
        "exact",
        "keep",
        "live",
        "next_exp",
        "next_roll",
        "projection",
        "queue",
        "records",
        "shadowed",
        "take",
        "ttl",
        "wall",
        "woken",
    )

    def __init__(
        self, ttl: int | None = None, keep: int = 0, live: int | None = None
    ) -> None:
        self.clock = 0  # the latest ``now`` seen (ticks): time never runs back
        self.wall = 0  # the latest wall-clock time seen (µs)
        self.take = 0  # the latest take id
        self.buckets: dict[str, Bucket] = {}
        self.counters: dict[str, Counter] = {}
        # FIFO: an OrderedDict, as a dict emptied from the front scans every
        # entry deleted so far to find its first (O(n) a head, until it grows)
        self.queue: dict[Entry, None] = OrderedDict()
        self.projection: tuple[int, dict[Bucket, tuple[int, int]]] | None = None
        self.next_roll: float = math.inf
        self.ttl = ttl
        self.keep = keep
        self.exact: int | None = None  # the largest count the store holds exactly
        self.live = live  # ticks a queued entry of a shared store stays without a look
        self.records: dict[str, Record] = {}
        # shared stores: the first expiry of a record not loaded (a hint)
        self.next_exp: int | None = None
        self.woken: list[Entry] = []  # entries whose state or deadline changed
        self.shadowed: list[Shadowed] = []  # what shadow caps would have refused

    # -- state that plans bind to -------------------------------------------

    def bucket(
        self, key: str, rate: int, per: int, cap: int, now: int, debt: int | None
    ) -> Bucket:
        got = self.buckets.get(key)
        if got is None:
            got = self.buckets[key] = Bucket(key, rate, per, cap, cap, now, debt)
        else:
            got.debt = debt
        return got

    def counter(
        self, key: str, window: Callable[[int], Window | None] | None
    ) -> Counter:
        got = self.counters.get(key)
        if got is None:
            got = self.counters[key] = Counter(key, window)
        elif got.window is None and window is not None:
            got.window = window
        return got

    def set_roll(self) -> None:
        ends = [c.end for c in self.counters.values() if c.end is not None]
        if any(not c.period and c.window is not None for c in self.counters.values()):
            self.next_roll = -math.inf  # a counter that has no period yet
        else:
            self.next_roll = min(ends, default=math.inf)
