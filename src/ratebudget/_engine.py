"""The memory store: every decision of one limiter, made atomically.

All state lives here, guarded by one ``threading.Lock`` held only for short,
non-blocking critical sections, so one limiter can be shared by tasks of one
event loop, by several threads each running its own loop, and by plain
threads. Callers that cannot be served at once join one FIFO queue of
``Waiter`` objects; whoever changes the state next (a waiter whose time came,
a commit, a release) runs ``_service``, which grants waiters from the head of
the queue on their behalf and tells the new head when its turn comes. So a
later caller never overtakes an earlier one, each grant costs one wake-up,
and a waiter that leaves the queue has taken nothing.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from decimal import Decimal
from threading import get_ident
from typing import Final

from ._amounts import from_units
from ._bucket import refill, wait_ns
from ._clock import Clock
from ._exceptions import AcquireTimeout, BudgetExceeded
from ._limits import Cap, Rate
from ._periods import PeriodWindow, period_window
from ._snapshot import Alert, LimitSnapshot, Snapshot

__all__ = ("CLAIMED", "FAILED", "GRANTED", "WAITING", "Engine", "Waiter")

WAITING: Final = 0
GRANTED: Final = 1  # granted on the waiter's behalf, not yet claimed
FAILED: Final = 2
CLAIMED: Final = 3  # granted and claimed, or gone (timed out, cancelled)

_ids = itertools.count(1)

# Biased locking needs the GIL's sequentially consistent attribute access.
_GIL: Final = bool(getattr(sys, "_is_gil_enabled", lambda: True)())


class Waiter:
    """One caller in the queue; the front end decides how it sleeps."""

    __slots__ = (
        "deadline",
        "error",
        "lease_id",
        "req",
        "state",
        "timeout_at",
    )

    def __init__(self) -> None:
        self.req: tuple[int, ...] = ()
        self.state = WAITING
        self.deadline: int | None = None  # when it should next look (monotonic ns)
        self.timeout_at: int | None = None
        self.error: BaseException | None = None
        self.lease_id = 0

    def sleep_deadline(self) -> int | None:
        """When to look again, fresh from ``begin``: its turn or its timeout."""
        deadline, timeout_at = self.deadline, self.timeout_at
        if timeout_at is not None and (deadline is None or timeout_at < deadline):
            return timeout_at
        return deadline

    def arm(self) -> None:
        """Prepare to sleep (under the engine lock): later wakes must land."""

    def wake(self) -> None:
        """Wake the sleeper (outside the engine lock, from any thread)."""


_PEAKS_KEPT: Final = 32


class _RateSlot:
    """One token bucket, plus what a refund needs to know about its past.

    A refund (a commit below the estimate, a grant given back) must not mint
    tokens that the bucket's clamp at its burst already absorbed: had the
    lease taken only what it used, the extra tokens would have been lost to
    the clamp as soon as the bucket filled up. So the refund is cut to
    ``capacity - peak``, where ``peak`` is the highest level the bucket held
    since the grant. Levels peak just before a take, so each take records
    ``(take id, level before it)`` on a stack kept strictly decreasing in
    level (a later, higher peak hides earlier, lower ones), and ``full`` is
    the id of the last take made from a full bucket (every grant before it
    gets no refund). Take ids grow with time, so the first entry whose id is
    above the lease's is the peak since the lease.
    """

    __slots__ = ("capacity", "full", "last", "level", "peaks", "per", "rate", "spec")

    def __init__(self, spec: Rate, now: int) -> None:
        self.spec = spec
        # a level counts units x ``per``, refilled by ``rate`` per ns: exact
        # integers, reduced by their gcd so they stay small (and fast)
        g = math.gcd(spec._limit_units, spec._per_ns)
        self.rate = spec._limit_units // g
        self.per = spec._per_ns // g
        self.capacity = spec._burst_units * self.per
        self.level = self.capacity
        self.last = now
        self.full = 0
        self.peaks: list[tuple[int, int]] = []

    def mark(self, take: int) -> None:
        """Record the (refilled) level just before take ``take``."""
        level = self.level
        if level >= self.capacity:
            self.full = take
            if self.peaks:
                self.peaks.clear()
            return
        peaks = self.peaks
        while peaks and peaks[-1][1] <= level:
            peaks.pop()
        peaks.append((take, level))
        if len(peaks) > _PEAKS_KEPT:
            # forget the oldest entry by lending its (higher) peak to the next:
            # leases older than that see a higher peak, so a smaller refund
            peaks[1] = (peaks[1][0], peaks[0][1])
            del peaks[0]

    def refund(self, since: int, amount: int, now: int) -> None:
        """Give back ``amount`` unit-ns of the take ``since``, clamp-aware."""
        level = refill(self.level, self.last, now, self.rate, self.capacity)
        self.last = now
        if self.full > since:
            self.level = level
            return
        peak = level
        for take, before in self.peaks:
            if take > since:
                if before > peak:
                    peak = before
                break
        room = self.capacity - peak
        if room > 0:
            level += amount if amount < room else room
        self.level = level

    def charge(self, amount: int, now: int) -> None:
        """Take ``amount`` unit-ns (usage above an estimate): may go into debt."""
        self.level = refill(self.level, self.last, now, self.rate, self.capacity)
        self.last = now
        self.mark(next(_ids))
        self.level -= amount


class _CapSlot:
    __slots__ = (
        "fired",
        "hard",
        "limit",
        "reserved",
        "spec",
        "thresholds",
        "used",
        "window",
    )

    def __init__(self, spec: Cap, wall: float) -> None:
        self.spec = spec
        self.limit = spec._limit_units
        self.hard = not spec.soft
        self.used = 0
        self.reserved = 0
        self.window: PeriodWindow | None = (
            None if spec.per is None else period_window(spec.per, spec.tz, wall)
        )
        self.fired: set[float] = set()
        self.thresholds = tuple(
            (t, math.ceil(Decimal(repr(t)) * spec._limit_units)) for t in spec.alert_at
        )

    def exceeded(self, amount: int, kind: str) -> BudgetExceeded:
        axis = self.spec.axis
        used = from_units(axis, self.used)
        limit = self.spec.limit
        requested = from_units(axis, amount)
        period = f" this {self.spec.per}" if self.spec.per else ""
        resets = f"; it resets at {self.window.end.isoformat()}" if self.window else ""
        return BudgetExceeded(
            f"{kind} {axis}={requested} would push {self.spec!r} past its limit: "
            f"{used} of {limit} used{period}{resets}",
            axis=axis,
            limit=limit,
            used=used,
            reserved=from_units(axis, self.reserved),
            requested=requested,
            resets_at=self.window.end if self.window else None,
        )


class Engine:
    """State and decisions of one limiter (the memory store)."""

    def __init__(self, limits: Sequence[Rate | Cap], clock: Clock) -> None:
        self.clock = clock
        self._monotonic_ns = clock.monotonic_ns
        self.lock = threading.Lock()
        # Biased locking. The thread that built the engine (usually the one
        # running the event loop) skips the lock in ``begin``, the hot path;
        # a threading.Lock costs as much as the rest of an acquisition on
        # CPython 3.11. It raises ``_busy`` first and then checks it still
        # owns the bias; another thread drops the bias (``_owner = None``),
        # then waits for ``_busy`` to fall, then locks, and from then on
        # everyone locks. Under the GIL one of the two always sees the
        # other's write (Dekker's handshake), so they never overlap.
        self._owner: int | None = get_ident() if _GIL else None
        self._busy = False
        now, wall = clock.monotonic_ns(), clock.time()
        self.slots: tuple[_RateSlot | _CapSlot, ...] = tuple(
            _RateSlot(s, now) if isinstance(s, Rate) else _CapSlot(s, wall)
            for s in limits
        )
        self.rates = tuple(
            (i, s) for i, s in enumerate(self.slots) if isinstance(s, _RateSlot)
        )
        self.caps = tuple(
            (i, s) for i, s in enumerate(self.slots) if isinstance(s, _CapSlot)
        )
        self.hard_caps = tuple((i, s) for i, s in self.caps if s.hard)
        self.queue: OrderedDict[Waiter, None] = OrderedDict()
        self._projection: tuple[int, list[int]] | None = None
        self._next_roll = math.inf
        self._set_next_roll()

    # -- locking --------------------------------------------------------------

    def _guard(self) -> threading.Lock:
        """The lock to hold, once the bias is dropped if this thread lacks it."""
        owner = self._owner
        if owner is not None and owner != get_ident():
            self._owner = None
        # Whoever dropped the bias, the owner may still be in its last
        # lock-free section (it raised ``_busy`` before it could see
        # ``_owner`` change): let it finish. It cannot start another.
        while self._busy:
            time.sleep(0)
        return self.lock

    # -- calendar periods ---------------------------------------------------

    def _set_next_roll(self) -> None:
        ends = [s.window.end_ts for _, s in self.caps if s.window is not None]
        self._next_roll = min(ends, default=math.inf)

    def _roll(self, wall: float) -> None:
        if wall < self._next_roll:
            return
        for _, cap in self.caps:
            if cap.window is not None and wall >= cap.window.end_ts and cap.spec.per:
                cap.window = period_window(cap.spec.per, cap.spec.tz, wall)
                cap.used = 0  # outstanding reservations stay outstanding
                cap.fired.clear()
        self._set_next_roll()

    # -- decisions (call with the lock held) --------------------------------

    def _certain_overrun(
        self, req: tuple[int, ...], kind: str
    ) -> BudgetExceeded | None:
        for i, cap in self.hard_caps:
            n = req[i]
            if n and cap.used + n > cap.limit:
                return cap.exceeded(n, kind)
        return None

    def _caps_fit(self, req: tuple[int, ...]) -> bool:
        for i, cap in self.hard_caps:
            n = req[i]
            if n and cap.used + cap.reserved + n > cap.limit:
                return False
        return True

    def _rate_wait(self, req: tuple[int, ...], now: int) -> int:
        """Refill every rate; the wait until all can serve ``req``."""
        longest = 0
        for i, r in self.rates:
            r.level = refill(r.level, r.last, now, r.rate, r.capacity)
            r.last = now
            need = req[i] * r.per
            if need:
                w = wait_ns(r.level, need, r.rate)
                if w > longest:
                    longest = w
        return longest

    def _take(self, req: tuple[int, ...]) -> int:
        """Take ``req`` from rates refilled to now; reserve it on the caps."""
        take = next(_ids)
        for i, r in self.rates:
            n = req[i]
            if n:
                level = r.level
                if level >= r.capacity:  # ``r.mark(take)``, its common case inlined
                    r.full = take
                    if r.peaks:
                        r.peaks.clear()
                else:
                    r.mark(take)
                r.level = level - n * r.per
        if self.caps:
            for i, cap in self.caps:
                cap.reserved += req[i]
        return take

    # -- the foreseeable schedule of the queue ------------------------------

    def _step(self, at: int, levels: list[int], req: tuple[int, ...]) -> int:
        """Advance a projection: when ``req`` is served after ``at``.

        ``levels`` are the rates' levels at ``at``; they become the levels
        just after ``req`` is taken, at the returned time.
        """
        grant = at
        for k, (i, r) in enumerate(self.rates):
            need = req[i] * r.per
            if need:
                t = at + wait_ns(levels[k], need, r.rate)
                if t > grant:
                    grant = t
        for k, (i, r) in enumerate(self.rates):
            levels[k] = (
                refill(levels[k], at, grant, r.rate, r.capacity) - req[i] * r.per
            )
        return grant

    def _tail(self, now: int) -> tuple[int, list[int]]:
        """The projected time and rate levels once every queued waiter is served.

        Waiters are served one after another, so with several rates one of
        them may sit clamped at its burst while the queue waits on another;
        summing what the queue wants per rate would miss those lost tokens.
        So the queue is replayed in order (cached, and extended as waiters
        join; anything that could make the replay wrong, a refund, a charge
        or a waiter leaving early, drops the cache).
        """
        tail = self._projection
        if tail is None or not self.queue:
            for _, r in self.rates:
                r.level = refill(r.level, r.last, now, r.rate, r.capacity)
                r.last = now
            at, levels = now, [r.level for _, r in self.rates]
            for w in self.queue:
                at = self._step(at, levels, w.req)
            self._projection = tail = (at, levels)
        return tail

    def _foresee(self, req: tuple[int, ...], now: int) -> int:
        """The wait (ns) until ``req`` could be served behind the queue."""
        at, levels = self._tail(now)
        return self._step(at, list(levels), req) - now

    def _enqueue(self, w: Waiter) -> None:
        if not self.queue:
            self._projection = None
        self.queue[w] = None
        tail = self._projection
        if tail is not None:
            self._projection = (self._step(tail[0], tail[1], w.req), tail[1])

    def _dequeue(self, w: Waiter, served: bool = False) -> None:
        del self.queue[w]
        if not served:
            self._projection = None

    def _cap_blocked_until(
        self, req: tuple[int, ...], now: int, wall: float
    ) -> int | None:
        """When a head blocked by reservations should look again: its cap's reset."""
        ends = [
            cap.window.end_ts
            for i, cap in self.hard_caps
            if req[i]
            and cap.window is not None
            and cap.used + cap.reserved + req[i] > cap.limit
        ]
        if not ends:
            return None
        return now + max(0, math.ceil((min(ends) - wall) * 1e9))

    def _fail_certain(self) -> list[Waiter]:
        """Refuse every waiter whose overrun became certain, wherever it queues.

        Run when a cap's usage grows: a refusal is due at once, not when the
        waiters ahead have gone.
        """
        failed: list[Waiter] = []
        for w in list(self.queue):
            error = self._certain_overrun(w.req, "acquiring")
            if error is not None:
                self._dequeue(w)
                w.state, w.error = FAILED, error
                failed.append(w)
        return failed

    def service(self, now: int, wall: float) -> list[Waiter]:
        """Grant (or fail) waiters from the head; return the ones to wake."""
        self._roll(wall)
        woken: list[Waiter] = []
        queue = self.queue
        while queue:
            w = next(iter(queue))
            error = self._certain_overrun(w.req, "acquiring")
            if error is not None:
                self._dequeue(w)
                w.state, w.error = FAILED, error
                woken.append(w)
                continue
            if self._caps_fit(w.req):
                wait = self._rate_wait(w.req, now)
                if wait == 0:
                    self._dequeue(w, served=True)
                    w.lease_id = self._take(w.req)
                    w.state = GRANTED
                    woken.append(w)
                    continue
                deadline: int | None = now + wait
            else:
                deadline = self._cap_blocked_until(w.req, now, wall)
            old = w.deadline
            if deadline != old:
                w.deadline = deadline
                if old is None or (deadline is not None and deadline < old):
                    woken.append(w)
            break
        return woken

    # -- operations (each takes the lock) -----------------------------------

    def begin(
        self,
        req: tuple[int, ...],
        timeout_ns: int | None,
        waiter: Callable[[], Waiter] | None,
    ) -> int | Waiter | None:
        """Grant at once (a lease id), enqueue (a ``Waiter``) or refuse.

        Raises ``BudgetExceeded`` or ``AcquireTimeout``. With ``waiter=None``
        (``try_acquire``) returns ``None`` instead of waiting.
        """
        if self._owner == get_ident():
            self._busy = True
            biased = self._owner is not None  # else: dropped meanwhile
            if not biased:
                self._busy = False
                self.lock.acquire()
        else:
            biased = False
            self._guard().acquire()
        woken: list[Waiter] | None = None
        try:
            now = self._monotonic_ns()
            queue = self.queue
            if queue:
                # serve whoever is due first: under a storm of arrivals the
                # head's own wake-up may come late, and tokens that pile up
                # past the burst in the meantime would be lost
                woken = self.service(now, self.clock.time())
            fits = True
            if self.caps:
                if self._next_roll != math.inf:
                    wall = self.clock.time()
                    if wall >= self._next_roll:
                        self._roll(wall)
                if self.hard_caps:
                    error = self._certain_overrun(req, "acquiring")
                    if error is not None:
                        raise error
                    fits = self._caps_fit(req)
            if fits and not queue:
                # the hot path, inlined: refill each rate involved, note its
                # level for refunds (``_RateSlot.mark``, common case inlined)
                # and take; if one falls short, put back what was taken
                take = next(_ids)
                rates = self.rates
                for i, r in rates:
                    n = req[i]
                    if n:
                        level = r.level
                        capacity = r.capacity
                        if level < capacity:
                            level += r.rate * (now - r.last)
                            if level > capacity:
                                level = capacity
                        r.last = now
                        if level >= capacity:
                            r.full = take
                            if r.peaks:
                                r.peaks.clear()
                        else:
                            r.level = level
                            r.mark(take)
                        need = n * r.per
                        if level < need:
                            r.level = level
                            for i2, r2 in rates:
                                if r2 is r:
                                    break
                                r2.level += req[i2] * r2.per
                            break
                        r.level = level - need
                else:
                    if self.caps:
                        for i, cap in self.caps:
                            cap.reserved += req[i]
                    return take
            if waiter is None:
                return None
            foreseen: int | None = None
            if timeout_ns is not None:
                # only a timeout needs the forecast (a new head's deadline
                # comes from ``service`` below; others wait their turn)
                if not queue or self._caps_fit(next(iter(queue)).req):
                    if self._caps_fit(req):
                        foreseen = self._foresee(req, now)
            if timeout_ns is not None and (
                timeout_ns == 0 or (foreseen is not None and foreseen > timeout_ns)
            ):
                retry = None if foreseen is None else foreseen / 1e9
                needs = "" if retry is None else f" needs {retry:.3f}s"
                raise AcquireTimeout(
                    f"acquisition{needs}; timeout is {timeout_ns / 1e9:g}s",
                    retry_after=retry,
                )
            w = waiter()
            w.req = req
            w.timeout_at = None if timeout_ns is None else now + timeout_ns
            self._enqueue(w)
            if len(queue) == 1:  # the new head: ``service`` sets its deadline
                self.service(now, self.clock.time())
            w.arm()  # ready to sleep until ``w.sleep_deadline()``: no first poll
            return w
        finally:
            if biased:
                self._busy = False
            else:
                self.lock.release()
            if woken:
                for other in woken:
                    other.wake()

    def poll(self, w: Waiter) -> tuple[list[Waiter], int | None]:
        """A waiter looks at its state: run the queue, arm its next sleep.

        Returns the waiters to wake and the deadline to sleep until.
        ``w.state`` tells the outcome: ``CLAIMED`` (granted: proceed),
        ``FAILED`` (raise ``w.error``) or ``WAITING`` (sleep).
        """
        clock = self.clock
        with self._guard():
            now = clock.monotonic_ns()
            woken = self.service(now, clock.time())
            if w.state == GRANTED:
                w.state = CLAIMED
                return woken, None
            if w.state != WAITING:
                return woken, None
            timeout_at = w.timeout_at
            if timeout_at is not None and now >= timeout_at:
                woken += self._leave(w, now, clock.time())
                w.error = AcquireTimeout(
                    "acquisition was not granted within its timeout"
                )
                w.state = FAILED
                return woken, None
            deadline = w.deadline
            if deadline is not None and deadline <= now:
                # not the head (the head's deadline is in the future): sleep
                # until the queue makes it the head
                w.deadline = deadline = None
            if timeout_at is not None and (deadline is None or timeout_at < deadline):
                deadline = timeout_at
            w.arm()
            return woken, deadline

    def _leave(self, w: Waiter, now: int, wall: float) -> list[Waiter]:
        was_head = next(iter(self.queue)) is w
        self._dequeue(w)
        w.state = CLAIMED
        return self.service(now, wall) if was_head else []

    def abort(self, w: Waiter) -> list[Waiter]:
        """A waiter leaves by cancellation: give back whatever it was promised."""
        clock = self.clock
        with self._guard():
            now, wall = clock.monotonic_ns(), clock.time()
            if w.state == WAITING:
                return self._leave(w, now, wall)
            if w.state == GRANTED:  # granted on its behalf, never claimed
                w.state = CLAIMED
                self._projection = None
                for i, r in self.rates:
                    if w.req[i]:
                        r.refund(w.lease_id, w.req[i] * r.per, now)
                for i, cap in self.caps:
                    cap.reserved -= w.req[i]
                return self.service(now, wall)
            return []

    def settle(
        self, lease_id: int, est: tuple[int, ...], actual: tuple[int, ...] | None
    ) -> tuple[list[Waiter], list[Alert], list[str]]:
        """Commit ``actual`` in place of lease ``lease_id``'s ``est`` (``None``: release).

        Returns the waiters to wake, the alerts to deliver and overrun notes.
        """
        clock = self.clock
        with self._guard():
            now, wall = clock.monotonic_ns(), clock.time()
            self._roll(wall)
            alerts: list[Alert] = []
            overruns: list[str] = []
            if actual is None:
                for i, cap in self.caps:
                    cap.reserved -= est[i]
            else:
                for i, r in self.rates if actual is not est else ():
                    delta = actual[i] - est[i]
                    if delta:
                        self._projection = None
                        if delta < 0:
                            r.refund(lease_id, -delta * r.per, now)
                        else:
                            r.charge(delta * r.per, now)
                for i, cap in self.caps:
                    cap.reserved -= est[i]
                    if actual[i]:
                        cap.used += actual[i]
                        self._alerts(cap, alerts)
                        if cap.hard and cap.used > cap.limit:
                            overruns.append(
                                f"commit pushed {cap.spec!r} over its limit: "
                                f"used {from_units(cap.spec.axis, cap.used)}"
                            )
            woken: list[Waiter] = []
            if self.queue:
                if actual is not None and self.hard_caps:
                    woken = self._fail_certain()
                woken += self.service(now, wall)
            return woken, alerts, overruns

    def record(self, req: tuple[int, ...]) -> tuple[list[Waiter], list[Alert]]:
        """Usage after the fact: charge every limit at once, or raise.

        A hard cap refuses a record that would not fit beside the
        reservations outstanding on it, so every granted estimate still fits.
        """
        clock = self.clock
        with self._guard():
            now, wall = clock.monotonic_ns(), clock.time()
            self._roll(wall)
            # outstanding reservations count: a granted estimate must still fit
            for i, cap in self.hard_caps:
                n = req[i]
                if n and cap.used + cap.reserved + n > cap.limit:
                    raise cap.exceeded(n, "recording")
            alerts: list[Alert] = []
            for i, r in self.rates:
                if req[i]:
                    self._projection = None
                    r.charge(req[i] * r.per, now)
            for i, cap in self.caps:
                if req[i]:
                    cap.used += req[i]
                    self._alerts(cap, alerts)
            woken: list[Waiter] = []
            if self.queue:
                woken = self._fail_certain() + self.service(now, wall)
            return woken, alerts

    def lower(self, i: int, units: int) -> None:
        """Lower rate ``i`` to hold at most ``units`` now (never raise it)."""
        clock = self.clock
        with self._guard():
            now = clock.monotonic_ns()
            r = self.slots[i]
            assert isinstance(r, _RateSlot)
            r.level = refill(r.level, r.last, now, r.rate, r.capacity)
            r.last = now
            top = units * r.per
            if r.level > top:
                r.level = top
                self._projection = None

    def reset(self) -> list[Waiter]:
        """Zero every cap's usage this period (reservations stay)."""
        clock = self.clock
        with self._guard():
            now, wall = clock.monotonic_ns(), clock.time()
            self._roll(wall)
            for _, cap in self.caps:
                cap.used = 0
                cap.fired.clear()
            return self.service(now, wall) if self.queue else []

    def _alerts(self, cap: _CapSlot, out: list[Alert]) -> None:
        for threshold, units in cap.thresholds:
            if cap.used >= units and threshold not in cap.fired:
                cap.fired.add(threshold)
                window = cap.window
                out.append(
                    Alert(
                        limit=cap.spec,
                        threshold=threshold,
                        used=from_units(cap.spec.axis, cap.used),
                        period=window.key if window else None,
                        resets_at=window.end if window else None,
                    )
                )

    def snapshot(self) -> Snapshot:
        clock = self.clock
        with self._guard():
            now, wall = clock.monotonic_ns(), clock.time()
            self._roll(wall)
            out: list[LimitSnapshot] = []
            for slot in self.slots:
                axis = slot.spec.axis
                if isinstance(slot, _RateSlot):
                    slot.level = refill(
                        slot.level, slot.last, now, slot.rate, slot.capacity
                    )
                    slot.last = now
                    tokens = slot.level // slot.per
                    burst = slot.capacity // slot.per
                    out.append(
                        LimitSnapshot(
                            limit=slot.spec,
                            kind="rate",
                            axis=axis,
                            limit_amount=slot.spec.limit,
                            used=from_units(axis, burst - tokens),
                            reserved=from_units(axis, 0),
                            remaining=from_units(axis, max(tokens, 0)),
                            tokens=from_units(axis, tokens),
                        )
                    )
                else:
                    window = slot.window
                    left = max(0, slot.limit - slot.used - slot.reserved)
                    out.append(
                        LimitSnapshot(
                            limit=slot.spec,
                            kind="cap",
                            axis=axis,
                            limit_amount=slot.spec.limit,
                            used=from_units(axis, slot.used),
                            reserved=from_units(axis, slot.reserved),
                            remaining=from_units(axis, left),
                            period=window.key if window else None,
                            resets_at=window.end if window else None,
                        )
                    )
            return Snapshot(limits=tuple(out), waiting=len(self.queue))

    def describe(self) -> str:
        """A short summary for ``repr``: the first limit's usage and the queue."""
        parts = []
        for slot in self.slots:
            axis = slot.spec.axis
            if isinstance(slot, _RateSlot):
                tokens = slot.level // slot.per
                parts.append(
                    f"{axis} {_fmt(from_units(axis, tokens))}/{_fmt(slot.spec.limit)} "
                    f"per {slot.spec.per_seconds:g}s"
                )
            else:
                per = f" per {slot.spec.per}" if slot.spec.per else ""
                parts.append(
                    f"{axis} {_fmt(from_units(axis, slot.used))}/{_fmt(slot.spec.limit)} used{per}"
                )
        parts.append(f"{len(self.queue)} waiting")
        return ", ".join(parts)


def _fmt(value: int | Decimal) -> str:
    return f"{value:,}"
