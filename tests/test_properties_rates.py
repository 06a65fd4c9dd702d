"""Never over the rate (contract 2), as properties over random workloads.

The decision core (``ratebudget._decide``, as the memory store runs it) is
driven directly (``core_engine.Engine``): its operations are synchronous, so a small discrete-event
simulator plays the part of the front end (``Limiter._wait``) with
thread-free waiters and a ``FakeClock``. Hypothesis draws arrival patterns,
sizes up to the burst, timeouts, holds, commits and cancellations (while
waiting, and after being granted on the waiter's behalf before it ran); the
simulator records when every lease was granted and checks the window bound
over every pair of grant times.

A last property runs the same kind of workload through the public
``Limiter`` with tasks on both backends.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core_engine import Engine, Waiter
from helpers import NS, advance_to_ns, settle
from ratebudget import AcquireTimeout, Limiter, Rate
from ratebudget._core_state import _PEAKS_KEPT
from ratebudget._decide import CLAIMED, FAILED, GRANTED, Bucket, Entry
from ratebudget._plan import RateSpec, plan_spec
from ratebudget.testing import FakeClock

# -- helpers ---------------------------------------------------------------------


def window_violations(
    events: list[tuple[int, int]], limit: int, burst: int, per_ns: int
) -> list[tuple[int, int, int]]:
    """Windows ``[t1, t2]`` where the amount at times in it exceeds the bound.

    ``events`` are ``(time_ns, amount)``; the bound is
    ``burst + limit / per * (t2 - t1)``, compared exactly in integers.
    Returns ``(t1, t2, amount)`` for each violating window.
    """
    totals: dict[int, int] = {}
    for t, n in events:
        totals[t] = totals.get(t, 0) + n
    times = sorted(totals)
    prefix = [0, *itertools.accumulate(totals[t] for t in times)]
    bad = []
    for i, t1 in enumerate(times):
        for j in range(i, len(times)):
            t2 = times[j]
            amount = prefix[j + 1] - prefix[i]
            if amount * per_ns > burst * per_ns + limit * (t2 - t1):
                bad.append((t1, t2, amount))
    return bad


class SimWaiter(Waiter):
    """A waiter without a thread or a task: the simulator polls it."""

    __slots__ = ("ready", "tag")

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.tag = -1

    def arm(self) -> None:
        self.ready = False

    def wake(self) -> None:
        self.ready = True


class Sim:
    """Plays ``Limiter._wait`` for many waiters over one engine and fake clock.

    A waiter polls when it was woken or its sleep deadline came, exactly as a
    task sleeping in ``clock.sleep_until(deadline)`` inside its wake scope.
    """

    def __init__(self, limits: list[Rate]) -> None:
        self.clock = FakeClock()
        self.engine = Engine(limits, self.clock)
        self.sleeping: dict[SimWaiter, int | None] = {}
        self.granted: dict[int, int] = {}  # tag -> grant time (ns)
        self.lease_ids: dict[int, int] = {}  # tag -> lease id
        self.failed: dict[int, BaseException] = {}
        self.aborted_after_grant: set[int] = set()
        self.abort_when_granted: set[int] = set()
        self.on_grant: Callable[[int], None] = lambda tag: None

    @property
    def now(self) -> int:
        return self.clock.monotonic_ns()

    def _wake(self, woken: list[Entry], but: Entry | None = None) -> None:
        for w in woken:
            if w is not but and isinstance(w, Waiter):
                w.wake()

    def _grant(self, tag: int, lease_id: int) -> None:
        self.granted[tag] = self.now
        self.lease_ids[tag] = lease_id
        self.on_grant(tag)

    def arrive(self, tag: int, req: tuple[int, ...], timeout_ns: int | None) -> None:
        try:
            got = self.engine.begin(req, timeout_ns, SimWaiter)
        except AcquireTimeout as exc:
            self.failed[tag] = exc
            return
        if isinstance(got, int):
            self._grant(tag, got)
            return
        assert isinstance(got, SimWaiter)
        got.tag = tag
        self._poll(got)
        self.run_ready()

    def _poll(self, w: SimWaiter) -> None:
        woken, deadline = self.engine.poll(w)
        self._wake(woken, but=w)
        if w.state == CLAIMED:
            del self.sleeping[w]
            self._grant(w.tag, w.take)
        elif w.state == FAILED:
            self.sleeping.pop(w, None)
            self.failed[w.tag] = self.engine.error(w)
        else:
            self.sleeping[w] = deadline
            if deadline is not None and deadline <= self.now:
                w.ready = True  # sleep_until returns at once

    def run_ready(self) -> None:
        for _ in range(100_000):
            ready = [w for w in self.sleeping if w.ready]
            if not ready:
                return
            for w in ready:
                if w not in self.sleeping or not w.ready:
                    continue
                if w.state == GRANTED and w.tag in self.abort_when_granted:
                    # cancelled after the grant made on its behalf, before it ran
                    del self.sleeping[w]
                    self.aborted_after_grant.add(w.tag)
                    self._wake(self.engine.abort(w))
                else:
                    self._poll(w)
        raise AssertionError("waiters keep waking without progress (a busy loop)")

    def cancel(self, tag: int) -> bool:
        """Cancel a waiter still sleeping; False if it is not waiting."""
        for w in self.sleeping:
            if w.tag == tag:
                del self.sleeping[w]
                self._wake(self.engine.abort(w))
                self.run_ready()
                return True
        return False

    def next_wake(self) -> int | None:
        deadlines = [d for d in self.sleeping.values() if d is not None]
        return min(deadlines, default=None)

    def step(self, until_ns: int | None) -> bool:
        """Let time pass to the next wake-up if it comes by ``until_ns``.

        Returns whether a wake-up was due; otherwise the clock moves to
        ``until_ns`` (if given) and nothing else happens.
        """
        nxt = self.next_wake()
        if nxt is None or (until_ns is not None and nxt > until_ns):
            if until_ns is not None:
                advance_to_ns(self.clock, max(until_ns, self.now))
            return False
        advance_to_ns(self.clock, max(nxt, self.now))
        for w, d in self.sleeping.items():
            if d is not None and d <= self.now:
                w.ready = True
        self.run_ready()
        return True


# -- workloads -------------------------------------------------------------------


@dataclass
class Arrival:
    gap_ns: int  # after the previous arrival
    tokens: int
    requests: int
    timeout_ns: int | None
    cancel_after_ns: int | None  # cancel while waiting, this long after arriving
    abort_if_granted_for_it: bool  # cancelled after a grant made on its behalf
    hold_ns: int  # from grant to commit
    actual: int  # committed tokens (the estimate is ``tokens``)


@dataclass
class Workload:
    limit: int
    burst: int
    per_ns: int
    rpm: tuple[int, int] | None  # (limit, burst) of a requests-per-second rate
    arrivals: list[Arrival]
    records: list[tuple[int, int]] = field(default_factory=list)  # (at_ns, tokens)


@st.composite
def workloads(draw: st.DrawFn, commits: str) -> Workload:
    """Random limiter and arrivals; ``commits``: "at_or_above" or "at_or_below"."""
    limit = draw(st.integers(1, 40))
    burst = draw(st.integers(1, 40))
    per_ns = draw(st.sampled_from([NS, 2 * NS, 10 * NS, 3 * NS + 7]))
    rpm = draw(st.none() | st.tuples(st.integers(1, 5), st.integers(1, 3)))
    full = -(-burst * per_ns // limit)  # time to refill an empty bucket
    n = draw(st.integers(1, 40))
    arrivals = []
    for _ in range(n):
        tokens = draw(st.integers(0, burst))
        if commits == "at_or_above":
            actual = tokens + draw(st.sampled_from([0, 0, 0, 1, burst]))
        else:
            actual = draw(st.integers(0, tokens))
        arrivals.append(
            Arrival(
                gap_ns=draw(
                    st.sampled_from([0, 0, 1, full // 10, full // 3, full, 2 * full])
                    | st.integers(0, 2 * full)
                ),
                tokens=tokens,
                requests=draw(st.sampled_from([1, 1, 1, 0])) if rpm else 1,
                timeout_ns=draw(st.none() | st.integers(0, 4 * full)),
                cancel_after_ns=draw(st.none() | st.integers(0, 2 * full)),
                abort_if_granted_for_it=draw(st.booleans()),
                hold_ns=draw(
                    st.sampled_from([0, 1, full // 2, full, 3 * full])
                    | st.integers(0, 3 * full)
                ),
                actual=actual,
            )
        )
    records: list[tuple[int, int]] = []
    if commits == "at_or_above":
        records = draw(
            st.lists(
                st.tuples(st.integers(0, n * full), st.integers(1, 2 * burst)),
                max_size=3,
            )
        )
    return Workload(limit, burst, per_ns, rpm, arrivals, records)


@dataclass
class Trace:
    """What the limiter did: one entry per rate, ``(time_ns, amount)`` each."""

    takes: list[list[tuple[int, int]]]  # estimates taken by claimed grants
    usage: list[list[tuple[int, int]]]  # final usage of claimed grants, at grant time
    charges: list[list[tuple[int, Fraction]]]  # overuse the bucket took (as debt)
    unserved: int


def run(workload: Workload) -> Trace:
    limits = [
        Rate(tokens=workload.limit, per=workload.per_ns / NS, burst=workload.burst)
    ]
    if workload.rpm is not None:
        limits.append(Rate(requests=workload.rpm[0], per=1, burst=workload.rpm[1]))
    assert limits[0]._per_ns == workload.per_ns
    sim = Sim(limits)
    nrates = len(limits)
    reqs: list[tuple[int, ...]] = [
        (a.tokens, a.requests) if nrates == 2 else (a.tokens,)
        for a in workload.arrivals
    ]
    events: list[tuple[int, int, str, int]] = []  # (time, seq, kind, tag)
    seq = itertools.count()
    t = 0
    for tag, a in enumerate(workload.arrivals):
        t += a.gap_ns
        heapq.heappush(events, (t, next(seq), "arrive", tag))
        if a.cancel_after_ns is not None:
            heapq.heappush(events, (t + a.cancel_after_ns, next(seq), "cancel", tag))
        if a.abort_if_granted_for_it:
            sim.abort_when_granted.add(tag)
    for at, amount in workload.records:
        heapq.heappush(events, (at, next(seq), "record", amount))

    def schedule_commit(tag: int) -> None:
        hold = workload.arrivals[tag].hold_ns
        heapq.heappush(events, (sim.now + hold, next(seq), "commit", tag))

    sim.on_grant = schedule_commit
    charges: list[list[tuple[int, Fraction]]] = [[] for _ in limits]
    bucket = sim.engine.plan.rates[0][1]
    while events or sim.next_wake() is not None:
        if sim.step(events[0][0] if events else None):
            continue  # a wake-up came first; it may have scheduled commits
        at, _, kind, tag = heapq.heappop(events)
        if kind == "arrive":
            a = workload.arrivals[tag]
            sim.arrive(tag, reqs[tag], a.timeout_ns)
        elif kind == "cancel":
            sim.cancel(tag)
        elif kind == "record":
            record = (tag, 0) if nrates == 2 else (tag,)
            before = bucket.now(sim.now)
            sim._wake(sim.engine.record(record)[0])
            # what the bucket took: a debt stops at one period of the rate
            charges[0].append((sim.now, Fraction(before - bucket.level, bucket.per)))
            assert bucket.level >= -workload.limit * bucket.per  # one period, at most
            sim.run_ready()
        else:  # commit
            a = workload.arrivals[tag]
            actual = (a.actual, a.requests) if nrates == 2 else (a.actual,)
            before = bucket.now(sim.now)
            woken, _ = sim.engine.settle(sim.lease_ids[tag], reqs[tag], actual)
            if a.actual > a.tokens:
                taken = Fraction(before - bucket.level, bucket.per)
                assert 0 <= taken <= a.actual - a.tokens
                charges[0].append((sim.now, taken))
            sim._wake(woken)
            sim.run_ready()
    takes: list[list[tuple[int, int]]] = [[] for _ in limits]
    usage: list[list[tuple[int, int]]] = [[] for _ in limits]
    for tag, at in sim.granted.items():
        for i in range(nrates):
            takes[i].append((at, reqs[tag][i]))
        usage[0].append((at, min(workload.arrivals[tag].actual, reqs[tag][0])))
        if nrates == 2:
            usage[1].append((at, reqs[tag][1]))
    # every arrival ends granted, failed (timeout), cancelled or aborted after grant
    return Trace(takes, usage, charges, unserved=len(sim.sleeping))


def rate_params(workload: Workload) -> Iterator[tuple[int, int, int, int]]:
    """(index, limit, burst, per_ns) of each rate of the workload's limiter."""
    yield 0, workload.limit, workload.burst, workload.per_ns
    if workload.rpm is not None:
        yield 1, workload.rpm[0], workload.rpm[1], NS


# -- the properties ----------------------------------------------------------------


class TestWindowBoundOnTheEngine:
    @settings(max_examples=150, deadline=None)
    @given(workloads("at_or_above"))
    def test_grants_in_every_window_stay_within_burst_plus_rate(
        self, workload: Workload
    ) -> None:
        """Contract 2 with commits at or above the estimate, records, timeouts
        and cancellations: the estimates granted in any window [t1, t2] never
        exceed burst + limit/per * (t2 - t1); and overuse charged before a
        grant is debt that counts against the window too (grants in [t1, t2]
        plus what the bucket took of charges in [t1, t2) stay within the same
        bound; a debt stops at one period of the rate).
        """
        trace = run(workload)
        assert trace.unserved == 0, "a waiter was left waiting with nobody to wake it"
        for i, limit, burst, per_ns in rate_params(workload):
            bad = window_violations(trace.takes[i], limit, burst, per_ns)
            assert not bad, f"rate {i}: windows over the bound: {bad[:3]}"
        per_ns = workload.per_ns
        takes = [(t, n) for t, n in trace.takes[0] if n]
        times = sorted({t for t, _ in takes})
        for i, t1 in enumerate(times):
            for t2 in times[i:]:
                granted = sum(n for t, n in takes if t1 <= t <= t2)
                charged = sum(n for t, n in trace.charges[0] if t1 <= t < t2)
                bound = workload.burst * per_ns + workload.limit * (t2 - t1)
                assert (granted + charged) * per_ns <= bound, (t1, t2, granted, charged)

    @settings(max_examples=150, deadline=None)
    @given(workloads("at_or_below"))
    @example(  # A holds its lease 10 s while the bucket refills, then refunds it all
        Workload(
            limit=1,
            burst=10,
            per_ns=NS,
            rpm=None,
            arrivals=[
                Arrival(0, 10, 1, None, None, False, hold_ns=10 * NS, actual=0),
                Arrival(10 * NS, 10, 1, None, None, False, hold_ns=0, actual=10),
                Arrival(0, 10, 1, None, None, False, hold_ns=0, actual=10),
            ],
        )
    )
    def test_usage_granted_in_every_window_stays_within_burst_plus_rate_with_refunds(
        self, workload: Workload
    ) -> None:
        """Contract 2 with commits below the estimate: what the leases granted in
        any window [t1, t2] really used (what the provider sees) never exceeds
        burst + limit/per * (t2 - t1). A refund must not mint tokens that the
        bucket would have lost to its burst while the lease was held.
        """
        trace = run(workload)
        assert trace.unserved == 0, "a waiter was left waiting with nobody to wake it"
        for i, limit, burst, per_ns in rate_params(workload):
            bad = window_violations(trace.usage[i], limit, burst, per_ns)
            assert not bad, f"rate {i}: windows over the bound: {bad[:3]}"


# -- refunds against a reference bucket ------------------------------------------


def replay_levels(
    capacity: int, rate: int, takes: list[tuple[int, int]], until: int
) -> int:
    """A plain bucket (unit-ns): refill, clamp, take; the level at ``until``."""
    level, last = capacity, 0
    for at, amount in takes:
        level = min(capacity, level + rate * (at - last))
        last = at
        level -= amount
    return min(capacity, level + rate * (until - last))


@st.composite
def refund_cases(
    draw: st.DrawFn,
) -> tuple[int, int, list[tuple[int, int]], int, int, int]:
    """(burst, limit per second, takes (gap_ns, units), lease index, refund, end gap)."""
    burst = draw(st.integers(1, 50))
    limit = draw(st.integers(1, 50))
    takes = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0, 0, 1, NS // 10, NS]) | st.integers(0, 3 * NS),
                st.integers(0, burst),
            ),
            min_size=1,
            max_size=80,
        )
    )
    lease = draw(st.integers(0, len(takes) - 1))
    refund = draw(st.integers(0, takes[lease][1]))
    end_gap = draw(st.sampled_from([0, 1, NS]) | st.integers(0, 3 * NS))
    return burst, limit, takes, lease, refund, end_gap


class TestRefundsMatchABucketThatNeverTookThem:
    @settings(max_examples=300, deadline=None)
    @given(refund_cases())
    @example((10, 1, [(0, 10), (10 * NS, 10)], 0, 10, 0))  # the 2x-burst case
    @example((100, 1, [(0, 1)] * 40, 0, 1, 0))  # more peaks than are kept
    def test_a_refund_leaves_the_level_of_a_bucket_that_took_less_from_the_start(
        self, case: tuple[int, int, list[tuple[int, int]], int, int, int]
    ) -> None:
        """Refunding part of a take must leave the bucket exactly where it
        would be had the take been smaller from the start (the clamp at the
        burst included), or lower when the peak history was trimmed; it never
        mints a token the smaller take would not have left.
        """
        burst, limit, takes, lease, refund, end_gap = case
        (r,) = plan_spec((Rate(tokens=limit, per=1, burst=burst),), 1).slots
        assert isinstance(r, RateSpec)
        slot = Bucket(r.key, r.rate, r.per, r.cap, r.cap, 0)
        per = slot.per
        now, ids, timeline = 0, [], []
        for take, (gap, amount) in enumerate(takes, 1):
            now += gap
            slot.now(now)
            slot.mark(take)
            slot.level -= amount * per
            ids.append(take)
            timeline.append((now, amount * per))
        end = now + end_gap
        trimmed = distinct_peaks_beyond_kept(slot, timeline)
        slot.refund(ids[lease], refund * per, end)
        smaller = list(timeline)
        smaller[lease] = (smaller[lease][0], smaller[lease][1] - refund * per)
        expected = replay_levels(slot.cap, slot.rate, smaller, end)
        unrefunded = replay_levels(slot.cap, slot.rate, timeline, end)
        assert unrefunded <= slot.level <= expected
        if not trimmed:
            assert slot.level == expected


def distinct_peaks_beyond_kept(slot: Bucket, timeline: list[tuple[int, int]]) -> bool:
    """Whether the slot may have forgotten peaks (more takes than it keeps)."""
    return len(timeline) > _PEAKS_KEPT


# -- the forecast of the queue's schedule is exact ---------------------------------


@st.composite
def plain_queues(draw: st.DrawFn) -> Workload:
    """Arrivals only: no timeouts, cancels, records, nor commits off the estimate."""
    workload = draw(workloads("at_or_above"))
    arrivals = [
        Arrival(a.gap_ns, a.tokens, a.requests, None, None, False, a.hold_ns, a.tokens)
        for a in workload.arrivals
    ]
    return Workload(
        workload.limit, workload.burst, workload.per_ns, workload.rpm, arrivals
    )


class TestTheForecastIsTheSchedule:
    @settings(max_examples=150, deadline=None)
    @given(plain_queues())
    @example(  # RPM + TPM: the requests rate clamps while the queue waits on tokens
        Workload(
            limit=100,
            burst=100,
            per_ns=10 * NS,
            rpm=(10, 1),
            arrivals=[
                Arrival(0, 100, 0, None, None, False, 0, 100),
                Arrival(0, 100, 1, None, None, False, 0, 100),
                Arrival(0, 0, 1, None, None, False, 0, 0),
            ],
        )
    )
    def test_each_caller_is_served_exactly_when_the_engine_foresaw(
        self, workload: Workload
    ) -> None:
        """With nothing but arrivals (FIFO, several rates), the wait the
        engine foresees for a caller (what ``timeout=`` is checked against)
        is the wait it gets: never longer, so nobody is refused who would
        have been served in time, and never shorter, so the fail-fast check
        misses nothing it could know.
        """
        limits = [
            Rate(tokens=workload.limit, per=workload.per_ns / NS, burst=workload.burst)
        ]
        if workload.rpm is not None:
            limits.append(Rate(requests=workload.rpm[0], per=1, burst=workload.rpm[1]))
        sim = Sim(limits)
        foreseen: dict[int, int] = {}
        t = 0
        for tag, a in enumerate(workload.arrivals):
            t += a.gap_ns
            while sim.step(t):
                pass
            req = (a.tokens, a.requests) if workload.rpm else (a.tokens,)
            foreseen[tag] = sim.now + sim.engine.foresee(req)
            sim.arrive(tag, req, None)
        while sim.step(None):
            pass
        assert sim.sleeping == {}
        assert sim.granted == foreseen


class TestTheHelpersCanTell:
    @pytest.mark.parametrize("n", [1, 7])
    def test_advance_to_ns_lands_on_the_exact_nanosecond(self, n: int) -> None:
        """``advance(next_deadline())`` may overshoot by 1 ns; this must not."""
        clock = FakeClock()
        for step in (61, 121, 123_456_789, 83 * 10**8):
            advance_to_ns(clock, clock.monotonic_ns() + step * n)
        assert clock.monotonic_ns() == (61 + 121 + 123_456_789 + 83 * 10**8) * n

    def test_helper_flags_a_burst_twice_the_bucket(self) -> None:
        """The checker itself can fail: 20 at one instant on a burst of 10."""
        assert window_violations([(5, 10), (5, 10)], limit=1, burst=10, per_ns=NS)

    def test_helper_accepts_a_bucket_refilled_in_time(self) -> None:
        events = [(0, 10), (10 * NS, 10)]
        assert not window_violations(events, limit=1, burst=10, per_ns=NS)
        assert window_violations(events, limit=1, burst=10, per_ns=2 * NS)


# -- the same through the public Limiter, on both backends ---------------------------


@st.composite
def task_plans(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int, bool, int]]]:
    """(limit per second, burst, [(gap_ns, tokens, cancel a waiter, overuse)])."""
    limit = draw(st.integers(1, 20))
    burst = draw(st.integers(1, 20))
    calls = draw(
        st.lists(
            st.tuples(
                st.integers(0, 2 * NS),
                st.integers(1, burst),
                st.booleans(),
                st.integers(0, 2),
            ),
            min_size=1,
            max_size=25,
        )
    )
    return limit, burst, calls


class TestWindowBoundThroughTheLimiter:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(task_plans())
    async def test_tasks_granted_in_every_window_stay_within_burst_plus_rate(
        self, plan: tuple[int, int, list[tuple[int, int, bool, int]]]
    ) -> None:
        """Tasks arriving at random fake times, some cancelled by a cancel
        scope while they wait, some committing above their estimate: the
        grants they observe respect contract 2 on asyncio and trio alike.
        """
        limit, burst, calls = plan
        clock = FakeClock()
        limiter = Limiter(Rate(tokens=limit, per=1, burst=burst), clock=clock)
        grants: list[tuple[int, int]] = []
        scopes: list[anyio.CancelScope] = []

        async def caller(tokens: int, overuse: int, scope: anyio.CancelScope) -> None:
            with scope:
                lease = await limiter.acquire(tokens)
                grants.append((clock.monotonic_ns(), tokens))
                await lease.commit(tokens=tokens + overuse)

        async with anyio.create_task_group() as tg:
            for gap, tokens, cancel, overuse in calls:
                target = clock.monotonic_ns() + gap
                while (d := clock.next_deadline()) is not None and (
                    clock.monotonic_ns() + round(d * NS) <= target
                ):
                    advance_to_ns(clock, clock.monotonic_ns() + round(d * NS))
                    await settle()
                advance_to_ns(clock, target)
                await settle()
                scope = anyio.CancelScope()
                scopes.append(scope)
                tg.start_soon(caller, tokens, overuse, scope)
                await settle()
                if cancel:
                    scopes[len(scopes) // 2].cancel()
                    await settle()
            while (d := clock.next_deadline()) is not None:
                advance_to_ns(clock, clock.monotonic_ns() + round(d * NS))
                await settle()
        assert not window_violations(grants, limit, burst, NS)
        snap = await limiter.snapshot()
        assert snap.waiting == 0
