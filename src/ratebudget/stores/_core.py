"""The decisions of the persistent stores, as pure functions over plain data.

The SQLite store loads a limiter's rows, runs a batch of operations through
``run`` inside one ``BEGIN IMMEDIATE`` transaction and writes back what
changed; the Redis store runs ``lua/decide.lua``, a line-by-line mirror of
this module, inside one script call. ``tests/test_store_vectors.py`` replays
the same vectors through both.

Time is integer microseconds on the store's clock (Redis' ``TIME``, or the
wall clock for SQLite), clamped so it never runs backwards. A rate's level is
kept in units x ``per`` (both reduced by their gcd) like the memory store's,
so refilling adds ``rate`` per microsecond and every quantity is an integer.

Scheduling is the reservation scheme of ``golang.org/x/time/rate``: an
acquisition takes its amounts at once (a rate may go into debt) and learns
the moment it may proceed, so waiting is a local sleep. No grant proceeds
before one that arrived at the store earlier (``tail``), whatever rates each
involves, so order is first come, first served even when a waiter ahead is
cancelled and its tokens go back. With several rates, the take on a rate that
could serve at once is booked as if made at the proceed time (the bucket
keeps nothing that would have been clamped away by then), so a grant that
waits on one rate never lets another rate burst past its limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = (
    "ACTIVE",
    "EXPIRED",
    "SETTLED",
    "CapP",
    "Plan",
    "RateP",
    "State",
    "periods_of_op",
    "run",
)

ACTIVE = 1
EXPIRED = 2  # its cap reservation was reclaimed; a late commit still counts
SETTLED = 3


@dataclass(frozen=True)
class RateP:
    key: str
    rate: int  # level units refilled per microsecond
    per: int  # level units per unit of the axis
    cap: int  # the burst, in level units


@dataclass(frozen=True)
class CapP:
    key: str
    limit: int
    hard: bool


@dataclass(frozen=True)
class Plan:
    """A limiter's limits as the store sees them, in the limiter's order."""

    slots: tuple[RateP | CapP, ...]

    def to_json(self) -> list[list[Any]]:
        return [
            ["r", s.key, s.rate, s.per, s.cap]
            if isinstance(s, RateP)
            else ["c", s.key, s.limit, 1 if s.hard else 0]
            for s in self.slots
        ]


@dataclass
class State:
    """What one batch may read and write; the store loads and saves it.

    ``leases`` holds the records the batch names (``None``: none stored) and
    ``expiring`` the ids of active leases whose expiry has passed.
    """

    clock: int = 0
    tail: int = 0  # the latest proceed time granted: later arrivals go after it
    rates: dict[str, list[int]] = field(default_factory=dict)  # key: [level, last]
    used: dict[str, int] = field(default_factory=dict)  # "capkey|period": used
    reserved: dict[str, int] = field(default_factory=dict)  # capkey: reserved
    leases: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    expiring: list[str] = field(default_factory=list)
    dirty_rates: set[str] = field(default_factory=set)
    dirty_used: set[str] = field(default_factory=set)
    dirty_reserved: set[str] = field(default_factory=set)
    dirty_leases: set[str] = field(default_factory=set)


def _refill(level: int, last: int, now: int, rate: int, cap: int) -> int:
    if now <= last or level >= cap:
        return level
    level += rate * (now - last)
    return cap if level > cap else level


def _level(st: State, p: RateP, now: int) -> int:
    got = st.rates.get(p.key)
    if got is None:
        return p.cap
    return _refill(got[0], got[1], now, p.rate, p.cap)


def _put(st: State, p: RateP, level: int, now: int) -> None:
    st.rates[p.key] = [level, now]
    st.dirty_rates.add(p.key)


def _used_key(p: CapP, period: str) -> str:
    return f"{p.key}|{period}"


def _add_reserved(st: State, key: str, n: int) -> None:
    st.reserved[key] = st.reserved.get(key, 0) + n
    st.dirty_reserved.add(key)


def _save_lease(st: State, lease_id: str, rec: dict[str, Any]) -> None:
    st.leases[lease_id] = rec
    st.dirty_leases.add(lease_id)


def _reclaim(st: State, now: int, keep: int) -> None:
    """Expired active leases give back their cap reservations."""
    for lease_id in st.expiring:
        rec = st.leases.get(lease_id)
        if rec is None or rec["s"] != ACTIVE or rec["exp"] > now:
            continue
        for key, n in rec["caps"].items():
            _add_reserved(st, key, -n)
        rec["s"] = EXPIRED
        rec["exp"] = now + keep
        _save_lease(st, lease_id, rec)


def _acquire(
    st: State,
    plan: Plan,
    now: int,
    lease_id: str,
    req: list[int],
    timeout: int,
    ttl: int,
    periods: list[str],
) -> list[Any]:
    rec = st.leases.get(lease_id)
    if rec is not None:  # a retry: the first call's answer
        return ["ok", max(0, rec["go"] - now)]
    # hard caps: a certain overrun fails, outstanding reservations block
    blocked = -1
    for i, p in enumerate(plan.slots):
        n = req[i]
        if n and isinstance(p, CapP) and p.hard:
            used = st.used.get(_used_key(p, periods[i]), 0)
            reserved = st.reserved.get(p.key, 0)
            if used + n > p.limit:
                return ["exceeded", i, used, reserved]
            if blocked < 0 and used + reserved + n > p.limit:
                blocked = i
    if blocked >= 0:
        p = plan.slots[blocked]
        assert isinstance(p, CapP)
        return [
            "blocked",
            blocked,
            st.used.get(_used_key(p, periods[blocked]), 0),
            st.reserved.get(p.key, 0),
        ]
    wait = 0
    levels: list[int] = []
    for i, p in enumerate(plan.slots):
        if isinstance(p, RateP) and req[i]:
            level = _level(st, p, now)
            levels.append(level)
            need = req[i] * p.per
            if level < need:
                w = -((level - need) // p.rate)
                if w > wait:
                    wait = w
    if now + wait < st.tail:  # first come, first served: never before the last grant
        wait = st.tail - now
    if timeout >= 0 and wait > timeout:
        return ["timeout", wait]
    st.tail = now + wait
    rates: dict[str, list[int]] = {}
    inline: list[list[Any]] = []
    caps: dict[str, int] = {}
    k = 0
    for i, p in enumerate(plan.slots):
        n = req[i]
        if not n:
            continue
        if isinstance(p, RateP):
            level = levels[k]
            k += 1
            # booked as if taken at the proceed time: keep nothing the
            # bucket's clamp would have dropped by then
            top = p.cap - p.rate * wait
            if level > top:
                level = top
            after = level - n * p.per
            rates[p.key] = [n, levels[k - 1] - after, after]
            inline.append([p.key, n, levels[k - 1] - after, after])
            _put(st, p, after, now)
        else:
            caps[p.key] = n
            _add_reserved(st, p.key, n)
    if not caps:
        # it reserves no cap, so nothing needs reclaiming: no record; its
        # holder keeps what a commit or a release needs and sends it along
        return ["ok", wait, now, inline]
    _save_lease(
        st,
        lease_id,
        {
            "s": ACTIVE,
            "at": now,
            "go": now + wait,
            "exp": now + wait + ttl,
            "rates": rates,
            "caps": caps,
        },
    )
    return ["ok", wait]


def _give_back(st: State, p: RateP, rec: dict[str, Any], amount: int, now: int) -> None:
    """Refund ``amount`` level units of ``rec``'s take, no more than is safe.

    The bucket has held at most ``after + rate x (now - at)`` since the take
    (takes only lower it), so a bucket that never took the refunded part
    would have lost anything above the burst to the clamp. And grants that
    are scheduled after this lease (up to ``tail``) were scheduled without
    the refunded tokens: had they been there, those grants would have come
    earlier, so the tokens refilled in that backlog are not given back.
    """
    _n, _taken, after = rec["rates"][p.key]
    level = _level(st, p, now)
    # grants already scheduled behind this lease counted on the tokens that
    # refill meanwhile: those are not given back (as golang.org/x/time/rate)
    backlog = st.tail - rec["go"]
    if backlog > 0:
        amount -= p.rate * backlog
    peak = after + p.rate * (now - rec["at"])
    if peak > p.cap:
        peak = p.cap
    room = p.cap - peak
    if level > peak:  # other refunds lifted it: never above the burst
        room = p.cap - level
    if room > 0 and amount > 0:
        level += amount if amount < room else room
    _put(st, p, level, now)


def _settle(
    st: State,
    plan: Plan,
    now: int,
    lease_id: str,
    actual: list[int] | None,
    ttl: int,
    periods: list[str],
    inline: list[Any] | None = None,
) -> list[Any]:
    rec = st.leases.get(lease_id)
    unrecorded = rec is None and inline is not None
    if unrecorded:  # a lease that reserved no cap: its holder says what it took
        assert inline is not None
        rec = {
            "s": ACTIVE,
            "at": inline[0],
            "go": inline[1],
            "rates": {key: [n, taken, after] for key, n, taken, after in inline[2]},
            "caps": {},
        }
    if rec is None or rec["s"] == SETTLED:
        return ["gone"]
    active = rec["s"] == ACTIVE
    crossed: list[list[int]] = []
    if actual is None:
        if active and now < rec["go"]:
            # cancelled before its time: every token goes back
            for p in plan.slots:
                if isinstance(p, RateP) and p.key in rec["rates"]:
                    _give_back(st, p, rec, rec["rates"][p.key][1], now)
    else:
        for i, p in enumerate(plan.slots):
            if isinstance(p, RateP):
                got = rec["rates"].get(p.key)
                est = got[0] if got is not None else 0
                delta = actual[i] - est
                if delta < 0 and got is not None:
                    _give_back(st, p, rec, -delta * p.per, now)
                elif delta > 0:  # above the estimate: a debt later callers wait off
                    _put(st, p, _level(st, p, now) - delta * p.per, now)
            elif actual[i]:
                key = _used_key(p, periods[i])
                before = st.used.get(key, 0)
                st.used[key] = before + actual[i]
                st.dirty_used.add(key)
                crossed.append([i, before, before + actual[i]])
    if active:
        for key, n in rec["caps"].items():
            _add_reserved(st, key, -n)
    if unrecorded:
        return ["ok", crossed]
    rec["s"] = SETTLED
    rec["exp"] = now + ttl
    _save_lease(st, lease_id, rec)
    return ["ok", crossed]


def _extend(st: State, now: int, lease_id: str, ttl: int) -> list[Any]:
    rec = st.leases.get(lease_id)
    if rec is None or rec["s"] != ACTIVE:
        return ["gone"]
    rec["exp"] = max(rec["exp"], now + ttl)
    _save_lease(st, lease_id, rec)
    return ["ok", rec["exp"] - now]


def _record(
    st: State, plan: Plan, now: int, req: list[int], periods: list[str]
) -> list[Any]:
    for i, p in enumerate(plan.slots):
        n = req[i]
        if n and isinstance(p, CapP) and p.hard:
            used = st.used.get(_used_key(p, periods[i]), 0)
            reserved = st.reserved.get(p.key, 0)
            if used + reserved + n > p.limit:
                return ["exceeded", i, used, reserved]
    crossed: list[list[int]] = []
    for i, p in enumerate(plan.slots):
        n = req[i]
        if not n:
            continue
        if isinstance(p, RateP):
            _put(st, p, _level(st, p, now) - n * p.per, now)
        else:
            key = _used_key(p, periods[i])
            before = st.used.get(key, 0)
            st.used[key] = before + n
            st.dirty_used.add(key)
            crossed.append([i, before, before + n])
    return ["ok", crossed]


def _snapshot(st: State, plan: Plan, now: int, periods: list[str]) -> list[Any]:
    out: list[list[int]] = []
    for i, p in enumerate(plan.slots):
        if isinstance(p, RateP):
            out.append([_level(st, p, now)])
        else:
            out.append(
                [
                    st.used.get(_used_key(p, periods[i]), 0),
                    st.reserved.get(p.key, 0),
                ]
            )
    return ["ok", out, now]


def _reset(st: State, plan: Plan, periods: list[str]) -> list[Any]:
    for i, p in enumerate(plan.slots):
        if isinstance(p, CapP):
            key = _used_key(p, periods[i])
            st.used[key] = 0
            st.dirty_used.add(key)
    return ["ok"]


_PERIODS_AT = {"acquire": 5, "settle": 4, "record": 2, "snapshot": 1, "reset": 1}


def periods_of_op(op: list[Any]) -> list[str]:
    """The period keys an operation names, if any."""
    at = _PERIODS_AT.get(op[0]) if op else None
    if at is None or len(op) <= at or not isinstance(op[at], list):
        return []
    return [str(p) for p in op[at]]


def run(
    st: State, plan: Plan, now: int, keep: int, ops: list[list[Any]]
) -> list[list[Any]]:
    """Run ``ops`` in order at store time ``now`` (clamped to ``st.clock``).

    ``keep`` is how long (µs) an expired or settled lease's record is kept so
    that retries stay idempotent. Each op is a list:

    - ``["acquire", id, req, timeout_us (-1: none), ttl_us, periods]``:
      ``["ok", wait_us]`` (a recorded lease), ``["ok", wait_us, at, rates]``
      (a lease that reserves no cap, unrecorded), ``["timeout", wait_us]``,
      ``["exceeded" | "blocked", slot, used, reserved]``
    - ``["settle", id, actual or None (release), ttl_us, periods, inline?]``
      (``inline``: ``[at, go, [[ratekey, n, taken, after], ...]]``, what an
      acquire of a lease that reserved no cap answered, since the store kept
      no record of it)
    - ``["extend", id, ttl_us]``
    - ``["record", req, periods]``
    - ``["snapshot", periods]``
    - ``["reset", periods]``

    ``req`` and ``actual`` give units per slot of the plan, ``periods`` the
    current period key per slot ("" for a rate or a lifetime cap).
    """
    if now < st.clock:
        now = st.clock
    st.clock = now
    _reclaim(st, now, keep)
    out: list[list[Any]] = []
    for op in ops:
        kind = op[0]
        if kind == "acquire":
            out.append(_acquire(st, plan, now, op[1], op[2], op[3], op[4], op[5]))
        elif kind == "settle":
            inline = op[5] if len(op) > 5 else None
            out.append(_settle(st, plan, now, op[1], op[2], op[3], op[4], inline))
        elif kind == "extend":
            out.append(_extend(st, now, op[1], op[2]))
        elif kind == "record":
            out.append(_record(st, plan, now, op[1], op[2]))
        elif kind == "snapshot":
            out.append(_snapshot(st, plan, now, op[1]))
        elif kind == "reset":
            out.append(_reset(st, plan, op[1]))
        else:
            raise ValueError(f"unknown store operation {kind!r}")
    return out
