"""The decision: the one algorithm every store runs.

A limiter's state is plain data: a token ``Bucket`` per rate, a ``Counter``
per cap, a FIFO queue of ``Entry`` objects (callers that could not be served
at once) and, on stores shared by processes, lease records. The functions
here read and change that state and nothing else: no I/O, no clock reads, no
locks, no anyio. Time is an argument, in integer ticks (nanoseconds for the
memory store, microseconds of wall-clock time for the shared ones), and every
quantity is an integer. The memory store runs them inline under its lock,
the SQLite store inside one ``BEGIN IMMEDIATE`` transaction, and the Redis
store runs ``stores/lua/decide.lua``, a mirror of this module that the shared
test vectors hold to the same answers.

Scheduling follows the queue: a caller is granted at once when nobody waits
and every limit can serve it; otherwise it joins the queue, and whoever
changes the state next (a waiter looking at its state, a commit, a release)
runs ``service``, which grants waiters from the head of the queue on their
behalf and tells the new head when its turn comes. So a later caller never
overtakes an earlier one, each grant costs one wake-up, a waiter that leaves
the queue has taken nothing, and the waiters behind it move up at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._core_state import (
    ACTIVE,
    CLAIMED,
    EXPIRED,
    FAILED,
    GRANTED,
    REFUSED,
    SETTLED,
    UNCLAIMED,
    WAITING,
    Bucket,
    CapSlot,
    Counter,
    Crossing,
    E,
    Entry,
    Exceeded,
    Inexact,
    Plan,
    Record,
    Shadowed,
    State,
    TooLong,
    Window,
    refill,
    wait_ticks,
)

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
    "Entry",
    "Exceeded",
    "Inexact",
    "Plan",
    "Record",
    "Shadowed",
    "SlotView",
    "State",
    "TooLong",
    "Window",
    "abort",
    "acquire",
    "extend",
    "join",
    "lower",
    "poll",
    "reclaim",
    "record",
    "refill",
    "reset",
    "service",
    "settle",
    "settle_now",
    "snapshot",
    "take_now",
    "wait_ticks",
)


# -- time -----------------------------------------------------------------------


def _roll(st: State, wall: int) -> None:
    """Counters whose period ended move to the next (their usage starts at 0)."""
    if wall < st.next_roll:
        return
    for c in st.counters.values():
        if c.window is not None:
            c.roll(wall)
    st.set_roll()


def reclaim(st: State, now: int) -> None:
    """Shared stores: expired leases give back their cap reservations, and
    records kept for retries are dropped once their time is up."""
    records = st.records
    for lease_id, rec in list(records.items()):
        if rec.exp > now:
            continue
        if rec.status in (ACTIVE, UNCLAIMED):
            for counter, n in rec.caps:
                counter.reserved -= n
            rec.status, rec.exp, rec.caps = EXPIRED, now + st.keep, ()
            st.projection = None
        else:
            del records[lease_id]


def ticks_until(plan: Plan, wall: int, end: int) -> int:
    """Ticks from wall-clock ``wall`` to ``end`` (both µs), rounded up."""
    return -(-(end - wall) * 1000 // plan.tick_ns)


# -- the decisions (each on state the caller holds exclusively) ---------------------


def _exceeded(i: int, cap: CapSlot) -> Exceeded:
    c = cap.counter
    return Exceeded(i, c.used, c.reserved, c.period, c.end)


def _certain_overrun(plan: Plan, req: tuple[int, ...]) -> Exceeded | None:
    for i, cap in plan.hard:
        n = req[i]
        if n and cap.counter.used + n > cap.limit:
            return _exceeded(i, cap)
    return None


def _shadow(st: State, plan: Plan, req: tuple[int, ...], reserved: bool) -> None:
    """Note each shadow cap that would have refused ``req``: pushed past its
    limit (``reserved``: counting the reservations, as ``record`` refuses)."""
    for i, cap in plan.shadow:
        n = req[i]
        c = cap.counter
        if n and c.used + (c.reserved if reserved else 0) + n > cap.limit:
            first = not c.noted
            c.noted = True
            st.shadowed.append(
                Shadowed(i, c.used, c.reserved, n, c.period, c.end, first)
            )


def _caps_fit(plan: Plan, req: tuple[int, ...]) -> bool:
    for i, cap in plan.hard:
        n = req[i]
        if n and cap.counter.used + cap.counter.reserved + n > cap.limit:
            return False
    return True


def _rate_wait(plan: Plan, req: tuple[int, ...], now: int) -> int:
    """Refill every rate; the wait until all can serve ``req``."""
    longest = 0
    for i, b in plan.rates:
        level = b.now(now)
        need = req[i] * b.per
        if need and level < need:
            w = -((level - need) // b.rate)
            if w > longest:
                longest = w
    return longest


def _take(st: State, plan: Plan, req: tuple[int, ...]) -> int:
    """Take ``req`` from rates refilled to now; reserve it on the caps."""
    st.take = take = st.take + 1
    for i, b in plan.rates:
        n = req[i]
        if n:
            b.mark(take)
            b.level -= n * b.per
    for i, cap in plan.caps:
        cap.counter.reserved += req[i]
    return take


def _record_grant(
    st: State, lease_id: str, plan: Plan, req: tuple[int, ...], take: int, status: int
) -> None:
    caps = tuple((cap.counter, req[i]) for i, cap in plan.caps if req[i])
    if caps or status == UNCLAIMED:
        st.records[lease_id] = Record(status, st.clock + (st.ttl or 0), take, caps)


# -- the foreseeable schedule of the queue ------------------------------------------

Levels = dict[Bucket, tuple[int, int]]


def _step(at: int, levels: Levels, plan: Plan, req: tuple[int, ...]) -> int:
    """Advance a projection: when ``req`` is served after ``at``.

    ``levels`` holds each bucket's projected ``(level, time)``; the buckets
    ``req`` takes from become their levels just after it, at the returned time.
    """
    grant = at
    for i, b in plan.rates:
        need = req[i] * b.per
        if need:
            level, t = levels.get(b) or (b.level, b.last)
            t = at + wait_ticks(refill(level, t, at, b.rate, b.cap), need, b.rate)
            if t > grant:
                grant = t
    for i, b in plan.rates:
        need = req[i] * b.per
        if need:
            level, t = levels.get(b) or (b.level, b.last)
            levels[b] = (refill(level, t, grant, b.rate, b.cap) - need, grant)
    return grant


def _tail(st: State, now: int) -> tuple[int, Levels]:
    """The projected time and levels once every queued waiter is served.

    Waiters are served one after another, so with several rates one of them
    may sit clamped at its burst while the queue waits on another; summing
    what the queue wants per rate would miss those lost tokens. So the queue
    is replayed in order (cached, and extended as waiters join; anything that
    could make the replay wrong, a refund, a charge or a waiter leaving early,
    drops the cache).
    """
    tail = st.projection
    if tail is None or not st.queue:
        at, levels = now, Levels()
        for e in st.queue:
            assert e.plan is not None
            at = _step(at, levels, e.plan, e.req)
        st.projection = tail = (at, levels)
    return tail


def _enqueue(st: State, e: Entry) -> None:
    if not st.queue:
        st.projection = None
    st.queue[e] = None
    tail = st.projection
    if tail is not None:
        assert e.plan is not None
        st.projection = (_step(tail[0], tail[1], e.plan, e.req), tail[1])


def _cap_blocked_until(
    st: State, plan: Plan, req: tuple[int, ...], now: int, wall: int
) -> int | None:
    """When a head blocked by reservations should look again: its cap's
    reset, or the first lease that could expire (shared stores)."""
    ends = [
        cap.counter.end
        for i, cap in plan.hard
        if req[i]
        and cap.counter.end is not None
        and cap.counter.used + cap.counter.reserved + req[i] > cap.limit
    ]
    at = None if not ends else now + max(0, ticks_until(plan, wall, min(ends)))
    if st.ttl is not None:
        exps = [r.exp for r in st.records.values() if r.caps and r.exp > now]
        if st.next_exp is not None and st.next_exp > now:
            exps.append(st.next_exp)
        if exps and (at is None or min(exps) < at):
            at = min(exps)
    return at


def _fail(st: State, e: Entry, error: Exceeded | TooLong) -> None:
    """``e`` failed on its behalf; its owner learns it when it looks."""
    e.state, e.error = FAILED, error
    st.woken.append(e)
    if st.ttl is not None and e.id:
        st.records[e.id] = Record(REFUSED, st.clock + st.keep, 0, (), error)


def _fail_certain(st: State) -> None:
    """Refuse every waiter whose overrun became certain, wherever it queues.

    Run when a cap's usage grows: a refusal is due at once, not when the
    waiters ahead have gone.
    """
    for e in list(st.queue):
        assert e.plan is not None
        error = _certain_overrun(e.plan, e.req)
        if error is not None:
            del st.queue[e]
            st.projection = None
            _fail(st, e, error)


def service(st: State, now: int, wall: int) -> None:
    """Grant (or fail) waiters from the head; note the ones to wake."""
    _roll(st, wall)
    queue = st.queue
    woken = st.woken
    while queue:
        e = next(iter(queue))
        plan, req = e.plan, e.req
        assert plan is not None
        error = _certain_overrun(plan, req)
        if error is not None:
            del queue[e]
            st.projection = None
            _fail(st, e, error)
            continue
        if _caps_fit(plan, req):
            wait = _rate_wait(plan, req, now)
            if wait == 0:
                del queue[e]  # served: the projection still holds
                e.take = _take(st, plan, req)
                e.state = GRANTED
                if st.ttl is not None:
                    _record_grant(st, e.id, plan, req, e.take, UNCLAIMED)
                woken.append(e)
                continue
            deadline: int | None = now + wait
        else:
            if e.alive is not None and e.alive < now:
                # its owner stopped looking (a process gone): it leaves
                del queue[e]
                st.projection = None
                e.state = CLAIMED
                continue
            deadline = _cap_blocked_until(st, plan, req, now, wall)
        old = e.deadline
        if deadline != old:
            e.deadline = deadline
            if old is None or (deadline is not None and deadline < old):
                woken.append(e)
        break


# -- operations -------------------------------------------------------------------


def acquire(
    st: State,
    plan: Plan,
    req: tuple[int, ...],
    now: int,
    wall: int,
    timeout: int | None,
    entry: Callable[[], Entry] | None,
    lease_id: str = "",
) -> int | Entry | Exceeded | TooLong | None:
    """Grant at once (the take id), enqueue (an ``Entry``) or refuse.

    Refusals are returned: ``Exceeded`` (a hard cap would certainly be
    crossed), ``TooLong`` (the foreseeable wait exceeds ``timeout`` ticks).
    With ``entry=None`` (``try_acquire``) returns ``None`` instead of
    waiting. Entries to wake are appended to ``st.woken``.
    """
    if now < st.clock:
        now = st.clock
    st.clock = now
    queue = st.queue
    if queue:
        # serve whoever is due first: under a storm of arrivals the head's
        # own wake-up may come late, and tokens that pile up past the burst
        # in the meantime would be lost
        if wall < st.wall:
            wall = st.wall
        st.wall = wall
        service(st, now, wall)
    fits = True
    if plan.caps:
        if plan.calendar:
            if wall < st.wall:
                wall = st.wall
            st.wall = wall
            if wall >= st.next_roll:
                _roll(st, wall)
        if plan.hard:
            error = _certain_overrun(plan, req)
            if error is not None:
                return error
            fits = _caps_fit(plan, req)
        if plan.shadow:
            _shadow(st, plan, req, False)
    if fits and not queue:
        take = take_now(st, plan, req, now)
        if take:
            if plan.caps and st.ttl is not None:
                _record_grant(st, lease_id, plan, req, take, ACTIVE)
            return take
    if entry is None:
        return None
    if timeout is not None:
        foreseen: int | None = None
        # only a timeout needs the forecast (a new head's deadline comes
        # from ``service`` below; others wait their turn)
        if not queue or _caps_fit(*_plan_req(next(iter(queue)))):
            if _caps_fit(plan, req):
                at, levels = _tail(st, now)
                foreseen = _step(at, dict(levels), plan, req) - now
        if timeout == 0 or (foreseen is not None and foreseen > timeout):
            return TooLong(foreseen)
    e = entry()
    e.id = lease_id
    e.plan = plan
    e.req = req
    e.timeout_at = None if timeout is None else now + timeout
    if st.live is not None:
        e.alive = now + st.live
    _enqueue(st, e)
    if len(queue) == 1:  # the new head: ``service`` sets its deadline
        if wall < st.wall:
            wall = st.wall
        st.wall = wall
        service(st, now, wall)
        if st.woken and st.woken[-1] is e:
            st.woken.pop()  # it learns its deadline from the answer
    return e


def take_now(st: State, plan: Plan, req: tuple[int, ...], now: int) -> int:
    """Take ``req`` from every rate at ``now`` and reserve it on the caps, or
    take nothing (0) when a rate falls short: the hot path of ``acquire``.

    The caller checked the caps, that nobody waits, and that ``now`` is not
    before ``st.clock``.
    """
    # refill each rate involved, note its level for refunds (``Bucket.mark``,
    # its common case inlined) and take; if one falls short, put back what
    # was taken
    take = st.take + 1
    rates = plan.rates
    for i, b in rates:
        n = req[i]
        if n:
            level = b.level
            cap = b.cap
            if level < cap:
                level += b.rate * (now - b.last)
                if level > cap:
                    level = cap
            b.last = now
            if level >= cap:
                b.full = take
                if b.peaks:
                    b.peaks.clear()
            else:
                b.level = level
                b.mark(take)
            need = n * b.per
            if level < need:
                b.level = level
                for i2, b2 in rates:
                    if b2 is b:
                        break
                    b2.level += req[i2] * b2.per
                return 0
            b.level = level - need
    st.take = take
    if plan.caps:
        for i, slot in plan.caps:
            slot.counter.reserved += req[i]
    return take


def join(
    st: State, plan: Plan, req: tuple[int, ...], now: int, entry: Callable[[], E]
) -> E | None:
    """Queue ``req`` behind a head that is not due at ``now``, or do nothing
    (``None``): the hot path of an arrival that must wait, as ``acquire``
    would queue it (``service`` would neither grant nor move anyone).

    The caller checked that the queue is not empty, that no limit of the
    state is a cap (so the head's deadline is when its rates can serve it,
    exactly) and that the caller has no timeout.
    """
    deadline = next(iter(st.queue)).deadline
    if deadline is None or not st.clock <= now < deadline:
        return None
    st.clock = now
    e = entry()
    e.plan = plan
    e.req = req
    if st.live is not None:
        e.alive = now + st.live
    _enqueue(st, e)
    return e


def _plan_req(e: Entry) -> tuple[Plan, tuple[int, ...]]:
    assert e.plan is not None
    return e.plan, e.req


def poll(st: State, e: Entry, now: int, wall: int) -> int | None:
    """A waiter looks at its state: run the queue; when to look next.

    ``e.state`` tells the outcome: ``CLAIMED`` (granted: proceed, ``e.take``
    is its take), ``FAILED`` (``e.error`` says why) or ``WAITING`` (sleep
    until the returned deadline, ``None``: until woken).
    """
    now, wall = _clock(st, now, wall)
    service(st, now, wall)
    if e.state == GRANTED:
        e.state = CLAIMED
        if st.ttl is not None:
            rec = st.records.get(e.id)
            if rec is not None and rec.status == UNCLAIMED:
                rec.status = ACTIVE
        return None
    if e.state != WAITING:
        return None
    if e.alive is not None and st.live is not None:
        e.alive = now + st.live
    timeout_at = e.timeout_at
    if timeout_at is not None and now >= timeout_at:
        _leave(st, e, now, wall)
        e.error = TooLong(None)
        e.state = FAILED
        return None
    deadline = e.deadline
    if deadline is not None and deadline <= now:
        # not the head (the head's deadline is in the future): sleep until
        # the queue makes it the head
        e.deadline = deadline = None
    if timeout_at is not None and (deadline is None or timeout_at < deadline):
        deadline = timeout_at
    return deadline


def _clock(st: State, now: int, wall: int) -> tuple[int, int]:
    if now < st.clock:
        now = st.clock
    if wall < st.wall:
        wall = st.wall
    st.clock, st.wall = now, wall
    return now, wall


def _leave(st: State, e: Entry, now: int, wall: int) -> None:
    was_head = next(iter(st.queue)) is e
    del st.queue[e]
    st.projection = None
    e.state = CLAIMED
    if was_head:
        service(st, now, wall)


def abort(st: State, e: Entry, now: int, wall: int) -> None:
    """A waiter leaves by cancellation: give back whatever it was promised."""
    now, wall = _clock(st, now, wall)
    if e.state == WAITING:
        if e in st.queue:
            _leave(st, e, now, wall)
        return
    if e.state == GRANTED:  # granted on its behalf, never claimed
        e.state = CLAIMED
        plan = e.plan
        assert plan is not None
        held = True
        caps = tuple((cap.counter, e.req[i]) for i, cap in plan.caps)
        if st.ttl is not None:
            rec = st.records.pop(e.id, None)
            held = rec is not None and rec.status in (UNCLAIMED, ACTIVE)
            caps = rec.caps if rec is not None else ()
        if held:
            st.projection = None
            for i, b in plan.rates:
                if e.req[i]:
                    b.refund(e.take, e.req[i] * b.per, now)
            for counter, n in caps:
                counter.reserved -= n
        service(st, now, wall)


def settle(
    st: State,
    plan: Plan,
    take: int,
    est: tuple[int, ...],
    actual: tuple[int, ...] | None,
    now: int,
    wall: int,
    lease_id: str = "",
    base: int = 0,
) -> list[Crossing] | Inexact | None:
    """Commit ``actual`` in place of the estimate ``est`` of take ``take``
    (``actual=None``: release). The caps' usage changes (their slots
    numbered from ``base``: a level's place in a path), or ``None`` when
    the lease was already settled (a retry: nothing changes again), or
    ``Inexact`` (nothing changed) when a count would leave ``st.exact``.
    """
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    # the cap reservations it still holds: on a shared store, what its record
    # holds (none once reclaimed), whatever plan the settle comes from
    held = tuple((cap.counter, est[i]) for i, cap in plan.caps if est[i])
    if st.ttl is not None:
        rec = st.records.get(lease_id) if lease_id else None
        if rec is not None and rec.status == SETTLED:
            return None
        held = rec.caps if rec is not None and rec.status in (ACTIVE, UNCLAIMED) else ()
    if actual is not None and st.exact is not None:
        bad = _inexact(st.exact, plan, actual, est, now)
        if bad is not None:
            return bad
    crossings: list[Crossing] = []
    if actual is not None:
        for i, b in plan.rates if actual is not est else ():
            delta = actual[i] - est[i]
            if delta:
                st.projection = None
                if delta < 0:
                    b.refund(take, -delta * b.per, now)
                else:
                    st.take += 1
                    b.charge(delta * b.per, now, st.take)
    for counter, n in held:
        counter.reserved -= n
    for i, cap in plan.caps:
        c = cap.counter
        if actual is not None and actual[i]:
            before = c.add(actual[i])
            crossings.append(Crossing(i + base, before, c.used, c.period, c.end))
    if st.ttl is not None and lease_id:
        st.records[lease_id] = Record(SETTLED, now + st.keep, take, ())
    if st.queue:
        if actual is not None and plan.hard:
            _fail_certain(st)
        service(st, now, wall)
    return crossings


def settle_now(
    st: State,
    plan: Plan,
    est: tuple[int, ...],
    commit: bool,
    now: int,
    wall: int,
    base: int,
    out: list[Crossing],
) -> bool:
    """``settle``'s hot path, in place: the estimate committed as it is
    (``commit``) or released, on a state that keeps no records, counts
    exactly and has nobody waiting (a memory store's, mostly). Its
    crossings go to ``out``. ``False``, nothing changed: ``settle`` must.
    """
    if st.queue or st.ttl is not None or st.exact is not None:
        return False
    if now > st.clock:
        st.clock = now
    if wall > st.wall:
        st.wall = wall
    else:
        wall = st.wall
    if wall >= st.next_roll:
        _roll(st, wall)
    for i, cap in plan.caps:
        n = est[i]
        if n:
            c = cap.counter
            c.reserved -= n
            if commit:
                before = c.add(n)
                out.append(Crossing(i + base, before, c.used, c.period, c.end))
    return True


def _inexact(
    exact: int,
    plan: Plan,
    amounts: tuple[int, ...],
    est: tuple[int, ...] | None,
    now: int,
) -> Inexact | None:
    """Whether charging ``amounts`` (above ``est``) would take a count past ``exact``."""
    for i, b in plan.rates:
        more = amounts[i] - (est[i] if est is not None else 0)
        if (
            b.debt is None  # a bounded debt is exact whatever the amount
            and more > 0
            and refill(b.level, b.last, now, b.rate, b.cap) - more * b.per < -exact
        ):
            return Inexact(f"slot {i}: the rate's debt")
    for i, cap in plan.caps:
        c = cap.counter
        if amounts[i] and c.used + amounts[i] > exact:
            return Inexact(f"slot {i}: the cap's usage")
    return None


def record(
    st: State, plan: Plan, req: tuple[int, ...], now: int, wall: int
) -> list[Crossing] | Exceeded | Inexact:
    """Usage after the fact: charge every limit at once, or refuse.

    A hard cap refuses a record that would not fit beside the reservations
    outstanding on it, so every granted estimate still fits.
    """
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    if st.exact is not None:
        bad = _inexact(st.exact, plan, req, None, now)
        if bad is not None:
            return bad
    for i, cap in plan.hard:
        n = req[i]
        c = cap.counter
        if n and c.used + c.reserved + n > cap.limit:
            return _exceeded(i, cap)
    if plan.shadow:
        _shadow(st, plan, req, True)
    for i, b in plan.rates:
        if req[i]:
            st.projection = None
            st.take += 1
            b.charge(req[i] * b.per, now, st.take)
    crossings: list[Crossing] = []
    for i, cap in plan.caps:
        if req[i]:
            c = cap.counter
            before = c.add(req[i])
            crossings.append(Crossing(i, before, c.used, c.period, c.end))
    if st.queue:
        _fail_certain(st)
        service(st, now, wall)
    return crossings


def extend(st: State, lease_id: str, ttl: int, now: int) -> int | None:
    """Keep lease ``lease_id`` ``ttl`` more ticks; ``None`` if it is no longer active."""
    rec = st.records.get(lease_id)
    if rec is None or rec.status not in (ACTIVE, UNCLAIMED):
        return None
    rec.exp = max(rec.exp, now + ttl)
    return rec.exp - now


def lower(st: State, b: Bucket, top: int, now: int) -> None:
    """Lower bucket ``b`` to hold at most ``top`` now (never raise it)."""
    if now < st.clock:
        now = st.clock
    st.clock = now
    if b.lower(top, now):
        st.projection = None


def reset(st: State, plan: Plan, now: int, wall: int) -> None:
    """Zero the usage of every cap of ``plan`` this period (reservations stay)
    and fill every rate (its debt gone; no earlier grant gets a refund)."""
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    for _, cap in plan.caps:
        cap.counter.used = 0
    if plan.rates:
        st.projection = None
        st.take += 1
        for _, b in plan.rates:
            b.fill(now, st.take)
    if st.queue:
        service(st, now, wall)


@dataclass(frozen=True, slots=True)
class SlotView:
    """One limit at one moment: a rate's ``level`` (units x per, refilled to
    now) or a cap's ``used`` and ``reserved`` in ``period`` (ending ``end``)."""

    level: int = 0
    used: int = 0
    reserved: int = 0
    period: str = ""
    end: int | None = None


def snapshot(
    st: State, plan: Plan, now: int, wall: int
) -> tuple[tuple[SlotView, ...], int]:
    """Every slot of ``plan`` now, and how many callers wait."""
    now, wall = _clock(st, now, wall)
    _roll(st, wall)
    out: list[SlotView] = []
    for s in plan.slots:
        if isinstance(s, Bucket):
            out.append(SlotView(level=s.now(now)))
        else:
            c = s.counter
            out.append(SlotView(0, c.used, c.reserved, c.period, c.end))
    return tuple(out), len(st.queue)
