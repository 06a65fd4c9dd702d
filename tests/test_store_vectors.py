"""The persistent stores agree with ``_core.run``, decision for decision.

Every scenario (a plan, batches of operations at explicit times) runs through
``_core.run`` on one ``State`` carried from batch to batch (persistence as the
SQLite store does it: the dirty sets and ``expiring`` start afresh each batch,
spent records are dropped after it), through ``RedisStore`` (``decide.lua``,
against a private ``redis-server``) and through ``SQLiteStore``; the three
must answer identically. Some batches also pin the expected answers, which
checks the core itself. A hypothesis test does the same with random batches.

The end of the file tests what only the Redis store does: one round trip per
batch, the script cache, its errors, expiry, persistence warnings, restarts.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratebudget import InvalidRequest, StoreUnavailable
from ratebudget.stores import _core
from ratebudget.stores._core import ACTIVE, CapP, Plan, RateP, State
from ratebudget.stores.redis import SCRIPT_PATH, RedisStore
from ratebudget.stores.sqlite import SQLiteStore
from redis_server import redis_server_or_skip, redis_url_or_skip

# -- scenarios ---------------------------------------------------------------

Op = list[Any]


@dataclass
class Batch:
    now: int
    ops: list[Op]
    expect: list[Any] | None = None  # the answers, when pinned
    plan: Plan | None = None  # another plan than the scenario's (redeclared)


@dataclass
class Scenario:
    id: str
    plan: Plan
    batches: list[Batch]
    keep: int = 1_000


T = 10_000  # a lease TTL long enough not to matter
R = RateP("r:tokens", 1, 10, 100)  # 10 units of burst, one unit per 10 µs
R2 = RateP("r:requests", 1, 1, 50)  # 50 units of burst, one unit per µs
HARD = CapP("c:usd:month:UTC:hard", 100, True)
SOFT = CapP("c:usd:life:UTC:soft", 50, False)
RATE = Plan((R,))
TWO = Plan((R, R2))
CAPS = Plan((R, HARD, SOFT))
P1 = ["", "2026-11", ""]  # the periods of CAPS' slots
P2 = ["", "2026-12", ""]
NP: list[str] = ["", ""]
N1: list[str] = [""]


def acq(
    lease: str, req: list[int], periods: list[str], timeout: int = -1, ttl: int = T
) -> Op:
    return ["acquire", lease, req, timeout, ttl, periods]


def settle(
    lease: str, actual: list[int] | None, periods: list[str], ttl: int = 500
) -> Op:
    return ["settle", lease, actual, ttl, periods]


def snap(periods: list[str]) -> Op:
    return ["snapshot", periods]


SCENARIOS = [
    Scenario(
        "rate-grants-debt-wait",
        RATE,
        [
            Batch(
                1000,
                [acq("a", [4], N1), acq("b", [4], N1), acq("c", [4], N1), snap(N1)],
                [["ok", 0], ["ok", 0], ["ok", 20], ["ok", [[-20]], 1000]],
            ),
            Batch(1030, [snap(N1)], [["ok", [[10]], 1030]]),
            Batch(1030, [acq("d", [10], N1)], [["ok", 90]]),
            Batch(5000, [snap(N1)], [["ok", [[100]], 5000]]),
        ],
    ),
    Scenario(
        "timeout-refusal",
        RATE,
        [
            Batch(0, [acq("a", [8], N1)], [["ok", 0]]),
            Batch(
                0,
                [
                    acq("b", [4], N1, timeout=19),
                    snap(N1),
                    acq("c", [4], N1, timeout=20),
                ],
                [["timeout", 20], ["ok", [[20]], 0], ["ok", 20]],
            ),
            Batch(0, [acq("b", [4], N1, timeout=0)], [["timeout", 60]]),
        ],
    ),
    Scenario(
        "multi-rate-booked-at-proceed-time",
        TWO,
        [
            Batch(
                100,
                [acq("x", [10, 0], NP), acq("y", [1, 5], NP), snap(NP)],
                [["ok", 0], ["ok", 10], ["ok", [[-10], [35]], 100]],
            ),
            # released before its time: both takes go back, within the clamp
            Batch(105, [settle("y", None, NP), snap(NP)]),
            Batch(200, [acq("z", [3, 50], NP), acq("w", [0, 1], NP), snap(NP)]),
            Batch(230, [settle("z", [1, 10], NP), snap(NP)]),
        ],
    ),
    Scenario(
        "cap-exceeded",
        CAPS,
        [
            Batch(
                10,
                [["record", [0, 90, 0], P1], acq("a", [1, 20, 0], P1), snap(P1)],
                [
                    ["ok", [[1, 0, 90]]],
                    ["exceeded", 1, 90, 0],
                    ["ok", [[100], [90, 0], [0, 0]], 10],
                ],
            ),
            # another month: a fresh counter
            Batch(20, [acq("a", [1, 20, 0], P2)], [["ok", 0]]),
            # a soft cap never refuses
            Batch(
                30,
                [acq("b", [0, 0, 80], P2), settle("b", [0, 0, 90], P2)],
                [["ok", 0], ["ok", [[2, 0, 90]]]],
            ),
        ],
    ),
    Scenario(
        "cap-blocked-by-reservations",
        CAPS,
        [
            Batch(
                10,
                [acq("a", [0, 60, 0], P1), acq("b", [0, 50, 0], P1), snap(P1)],
                [
                    ["ok", 0],
                    ["blocked", 1, 0, 60],
                    ["ok", [[100], [0, 60], [0, 0]], 10],
                ],
            ),
            Batch(
                20,
                [settle("a", [1, 30, 5], P1), acq("b", [0, 50, 0], P1), snap(P1)],
                [
                    ["ok", [[1, 0, 30], [2, 0, 5]]],
                    ["ok", 0],
                    ["ok", [[90], [30, 50], [5, 0]], 20],
                ],
            ),
            Batch(30, [acq("c", [0, 21, 0], P1)], [["blocked", 1, 30, 50]]),
            Batch(30, [acq("c", [0, 71, 0], P1)], [["exceeded", 1, 30, 50]]),
        ],
    ),
    Scenario(
        "commit-below-and-above-the-estimate",
        RATE,
        [
            Batch(1000, [acq("a", [5], N1)], [["ok", 0]]),
            Batch(
                1010,
                [settle("a", [2], N1), snap(N1)],
                [["ok", []], ["ok", [[90]], 1010]],
            ),
            Batch(2000, [acq("b", [5], N1)], [["ok", 0]]),
            # the bucket would have refilled to the burst anyway: no refund
            Batch(
                2060,
                [settle("b", [0], N1), snap(N1)],
                [["ok", []], ["ok", [[100]], 2060]],
            ),
            Batch(3000, [acq("c", [2], N1)], [["ok", 0]]),
            Batch(
                3000,
                [settle("c", [8], N1), snap(N1), acq("d", [1], N1)],
                [["ok", []], ["ok", [[20]], 3000], ["ok", 0]],
            ),
            Batch(
                3000,
                [settle("d", [12], N1), snap(N1)],
                [["ok", []], ["ok", [[-100]], 3000]],
            ),
        ],
    ),
    Scenario(
        "release-before-and-after-go",
        RATE,
        [
            Batch(0, [acq("a", [10], N1), acq("b", [5], N1)], [["ok", 0], ["ok", 50]]),
            Batch(
                10,
                [settle("b", None, N1), snap(N1)],
                [["ok", []], ["ok", [[10]], 10]],
            ),
            Batch(10, [acq("c", [5], N1)], [["ok", 40]]),
            Batch(
                60, [settle("c", None, N1), snap(N1)], [["ok", []], ["ok", [[10]], 60]]
            ),
            Batch(100, [acq("d", [1], N1), settle("d", None, N1), snap(N1)]),
        ],
    ),
    Scenario(
        "idempotent-retry-settle-twice-extend",
        CAPS,
        [
            Batch(
                0,
                [
                    acq("a", [10, 10, 0], P1),
                    acq("b", [5, 10, 0], P1),
                    acq("b", [5, 10, 0], P1),
                ],
                [["ok", 0], ["ok", 50], ["ok", 50]],
            ),
            Batch(
                20,
                [acq("b", [5, 10, 0], P1), snap(P1), ["extend", "b", 20_000]],
                [["ok", 30], ["ok", [[-30], [0, 20], [0, 0]], 20], ["ok", 20_000]],
            ),
            Batch(
                30,
                [["extend", "b", 5], settle("b", [5, 3, 0], P1, ttl=100)],
                [["ok", 19_990], ["ok", [[1, 0, 3]]]],
            ),
            Batch(
                40,
                [
                    settle("b", [5, 3, 0], P1),
                    ["extend", "b", 5],
                    settle("zz", None, P1),
                    ["extend", "zz", 5],
                    acq("b", [5, 10, 0], P1),
                    snap(P1),
                ],
                [
                    ["gone"],
                    ["gone"],
                    ["gone"],
                    ["gone"],
                    ["ok", 10],
                    ["ok", [[-10], [3, 10], [0, 0]], 40],
                ],
            ),
            # the record is dropped at 130: the id is then a new acquisition
            Batch(129, [acq("b", [1, 1, 0], P1)], [["ok", 0]]),
            Batch(130, [acq("b", [1, 1, 0], P1)], [["ok", 0]]),
            Batch(131, [acq("b", [1, 1, 0], P1), snap(P1)]),
        ],
    ),
    Scenario(
        "record",
        CAPS,
        [
            Batch(
                0,
                [
                    ["record", [3, 40, 7], P1],
                    acq("a", [0, 50, 0], P1),
                    ["record", [0, 11, 0], P1],
                    ["record", [2, 10, 60], P1],
                    snap(P1),
                ],
                [
                    ["ok", [[1, 0, 40], [2, 0, 7]]],
                    ["ok", 0],
                    ["exceeded", 1, 40, 50],
                    ["ok", [[1, 40, 50], [2, 7, 67]]],
                    ["ok", [[50], [50, 50], [67, 0]], 0],
                ],
            ),
            Batch(0, [["record", [20, 0, 0], P1], snap(P1)]),
        ],
    ),
    Scenario(
        "snapshot-and-reset",
        CAPS,
        [
            Batch(0, [["record", [0, 30, 20], P1], ["record", [0, 5, 0], P2]]),
            Batch(
                5,
                [acq("a", [0, 10, 10], P1), ["reset", P1], snap(P1), snap(P2)],
                [
                    ["ok", 0],
                    ["ok"],
                    ["ok", [[100], [0, 10], [0, 10]], 5],
                    ["ok", [[100], [5, 10], [0, 10]], 5],
                ],
            ),
            Batch(6, [settle("a", [0, 1, 1], P1), snap(P1)]),
        ],
    ),
    Scenario(
        "lease-expiry-reclaim",
        CAPS,
        [
            Batch(1000, [acq("a", [2, 60, 0], P1, ttl=100)], [["ok", 0]]),
            Batch(1099, [snap(P1)], [["ok", [[100], [0, 60], [0, 0]], 1099]]),
            Batch(
                1100,
                [snap(P1), ["extend", "a", 100]],
                [["ok", [[100], [0, 0], [0, 0]], 1100], ["gone"]],
            ),
            # a late commit still counts, and gives back no reservation twice
            Batch(
                1150,
                [settle("a", [1, 30, 0], P1), snap(P1), acq("a", [1, 1, 0], P1)],
                [
                    ["ok", [[1, 0, 30]]],
                    ["ok", [[100], [30, 0], [0, 0]], 1150],
                    ["ok", 0],
                ],
            ),
            # extended in time: not reclaimed
            Batch(2000, [acq("b", [0, 10, 0], P1, ttl=50), ["extend", "b", 100]]),
            Batch(2060, [snap(P1)], [["ok", [[100], [30, 10], [0, 0]], 2060]]),
            Batch(2100, [snap(P1), settle("b", None, P1)]),
            # waiting leases expire from their proceed time
            Batch(3000, [acq("c", [10, 0, 0], P1), acq("d", [5, 5, 0], P1, ttl=10)]),
            Batch(3059, [snap(P1)], [["ok", [[9], [30, 5], [0, 0]], 3059]]),
            Batch(3060, [snap(P1)], [["ok", [[10], [30, 0], [0, 0]], 3060]]),
        ],
    ),
    Scenario(
        "clock-backwards",
        RATE,
        [
            Batch(2000, [acq("a", [10], N1)], [["ok", 0]]),
            Batch(
                1000, [snap(N1), acq("b", [1], N1)], [["ok", [[0]], 2000], ["ok", 10]]
            ),
            Batch(1500, [snap(N1)], [["ok", [[-10]], 2000]]),
            Batch(2010, [snap(N1)], [["ok", [[0]], 2010]]),
        ],
    ),
    Scenario(
        "expired-records-kept-then-dropped",
        CAPS,
        [
            Batch(0, [acq("a", [1, 1, 0], P1, ttl=10)], [["ok", 0]]),
            # reclaimed at 10, its record kept until 10 + keep (100)
            Batch(50, [acq("a", [9, 9, 0], P1)], [["ok", 0]]),
            Batch(110, [acq("a", [2, 2, 0], P1), snap(P1)]),
        ],
        keep=100,
    ),
    # the SQLite store once left -60 reserved here: it loaded the
    # reservations of the plan's caps and of expiring leases only
    Scenario(
        "redeclared-limiter-settles-an-old-reservation",
        CAPS,
        [
            Batch(0, [acq("a", [1, 60, 0], P1)], [["ok", 0]]),
            Batch(5, [settle("a", [1], N1)], [["ok", []]], plan=RATE),
            Batch(6, [snap(P1)], [["ok", [[96], [0, 0], [0, 0]], 6]]),
        ],
    ),
]


# -- running them ------------------------------------------------------------


class CoreModel:
    """``_core.run`` on one ``State``, persisted as the stores persist it."""

    def __init__(self) -> None:
        self.st = State()

    def execute(
        self, plan: Plan, ops: list[Op], *, keep_us: int, now_us: int
    ) -> list[list[Any]]:
        st = self.st
        st.dirty_rates, st.dirty_used = set(), set()
        st.dirty_reserved, st.dirty_leases = set(), set()
        clock = max(now_us, st.clock)
        st.expiring = [
            lease_id
            for lease_id, rec in st.leases.items()
            if rec is not None and rec["s"] == ACTIVE and rec["exp"] <= clock
        ]
        out = _core.run(st, plan, now_us, keep_us, copy.deepcopy(ops))
        st.leases = {
            lease_id: rec
            for lease_id, rec in st.leases.items()
            if rec is not None and (rec["s"] == ACTIVE or rec["exp"] > st.clock)
        }
        return copy.deepcopy(out)


class Holders:
    """What the limiter's client does with leases that reserve no cap.

    The store keeps no record of them and answers their acquire with what a
    later settle needs; the client sends that along with the settle.
    """

    def __init__(self) -> None:
        self.inline: dict[str, list[Any]] = {}

    def before(self, ops: list[Op]) -> list[Op]:
        return [
            [*op, self.inline[op[1]]]
            if op[0] == "settle" and len(op) == 5 and op[1] in self.inline
            else op
            for op in ops
        ]

    def after(self, ops: list[Op], answers: list[list[Any]]) -> None:
        for op, answer in zip(ops, answers, strict=True):
            if op[0] == "acquire" and answer[0] == "ok" and len(answer) == 4:
                wait, at, rates = answer[1], answer[2], answer[3]
                self.inline[op[1]] = [at, at + wait, rates]


def run_core(sc: Scenario) -> list[list[list[Any]]]:
    model = CoreModel()
    holders = Holders()
    out = []
    for b in sc.batches:
        ops = holders.before(b.ops)
        got = model.execute(b.plan or sc.plan, ops, keep_us=sc.keep, now_us=b.now)
        holders.after(ops, got)
        out.append(got)
    return out


def run_store(store: RedisStore | SQLiteStore, sc: Scenario) -> list[list[list[Any]]]:
    name = f"{sc.id}-{uuid.uuid4().hex[:8]}"
    holders = Holders()
    out = []
    for b in sc.batches:
        ops = holders.before(b.ops)
        got = store.execute(name, b.plan or sc.plan, ops, keep_us=sc.keep, now_us=b.now)
        holders.after(ops, got)
        out.append(got)
    return out


@pytest.fixture(scope="module")
def redis_store() -> Iterator[RedisStore]:
    store = RedisStore(redis_url_or_skip())
    yield store
    store.close()


@pytest.fixture(scope="module")
def redis_store_or_none() -> Iterator[RedisStore | None]:
    """The Redis store, or ``None`` where the Redis tests skip."""
    try:
        url = redis_url_or_skip()
    except pytest.skip.Exception:
        yield None
        return
    store = RedisStore(url)
    yield store
    store.close()


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path_factory.mktemp("vectors") / "vectors.db")
    yield store
    store.close()


def _check_pinned(sc: Scenario, got: list[list[list[Any]]]) -> None:
    for i, (batch, answers) in enumerate(zip(sc.batches, got, strict=True)):
        if batch.expect is not None:
            # pins name the answer's head: an unrecorded lease's acquire also
            # carries what its holder keeps (compared store against core)
            heads = [
                a[:2] if a[0] == "ok" and len(a) == 4 and len(e) == 2 else a
                for a, e in zip(answers, batch.expect, strict=True)
            ]
            assert heads == batch.expect, f"batch {i} at {batch.now}"


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_core_vectors(sc: Scenario) -> None:
    _check_pinned(sc, run_core(sc))


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_redis_matches_core(sc: Scenario, redis_store: RedisStore) -> None:
    assert run_store(redis_store, sc) == run_core(sc)


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_sqlite_matches_core(sc: Scenario, sqlite_store: SQLiteStore) -> None:
    assert run_store(sqlite_store, sc) == run_core(sc)


# -- random batches ----------------------------------------------------------

HYPO = Plan(
    (
        RateP("r:a", 1, 4, 40),
        CapP("c:h", 20, True),
        RateP("r:b", 3, 2, 30),
        CapP("c:s", 15, False),
    )
)
# the same shape at the sizes of real use: amounts of ~10**10 units (USD in
# nano-dollars), wall-clock microseconds, bursts of ~10**13 level units
UNIT = 10**10 + 1
TICK = 10**8 + 7
WALL = 1_780_000_000_000_000
BIG = Plan(
    (
        RateP("r:a", 125, 108, 10 * UNIT * 108),
        CapP("c:h", 20 * UNIT, True),
        RateP("r:b", 89, 97, 15 * UNIT * 97),
        CapP("c:s", 15 * UNIT, False),
    )
)


def scaled(op: Op, unit: int, tick: int) -> Op:
    """``op`` with its amounts in ``unit`` and its durations in ``tick``."""
    kind = op[0]
    if kind == "acquire":
        timeout = op[3] if op[3] < 0 else op[3] * tick
        return [kind, op[1], [n * unit for n in op[2]], timeout, op[4] * tick, op[5]]
    if kind == "settle":
        actual = None if op[2] is None else [n * unit for n in op[2]]
        return [kind, op[1], actual, op[3] * tick, op[4]]
    if kind == "extend":
        return [kind, op[1], op[2] * tick]
    if kind == "record":
        return [kind, [n * unit for n in op[1]], op[2]]
    return op


IDS = st.sampled_from(["a", "b", "c"])
PERIODS = st.builds(
    lambda h, s: ["", h, "", s],
    st.sampled_from(["p1", "p1", "p2"]),
    st.sampled_from(["", "p1"]),
)
AMOUNTS = st.builds(
    lambda a, h, b, s: [a, h, b, s],
    st.integers(0, 14),
    st.integers(0, 12),
    st.integers(0, 20),
    st.integers(0, 9),
)
TTL = st.integers(0, 120)
ACQUIRE = st.builds(
    lambda i, r, t, ttl, p: ["acquire", i, r, t, ttl, p],
    IDS,
    AMOUNTS,
    st.one_of(st.just(-1), st.integers(0, 60)),
    TTL,
    PERIODS,
)
SETTLE = st.builds(
    lambda i, a, ttl, p: ["settle", i, a, ttl, p],
    IDS,
    st.one_of(st.none(), AMOUNTS),
    TTL,
    PERIODS,
)
# acquisitions and settlements weigh most; a reset now and then
OPS = st.sampled_from(
    [ACQUIRE] * 4
    + [SETTLE] * 3
    + [
        st.builds(lambda i, ttl: ["extend", i, ttl], IDS, TTL),
        st.builds(lambda r, p: ["record", r, p], AMOUNTS, PERIODS),
        st.builds(lambda p: ["snapshot", p], PERIODS),
    ]
    + [st.builds(lambda p: ["reset", p], PERIODS)]
).flatmap(lambda strategy: strategy)
BATCHES = st.lists(
    st.tuples(st.integers(-30, 80), st.lists(OPS, min_size=1, max_size=6)),
    min_size=1,
    max_size=10,
)


@settings(max_examples=50, deadline=None)
@given(batches=BATCHES, keep=st.integers(0, 100), big=st.booleans())
def test_random_batches_agree(
    batches: list[tuple[int, list[Op]]],
    keep: int,
    big: bool,
    redis_store_or_none: RedisStore | None,
    sqlite_store: SQLiteStore,
) -> None:
    plan, now, unit, tick = (BIG, WALL, UNIT, TICK) if big else (HYPO, 1_000, 1, 1)
    timed = []
    for dt, ops in batches:
        now += dt * tick
        timed.append(Batch(now, [scaled(op, unit, tick) for op in ops]))
    sc = Scenario("random", plan, timed, keep=keep * tick)
    core = run_core(sc)
    if redis_store_or_none is not None:
        assert run_store(redis_store_or_none, sc) == core
    assert run_store(sqlite_store, sc) == core


# -- the Redis store's own behaviour -----------------------------------------


def _calls(stats: dict[str, dict[str, Any]], command: str) -> int:
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_one_round_trip_per_batch_and_noscript_fallback() -> None:
    with redis_server_or_skip() as server:
        store = RedisStore(server.url)
        try:
            ops = [acq("a", [1], N1), snap(N1)]
            store.execute("trips", RATE, ops, keep_us=10, now_us=1)
            before = server.info_commandstats()
            for i in range(5):
                store.execute("trips", RATE, [snap(N1)], keep_us=10, now_us=2 + i)
            after = server.info_commandstats()
            assert _calls(after, "evalsha") - _calls(before, "evalsha") == 5
            assert _calls(after, "eval") == _calls(before, "eval") == 1
            assert _calls(after, "script|load") == 0
            client = server.client()
            try:
                client.script_flush()
            finally:
                client.close()
            (got,) = store.execute("trips", RATE, [snap(N1)], keep_us=10, now_us=10)
            assert got[0] == "ok"
            assert _calls(server.info_commandstats(), "eval") == 2
        finally:
            store.close()


def test_script_file_is_packaged() -> None:
    assert SCRIPT_PATH.is_file()
    assert "_core.py" in SCRIPT_PATH.read_text(encoding="utf-8")


def test_unreachable_redis_is_store_unavailable() -> None:
    pytest.importorskip("redis")
    import redis

    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(StoreUnavailable) as info:
        store.execute("x", RATE, [snap(N1)], keep_us=10)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(StoreUnavailable):
        store.register("x", {"limits": []})
    store.close()


def test_unrepresentable_plans_are_refused(redis_store: RedisStore) -> None:
    huge = Plan(
        (RateP("r:usd", 1_000_000_001, 86_400_000_000, 86_400_000_086_400_000_000),)
    )
    with pytest.raises(InvalidRequest, match=r"2\*\*53.*rounder limit or period"):
        redis_store.execute("huge", huge, [snap(N1)], keep_us=10, now_us=1)
    with pytest.raises(InvalidRequest, match=r"2\*\*53"):
        redis_store.validate(Plan((CapP("c:usd", 2**52, True),)))
    redis_store.validate(
        Plan((RateP("r:ok", 1, 60_000_000, 2**50), CapP("c", 2**51, True)))
    )
    with pytest.raises(InvalidRequest, match="now_us"):
        redis_store.execute("neg", RATE, [snap(N1)], keep_us=10, now_us=-5)


def test_now_defaults_to_redis_time(redis_store: RedisStore) -> None:
    before = time.time_ns() // 1000
    (got,) = redis_store.execute(f"t-{uuid.uuid4().hex}", RATE, [snap(N1)], keep_us=10)
    assert got[0] == "ok"
    assert abs(got[2] - before) < 5_000_000  # the same host's clock


def test_registry_and_persistence_warning() -> None:
    with redis_server_or_skip(appendonly=False, save="") as server:
        store = RedisStore(server.url)
        try:
            rates = {"limits": [{"kind": "rate", "axis": "tokens"}]}
            caps = {"limits": [{"kind": "cap", "axis": "usd"}]}
            assert store.register("a", rates) == []
            (warning,) = store.register("b", caps)
            assert "appendonly yes" in warning
            assert store.limiters() == {"a": rates, "b": caps}
        finally:
            store.close()
    with redis_server_or_skip(appendonly=True) as server:
        store = RedisStore(server.url)
        try:
            assert store.register("b", caps) == []
        finally:
            store.close()


def test_keys_expire_when_idle_and_period_counters_age_out(
    redis_store: RedisStore,
) -> None:
    import redis

    name = f"ttl-{uuid.uuid4().hex}"
    ops = [["record", [1, 5, 5], P1], acq("a", [1, 1, 1], P1, ttl=5_000_000)]
    redis_store.execute(name, CAPS, ops, keep_us=10, now_us=1)
    client = redis.Redis.from_url(redis_url_or_skip())
    try:
        tag = "{" + name + "}"
        assert 3_500_000 <= client.pttl(f"{tag}:s") <= 3_600_000  # idle: an hour
        assert abs(client.pttl(f"{tag}:e") - client.pttl(f"{tag}:s")) < 1_000
        month = client.pttl(f"{tag}:u:{HARD.key}|2026-11")
        assert 399 * 86_400_000 < month <= 400 * 86_400_000
        assert client.pttl(f"{tag}:u:{SOFT.key}|") == -1  # a lifetime cap
        # a lease that lives longer than the idle time keeps the keys
        redis_store.execute(
            name,
            CAPS,
            [acq("b", [1, 1, 1], P1, ttl=7_200_000_000)],
            keep_us=10,
            now_us=2,
        )
        assert client.pttl(f"{tag}:s") > 7_000_000
    finally:
        client.close()


def test_settles_wake_blocked_waiters(redis_store: RedisStore) -> None:
    import redis

    name = f"wake-{uuid.uuid4().hex}"
    client: Any = redis.Redis.from_url(redis_url_or_skip())
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("{" + name + "}:wake")
        assert pubsub.get_message(timeout=1) is None
        redis_store.execute(
            name, CAPS, [acq("a", [0, 60, 0], P1)], keep_us=10, now_us=5
        )
        redis_store.execute(name, CAPS, [settle("a", None, P1)], keep_us=10, now_us=6)
        assert pubsub.get_message(timeout=0.2) is None  # nobody was blocked
        redis_store.execute(
            name, CAPS, [acq("b", [0, 60, 0], P1)], keep_us=10, now_us=7
        )
        (blocked,) = redis_store.execute(
            name, CAPS, [acq("c", [0, 60, 0], P1)], keep_us=10, now_us=8
        )
        assert blocked[0] == "blocked"
        redis_store.execute(
            name, CAPS, [settle("b", [0, 1, 0], P1)], keep_us=10, now_us=9
        )
        message = pubsub.get_message(timeout=2)
        assert message is not None
        assert message["channel"] == ("{" + name + "}:wake").encode()
    finally:
        pubsub.close()
        client.close()


@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_cap_usage_survives_a_restart_with_aof(how: str) -> None:
    with redis_server_or_skip(appendonly=True, appendfsync="always") as server:
        store = RedisStore(server.url)
        try:
            store.execute(
                "aof", CAPS, [["record", [0, 42, 7], P1]], keep_us=10, now_us=1
            )
            if how == "kill":
                server.kill()
            else:
                server.stop()
            with pytest.raises(StoreUnavailable):
                store.execute("aof", CAPS, [snap(P1)], keep_us=10, now_us=2)
            server.start()
            (got,) = store.execute("aof", CAPS, [snap(P1)], keep_us=10, now_us=3)
            assert got == ["ok", [[100], [42, 0], [7, 0]], 3]
        finally:
            store.close()


def test_client_argument_is_used_and_left_open() -> None:
    import redis

    client = redis.Redis.from_url(redis_url_or_skip())
    try:
        store = RedisStore("redis://example.invalid/0", client=client)
        (got,) = store.execute(
            f"c-{uuid.uuid4().hex}", RATE, [snap(N1)], keep_us=1, now_us=4
        )
        assert got == ["ok", [[100]], 4]
        store.close()
        assert client.ping()
    finally:
        client.close()


def test_url_password_is_not_shown() -> None:
    pytest.importorskip("redis")
    store = RedisStore("redis://user:s3cret@localhost:6379/0")
    assert "s3cret" not in repr(store)
    store.close()


def test_sqlite_scenarios_use_a_real_file(sqlite_store: SQLiteStore) -> None:
    assert Path(sqlite_store.path).exists()


def test_closed_store_reconnects_and_unknown_ops_are_refused() -> None:
    store = RedisStore(redis_url_or_skip())
    name = f"close-{uuid.uuid4().hex}"
    store.execute(name, RATE, [acq("a", [3], N1)], keep_us=1, now_us=1)
    store.close()
    (got,) = store.execute(name, RATE, [snap(N1)], keep_us=1, now_us=1)
    assert got == ["ok", [[70]], 1]
    with pytest.raises(ValueError, match="unknown store operation 'nap'"):
        store.execute(name, RATE, [["nap", N1]], keep_us=1, now_us=1)
    store.close()
