"""The shared stores agree with the Python core: same answers, same state.

Every scenario (plans of limiters sharing one name, batches of ops at
explicit store times) runs through three homes of the one algorithm:

- the Python core, ``_state.run_document``, on a document and lease records
  carried from batch to batch as a store keeps them (JSON between batches,
  handed only the records a store would load: expired ones and those the
  batch names);
- ``RedisStore``: ``lua/decide.lua`` against a private ``redis-server``;
- ``SQLiteStore``.

After every batch the three must give the same answers, the same store time
and the same woken waiters, and leave the same state document and lease
records (compared as parsed JSON; Redis' expiry index must hold each
record's ``exp``). Some batches also pin the answers, which checks the core
itself. A hypothesis test does the same with random batches of every op on
several plans sharing one name, with time jumping back and forth past lease
TTLs and calendar periods.

The end of the file tests what only the Redis store does: one round trip per
batch, the script cache, its errors, expiry, wake-ups, restarts.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratebudget import InvalidRequest, StoreUnavailable
from ratebudget._plan import CapSpec, PlanSpec, RateSpec
from ratebudget.stores import _ops as ops
from ratebudget.stores._codec import encode_result, encode_shadowed
from ratebudget.stores._state import run_document, run_path_documents, wanted
from ratebudget.stores.redis import COUNT_MAX, SCRIPT_PATH, RedisStore
from ratebudget.stores.sqlite import SQLiteStore
from redis_server import redis_server_or_skip, redis_url_or_skip

UTC = timezone.utc


def us(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> int:
    """Wall-clock µs of a UTC date and time."""
    when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(when.timestamp()) * 1_000_000


T0 = us(2026, 11, 15)  # scenario times are µs after this
DEC = us(2026, 12, 1) - T0  # when November ends
JAN = us(2027, 1, 1) - T0
FEB10 = us(2027, 2, 10) - T0
MAR = us(2027, 3, 1) - T0

# 10 units of burst, one unit per 10 µs
R = RateSpec("r:tokens", 1, 10, 100)
# 50 units of burst, one unit per µs
R2 = RateSpec("r:requests", 1, 1, 50)
HARD = CapSpec("c:usd:month:UTC:hard", 100, True, "month", UTC)
SOFT = CapSpec("c:usd:life:UTC:soft", 50, False, None, UTC)

RATE = PlanSpec((R,), 1000)
# levels of 16 digits: BIG_C units of burst, 1,000,000,007 per µs; BIG_T µs
# after 537 units it holds BIG_C - 100
BIG_R, BIG_T = 1_000_000_007, 2_000_003
BIG_C = 537 + BIG_T * BIG_R + 100
BIG = PlanSpec((RateSpec("r:big", BIG_R, 1, BIG_C),), 1000)
CAPS = PlanSpec((R, HARD, SOFT), 1000)
# HARD's counter, in shadow: it reports instead of refusing
SHADOWING = PlanSpec(
    (R, CapSpec(HARD.key, 100, False, "month", UTC, shadow=True), SOFT), 1000
)
NOV: tuple[str, int] = ("2026-11", T0 + DEC)  # HARD's period and its end, in November


def acq(
    key: str, *req: int, timeout: int | None = None, wait: bool = True
) -> ops.Acquire:
    return ops.Acquire(key, req, timeout, wait)


def commit(key: str, take: int, est: tuple[int, ...], *actual: int) -> ops.Settle:
    return ops.Settle(key, take, est, actual)


def release(key: str, take: int, est: tuple[int, ...]) -> ops.Settle:
    return ops.Settle(key, take, est, None)


SNAP = ops.Snapshot()


def rate_view(level: int) -> list[Any]:
    return [level, 0, 0, "", None]


def cap_view(
    used: int, reserved: int, period: str = "", end: int | None = None
) -> list[Any]:
    return [0, used, reserved, period, end]


def caps_snap(
    level: int, used: int, reserved: int, soft: int = 0, waiting: int = 0
) -> list[Any]:
    """A snapshot of ``CAPS`` in November."""
    return [
        "snapshot",
        [rate_view(level), cap_view(used, reserved, *NOV), cap_view(soft, 0)],
        waiting,
    ]


# -- scenarios ---------------------------------------------------------------


@dataclass
class Batch:
    at: int  # µs after T0: the time the client sends
    ops: list[ops.Op]
    expect: list[Any] | None = None  # the answers (as _codec writes them), pinned
    woken: list[Any] | None = None  # the woken waiters, pinned
    plan: PlanSpec | None = None  # another limiter of the same name
    shadowed: list[Any] | None = None  # what shadow caps reported, pinned


@dataclass
class Scenario:
    id: str
    plan: PlanSpec
    batches: list[Batch]
    ttl: int = 10_000
    keep: int = 1_000
    sqlite: bool = True  # False: counts near State.exact, which SQLite lacks


SCENARIOS = [
    # acquisitions alone on a plan of rates (the script's hot path), until
    # one would wait
    Scenario(
        "rate-only-acquisitions",
        RATE,
        [
            Batch(
                0,
                [acq("a", 3), acq("b", 3), acq("c", 5, wait=False), acq("d", 4)],
                [["granted", 1], ["granted", 2], ["none"], ["granted", 3]],
                [],
            ),
            Batch(5, [acq("e", 1, wait=False)], [["none"]], []),
            Batch(30, [acq("f", 2), acq("g", 1)], [["granted", 4], ["granted", 5]]),
            Batch(
                31,
                [acq("h", 1), acq("i", 1)],
                [["queued", T0 + 40], ["queued", None]],
                [],
            ),
            Batch(
                40,
                [acq("j", 1, wait=False)],
                [["none"]],
                [["h", ["granted", 6]], ["i", ["queued", T0 + 50]]],
            ),
        ],
    ),
    # the hot path writes a peak of 16 digits (cjson keeps 14: the script
    # formats it itself), then a refund is cut by that peak: by BIG_C - P,
    # which shows in the level
    Scenario(
        "rate-only-hot-path-16-digit-peak",
        BIG,
        [
            # from full: a leaves 1,000 (the full mark), b leaves 537
            Batch(0, [acq("a", BIG_C - 1000), acq("b", 463)]),
            # refilled to P = BIG_C - 100: c's take notes the peak P
            Batch(BIG_T, [acq("c", 1)], [["granted", 3]]),
            # b's 463 back, cut to the 100 the peak leaves: BIG_C - 1
            Batch(
                BIG_T,
                [commit("b", 2, (463,), 0), SNAP],
                [["crossings", []], ["snapshot", [rate_view(BIG_C - 1)], 0]],
            ),
            # and peaks of fewer digits (one cjson.encode), read back the same
            Batch(BIG_T + 1, [acq(k, 2) for k in "hijk"], plan=RATE),
            Batch(BIG_T + 2, [commit("h", 4, (2,), 0), SNAP], plan=RATE),
        ],
    ),
    # the same beside a limiter of the same name with caps: its counters
    # stay as they are, and its lease records send the batch the long way
    Scenario(
        "rate-only-acquisitions-beside-caps",
        RATE,
        [
            Batch(0, [ops.Record((0, 5, 7))], plan=CAPS),
            Batch(1, [acq("a", 2)], [["granted", 1]]),
            Batch(2, [acq("b", 0, 3, 0)], [["granted", 2]], plan=CAPS),
            Batch(3, [acq("c", 1)], [["granted", 3]]),
            Batch(10_003, [acq("d", 1), acq("e", 1)], [["granted", 4], ["granted", 5]]),
        ],
    ),
    Scenario(
        "rate-grants-then-queues-fifo",
        RATE,
        [
            Batch(
                0,
                [acq("a", 4), acq("b", 4), acq("c", 4), acq("d", 2), SNAP],
                [
                    ["granted", 1],
                    ["granted", 2],
                    ["queued", T0 + 20],  # the head learns its time
                    ["queued", None],  # behind it: woken when it is the head
                    ["snapshot", [rate_view(20)], 2],
                ],
                [],
            ),
            # d looks: c's time came, so c is granted on its behalf, and d
            # becomes the head; c then claims its grant
            Batch(
                20,
                [ops.Poll("d"), ops.Poll("c")],
                [["queued", T0 + 40], ["granted", 3]],
                [["c", ["granted", 3]], ["d", ["queued", T0 + 40]]],
            ),
            Batch(
                40,
                [ops.Poll("d"), SNAP],
                [["granted", 4], ["snapshot", [rate_view(0)], 0]],
            ),
            # a retried look finds the claimed grant again
            Batch(41, [ops.Poll("d"), ops.Poll("zz")], [["granted", 4], ["gone"]]),
        ],
    ),
    Scenario(
        "timeouts-refuse-at-once",
        RATE,
        [
            Batch(0, [acq("a", 8)], [["granted", 1]]),
            Batch(
                0,
                [
                    acq("b", 4, timeout=19),
                    acq("c", 4, timeout=20),
                    acq("e", 1, timeout=0),
                ],
                [["t", 20], ["queued", T0 + 20], ["t", 30]],
            ),
            Batch(
                25,
                [ops.Poll("c"), acq("f", 1, timeout=4), acq("g", 1, wait=False), SNAP],
                [["granted", 2], ["t", 5], ["none"], ["snapshot", [rate_view(5)], 0]],
            ),
            # a waiter whose timeout passes leaves the queue on its next look
            Batch(25, [acq("h", 2, timeout=100)], [["queued", T0 + 40]]),
            Batch(30, [acq("i", 1, timeout=100)], [["queued", None]]),
            Batch(
                200,
                [ops.Poll("i"), ops.Poll("h")],
                [["granted", 4], ["granted", 3]],
            ),
        ],
    ),
    Scenario(
        "caps-refuse-block-and-grant-on-a-settle",
        CAPS,
        [
            Batch(
                0,
                [
                    ops.Record((0, 90, 0)),
                    acq("a", 1, 20, 0),
                    acq("b", 1, 5, 0),
                    acq("c", 0, 8, 0),
                    SNAP,
                ],
                [
                    ["crossings", [[1, 0, 90, *NOV]]],
                    ["x", 1, 90, 0, *NOV],
                    ["granted", 1],
                    # blocked by b's reservation: it looks again when that
                    # could expire (its TTL), sooner than the cap's reset
                    ["queued", T0 + 10_000],
                    caps_snap(90, 90, 5, waiting=1),
                ],
            ),
            Batch(
                10,
                [commit("b", 1, (1, 5, 0), 1, 2, 3), acq("d", 0, 9, 0, timeout=100)],
                [
                    ["crossings", [[1, 90, 92, *NOV], [2, 0, 3, "", None]]],
                    ["x", 1, 92, 8, *NOV],
                ],
                [["c", ["granted", 2]]],  # granted on its behalf by the commit
            ),
            Batch(
                20,
                [ops.Poll("c"), ops.Leave("c", (0, 8, 0)), SNAP],
                [["granted", 2], ["none"], caps_snap(100, 92, 0, soft=3)],
            ),
            # a new month: a fresh counter
            Batch(
                DEC + 5,
                [SNAP, acq("e", 0, 100, 0), SNAP],
                [
                    [
                        "snapshot",
                        [
                            rate_view(100),
                            cap_view(0, 0, "2026-12", T0 + JAN),
                            cap_view(3, 0),
                        ],
                        0,
                    ],
                    ["granted", 3],
                    [
                        "snapshot",
                        [
                            rate_view(100),
                            cap_view(0, 100, "2026-12", T0 + JAN),
                            cap_view(3, 0),
                        ],
                        0,
                    ],
                ],
            ),
        ],
    ),
    Scenario(
        "a-waiter-fails-when-its-overrun-becomes-certain",
        CAPS,
        [
            Batch(
                0,
                [acq("a", 0, 60, 0), acq("b", 0, 50, 0)],
                [["granted", 1], ["queued", T0 + 10_000]],  # a's lease could expire
            ),
            Batch(
                5,
                [
                    ops.Record((0, 45, 0)),
                    ops.Record((0, 30, 0)),
                    ops.Record((0, 10, 0)),
                ],
                [
                    ["x", 1, 0, 60, *NOV],  # would not fit beside a's reservation
                    ["crossings", [[1, 0, 30, *NOV]]],
                    ["crossings", [[1, 30, 40, *NOV]]],
                ],
                [],
            ),
            Batch(
                6,
                [commit("a", 1, (0, 60, 0), 0, 60, 0)],
                [["crossings", [[1, 40, 100, *NOV]]]],
                [["b", ["x", 1, 100, 0, *NOV]]],
            ),
            # its owner learns it once; then the store forgets it
            Batch(
                7, [ops.Poll("b"), ops.Poll("b")], [["x", 1, 100, 0, *NOV], ["gone"]]
            ),
        ],
    ),
    Scenario(
        "commit-below-and-above-the-estimate",
        RATE,
        [
            Batch(1000, [acq("a", 5)], [["granted", 1]]),
            Batch(
                1010,
                [commit("a", 1, (5,), 2), SNAP],
                [["crossings", []], ["snapshot", [rate_view(90)], 0]],
            ),
            Batch(2000, [acq("b", 5)], [["granted", 2]]),
            # the bucket would have refilled to the burst anyway: no refund
            Batch(
                2060,
                [commit("b", 2, (5,), 0), SNAP],
                [["crossings", []], ["snapshot", [rate_view(100)], 0]],
            ),
            Batch(
                3000,
                [acq("c", 2), commit("c", 3, (2,), 8), SNAP, acq("d", 1)],
                [
                    ["granted", 3],
                    ["crossings", []],
                    ["snapshot", [rate_view(20)], 0],
                    ["granted", 5],
                ],
            ),
            Batch(
                3000,
                [commit("d", 5, (1,), 12), SNAP, commit("d", 5, (1,), 12)],
                [["crossings", []], ["snapshot", [rate_view(-100)], 0], ["none"]],
            ),
            # debt is waited off before anyone proceeds
            Batch(
                3000,
                [acq("e", 1, timeout=109), acq("f", 1, timeout=110)],
                [["t", 110], ["queued", T0 + 3110]],
            ),
        ],
    ),
    Scenario(
        "leave-queued-and-granted-on-its-behalf",
        RATE,
        [
            Batch(
                0,
                [acq("a", 10), acq("b", 5), acq("c", 5)],
                [["granted", 1], ["queued", T0 + 50], ["queued", None]],
            ),
            Batch(10, [ops.Leave("b", (5,))], [["none"]], [["c", ["queued", T0 + 50]]]),
            Batch(
                50,
                [acq("x", 1), ops.Leave("c", (5,)), ops.Poll("x"), SNAP],
                [
                    ["queued", T0 + 60],
                    ["none"],
                    ["granted", 3],
                    ["snapshot", [rate_view(40)], 0],
                ],
                [["c", ["granted", 2]], ["x", ["granted", 3]]],
            ),
            Batch(51, [ops.Poll("c"), ops.Leave("zz", (1,))], [["gone"], ["none"]]),
        ],
    ),
    Scenario(
        "lease-expiry-reclaim-and-extend",
        CAPS,
        [
            Batch(1000, [acq("a", 2, 60, 0)], [["granted", 1]]),
            Batch(1099, [SNAP], [caps_snap(100, 0, 60)]),
            Batch(
                1100,
                [SNAP, ops.Extend("a", 100)],
                [caps_snap(100, 0, 0), ["bool", 0]],
            ),
            # a late commit still counts, and gives back no reservation twice
            Batch(
                1150,
                [commit("a", 1, (2, 60, 0), 1, 30, 0), SNAP],
                [["crossings", [[1, 0, 30, *NOV]]], caps_snap(100, 30, 0)],
            ),
            Batch(
                2000,
                [
                    acq("b", 0, 10, 0),
                    ops.Extend("b", 100),
                    ops.Extend("b", 300),
                    ops.Extend("b", None),
                ],
                [["granted", 2], ["bool", 1], ["bool", 1], ["bool", 1]],
            ),
            Batch(2299, [SNAP], [caps_snap(100, 30, 10)]),
            Batch(2300, [SNAP], [caps_snap(100, 30, 0)]),
            # the expired record is kept for retries, then dropped
            Batch(
                3299,
                [ops.Poll("b"), commit("b", 2, (0, 10, 0), 0, 1, 0)],
                [["granted", 2], ["crossings", [[1, 30, 31, *NOV]]]],
            ),
            Batch(5000, [ops.Poll("b"), ops.Poll("a")], [["gone"], ["gone"]]),
        ],
        ttl=100,
    ),
    Scenario(
        "a-waiter-whose-owner-stops-looking-leaves",
        CAPS,
        [
            Batch(
                0,
                [acq("a", 0, 60, 0), acq("b", 0, 50, 0)],
                [["granted", 1], ["queued", T0 + 300]],  # a's lease could expire
            ),
            # b's owner never looks again; a's lease is kept alive
            Batch(
                250,
                [ops.Extend("a", 1000), SNAP],
                [["bool", 1], caps_snap(100, 0, 60, waiting=1)],
            ),
            Batch(301, [SNAP], [caps_snap(100, 0, 60, waiting=1)]),
            Batch(
                302, [acq("c", 1, 0, 0), SNAP], [["granted", 2], caps_snap(90, 0, 60)]
            ),
            Batch(303, [ops.Poll("b")], [["gone"]]),
        ],
        ttl=300,
    ),
    Scenario(
        "record-reset-lower",
        CAPS,
        [
            Batch(
                0,
                [
                    ops.Record((3, 40, 7)),
                    acq("a", 0, 50, 0),
                    ops.Record((0, 11, 0)),
                    ops.Record((2, 10, 60)),
                    SNAP,
                ],
                [
                    ["crossings", [[1, 0, 40, *NOV], [2, 0, 7, "", None]]],
                    ["granted", 2],
                    ["x", 1, 40, 50, *NOV],
                    ["crossings", [[1, 40, 50, *NOV], [2, 7, 67, "", None]]],
                    caps_snap(50, 50, 50, soft=67),
                ],
            ),
            Batch(
                5,
                [ops.Reset(), SNAP, ops.Lower(0, 2), SNAP, ops.Lower(0, 9), SNAP],
                [
                    ["none"],
                    caps_snap(100, 0, 50),  # the rate full again, the caps at 0
                    ["none"],
                    caps_snap(20, 0, 50),
                    ["none"],
                    caps_snap(20, 0, 50),
                ],
            ),
        ],
    ),
    Scenario(
        "the-store-clock-never-runs-back",
        RATE,
        [
            Batch(2000, [acq("a", 10)], [["granted", 1]]),
            Batch(
                1000,
                [SNAP, acq("b", 1)],
                [["snapshot", [rate_view(0)], 0], ["queued", T0 + 2010]],
            ),
            Batch(1500, [SNAP], [["snapshot", [rate_view(0)], 1]]),
            Batch(
                2010,
                [ops.Poll("b"), SNAP],
                [["granted", 2], ["snapshot", [rate_view(0)], 0]],
            ),
        ],
    ),
    # Lua knows no time zones: a counter rolls into the windows its caller
    # sends (around the client's clock); with none holding the store's time
    # it keeps its period (``_state.py``, ``decide.lua``)
    Scenario(
        "calendar-windows-come-from-the-caller",
        CAPS,
        [
            Batch(0, [ops.Record((0, 40, 0))], [["crossings", [[1, 0, 40, *NOV]]]]),
            # a rate-only limiter of the name moves the store's clock to
            # February: it has no window for the month cap, which stays put
            Batch(FEB10, [SNAP], [["snapshot", [rate_view(100)], 0]], plan=RATE),
            # a client whose clock is in November sends November's windows:
            # none holds the store's time (February), so nothing rolls
            Batch(5, [SNAP], [caps_snap(100, 40, 0)]),
            Batch(
                FEB10 + 1,
                [SNAP],
                [
                    [
                        "snapshot",
                        [
                            rate_view(100),
                            cap_view(0, 0, "2027-02", T0 + MAR),
                            cap_view(0, 0),
                        ],
                        0,
                    ]
                ],
            ),
        ],
    ),
    Scenario(
        "several-limiters-share-one-name",
        CAPS,
        [
            Batch(0, [acq("a", 10, 0, 0)], [["granted", 1]]),
            # another limiter's waiter queues on the shared rate
            Batch(
                0, [acq("b", 5, 0)], [["queued", T0 + 50]], plan=PlanSpec((R, R2), 1000)
            ),
            Batch(0, [acq("c", 1, 5, 0)], [["queued", None]]),
            # a snapshot runs no queue; a look does
            Batch(50, [SNAP], [caps_snap(50, 0, 0, waiting=2)], []),
            Batch(
                50,
                [ops.Poll("c")],
                [["queued", T0 + 60]],
                [["b", ["granted", 2]], ["c", ["queued", T0 + 60]]],
            ),
            Batch(60, [ops.Poll("c"), SNAP], [["granted", 3], caps_snap(0, 0, 5)]),
            Batch(
                61,
                [commit("b", 2, (5, 0), 1, 0)],
                [["crossings", []]],
                plan=PlanSpec((R, R2), 1000),
            ),
            Batch(
                62,
                [commit("c", 3, (1, 5, 0), 1, 2, 0), SNAP],
                [["crossings", [[1, 0, 2, *NOV]]], caps_snap(42, 2, 0)],
            ),
        ],
    ),
    Scenario(
        "counts-past-the-exact-range-are-refused",
        PlanSpec(
            (RateSpec("r:big", 1, 1, 2**50), CapSpec("c:big", 2**51, False, None, UTC)),
            1000,
        ),
        [
            Batch(
                0,
                [
                    ops.Record((0, 2**51)),
                    ops.Record((0, 2**51)),
                    ops.Record((0, 2**51)),
                    SNAP,
                ],
                [
                    ["crossings", [[1, 0, 2**51, "", None]]],
                    ["crossings", [[1, 2**51, 2**52, "", None]]],
                    ["crossings", [[1, 2**52, 3 * 2**51, "", None]]],
                    ["snapshot", [rate_view(2**50), cap_view(3 * 2**51, 0)], 0],
                ],
            ),
            Batch(
                0,
                [
                    ops.Record((0, 2**51)),
                    ops.Record((0, 2**51 - 1)),
                    ops.Record((0, 1)),
                ],
                [
                    ["inexact", "slot 1: the cap's usage"],
                    ["crossings", [[1, 3 * 2**51, 2**53 - 1, "", None]]],
                    ["inexact", "slot 1: the cap's usage"],
                ],
            ),
            # a debt of 7 bursts is held; the 8th would reach 2**53
            Batch(
                0,
                [*[ops.Record((2**50, 0))] * 9, commit("a", 1, (0, 0), 2**50, 0), SNAP],
                [["crossings", []]] * 8
                + [["inexact", "slot 0: the rate's debt"]] * 2
                + [["snapshot", [rate_view(-7 * 2**50), cap_view(2**53 - 1, 0)], 0]],
            ),
        ],
        sqlite=False,
    ),
    # a shadow plan beside an enforcing one, on the same counter: the shadow
    # cap grants and reports what the hard one refuses
    Scenario(
        "shadow-caps-report-beside-hard-ones",
        SHADOWING,
        [
            Batch(
                0,
                [acq("a", 0, 80, 0), acq("b", 0, 30, 0), ops.Record((0, 40, 0))],
                [
                    ["granted", 1],
                    ["granted", 2],
                    ["crossings", [[1, 0, 40, *NOV]]],
                ],
                # b only waits when enforced; the record would be refused
                shadowed=[[1, 0, 110, 40, *NOV, 1]],
            ),
            Batch(
                1,
                [acq("c", 0, 61, 0), ops.Record((0, 61, 0))],
                [["x", 1, 40, 110, *NOV], ["x", 1, 40, 110, *NOV]],
                plan=CAPS,
                shadowed=[],
            ),
            Batch(
                2,
                [commit("a", 1, (0, 80, 0), 0, 80, 0), acq("d", 0, 1, 0, wait=False)],
                [["crossings", [[1, 40, 120, *NOV]]], ["granted", 3]],
                shadowed=[[1, 120, 30, 1, *NOV, 0]],  # the period's second
            ),
        ],
    ),
]


# -- running them ------------------------------------------------------------


@dataclass
class Outcome:
    """What one batch answered and left behind, as parsed JSON."""

    results: list[Any]
    now: int
    woken: list[Any]
    doc: Any
    records: dict[str, Any] = field(default_factory=dict)
    shadowed: list[Any] = field(default_factory=list)


def outcome(answer: ops.Answer, doc: Any, records: dict[str, Any]) -> Outcome:
    return Outcome(
        [encode_result(r) for r in answer.results],
        answer.now,
        [[w.key, encode_result(w.result)] for w in answer.woken],
        doc,
        records,
        [encode_shadowed(x) for x in answer.shadowed],
    )


class Core:
    """``run_document`` on a document and records kept as a store keeps them."""

    def __init__(self) -> None:
        self.doc: Any = None
        self.records: dict[str, Any] = {}

    def execute(
        self, spec: PlanSpec, batch: list[ops.Op], now: int, ttl: int, keep: int
    ) -> Outcome:
        clock = max(now, self.doc["clock"]) if self.doc else now
        given = {k: r for k, r in self.records.items() if r[1] <= clock}
        given.update({k: self.records[k] for k in wanted(batch) if k in self.records})
        # what the stores read from their index of expiry times
        later = [r[1] for r in self.records.values() if r[1] > clock]
        answer, out = run_document(
            json.loads(json.dumps(self.doc)),
            json.loads(json.dumps(given)),
            spec,
            batch,
            now,
            ttl=ttl,
            keep=keep,
            exact=COUNT_MAX,
            next_exp=min(later, default=None),
        )
        self.doc = json.loads(json.dumps(out.doc))
        for k in out.gone:
            del self.records[k]
        self.records.update(json.loads(json.dumps(out.records)))
        return outcome(answer, self.doc, dict(self.records))


class OnStore:
    """A store under a fresh name; what it keeps is read back after each batch."""

    def __init__(self, store: RedisStore | SQLiteStore) -> None:
        self.store = store
        self.name = f"v-{uuid.uuid4().hex[:12]}"

    def execute(
        self, spec: PlanSpec, batch: list[ops.Op], now: int, ttl: int, keep: int
    ) -> Outcome:
        answer = self.store.execute(
            self.name, spec, batch, ttl=ttl, keep=keep, now_us=now
        )
        doc, records, expiry = self.read()
        # the index of expiry times holds each record's exp
        assert expiry == {k: r[1] for k, r in records.items()}
        return outcome(answer, doc, records)

    def read(self) -> tuple[Any, dict[str, Any], dict[str, int]]:
        raise NotImplementedError


class OnRedis(OnStore):
    def read(self) -> tuple[Any, dict[str, Any], dict[str, int]]:
        client: Any = self.store._redis  # type: ignore[union-attr]
        tag = "{" + self.name + "}"
        records = {
            k.decode(): json.loads(v) for k, v in client.hgetall(f"{tag}:r").items()
        }
        expiry = {
            k.decode(): int(s)
            for k, s in client.zrange(f"{tag}:x", 0, -1, withscores=True)
        }
        return json.loads(client.get(f"{tag}:s")), records, expiry


class OnSQLite(OnStore):
    def read(self) -> tuple[Any, dict[str, Any], dict[str, int]]:
        conn = sqlite3.connect(self.store.path)  # type: ignore[union-attr]
        try:
            (state,) = conn.execute(
                "SELECT state FROM rb_limiter WHERE name = ?", (self.name,)
            ).fetchone()
            rows = conn.execute(
                "SELECT id, exp, data FROM rb_lease WHERE name = ?", (self.name,)
            ).fetchall()
        finally:
            conn.close()
        records = {k: json.loads(data) for k, _, data in rows}
        return json.loads(state), records, {k: exp for k, exp, _ in rows}


Home = Core | OnRedis | OnSQLite


def run_all(sc: Scenario, homes: list[Home]) -> list[Outcome]:
    """Run ``sc`` through every home; they must agree after every batch.
    The core's outcomes."""
    got: list[Outcome] = []
    for i, b in enumerate(sc.batches):
        now = T0 + b.at
        spec = b.plan or sc.plan
        first, *others = [h.execute(spec, b.ops, now, sc.ttl, sc.keep) for h in homes]
        for home, other in zip(homes[1:], others, strict=True):
            assert other == first, f"batch {i} at {b.at}: {type(home).__name__}"
        got.append(first)
    return got


@pytest.fixture(scope="module")
def redis_store() -> Iterator[RedisStore]:
    store = RedisStore(redis_url_or_skip())
    yield store
    store.close()


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path_factory.mktemp("vectors") / "vectors.db")
    # the store forgets idle per-key states (a sweep by store time, which
    # these vectors jump back and forth); the reference core never forgets,
    # so a forgotten state's take numbers would start again and differ. The
    # sweep has tests of its own (test_scopes.py)
    store._next_sweep = 1 << 62
    yield store
    store.close()


def homes(
    sc: Scenario, redis_store: RedisStore, sqlite_store: SQLiteStore
) -> list[Home]:
    out: list[Home] = [Core(), OnRedis(redis_store)]
    if sc.sqlite:
        out.append(OnSQLite(sqlite_store))
    return out


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_core_answers_as_pinned(sc: Scenario) -> None:
    for i, (b, got) in enumerate(zip(sc.batches, run_all(sc, [Core()]), strict=True)):
        if b.expect is not None:
            assert got.results == b.expect, f"batch {i} at {b.at}"
        if b.woken is not None:
            assert got.woken == b.woken, f"batch {i} at {b.at}"
        if b.shadowed is not None:
            assert got.shadowed == b.shadowed, f"batch {i} at {b.at}"


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_every_store_matches_the_core(
    sc: Scenario, redis_store: RedisStore, sqlite_store: SQLiteStore
) -> None:
    run_all(sc, homes(sc, redis_store, sqlite_store))


# -- random batches ----------------------------------------------------------

# three limiters of one name: shared rates and caps, a calendar cap in a
# zone with daylight saving time, and a rate-only one
RA = RateSpec("r:a", 1, 4, 40)  # 10 units, one per 4 µs
RB = RateSpec("r:b", 3, 2, 30)  # 15 units, 1.5 per µs
MONTH = CapSpec("c:h:month:UTC:hard", 20, True, "month", UTC)
DAY = CapSpec("c:h:day:Europe/Paris:hard", 15, True, "day", ZoneInfo("Europe/Paris"))
LIFE = CapSpec("c:s:life:UTC:soft", 15, False, None, UTC)
PLANS = [
    PlanSpec((RA, MONTH, RB, LIFE), 1000),
    PlanSpec((RA, DAY, LIFE), 1000),
    PlanSpec((RB,), 1000),
    # MONTH's counter in shadow mode, beside the plan that enforces it
    PlanSpec(
        (RB, CapSpec(MONTH.key, 20, False, "month", UTC, shadow=True), LIFE), 1000
    ),
]
KEYS = st.sampled_from(["a", "b", "c", "d"])
HOUR = 3_600_000_000
STEPS = st.one_of(
    st.integers(-40, 120),
    st.sampled_from([-HOUR, 500, 5_000, HOUR, 24 * HOUR, 31 * 24 * HOUR]),
)


def amounts(spec: PlanSpec) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(
        *[
            st.integers(0, s.cap // s.per)
            if isinstance(s, RateSpec)
            else st.integers(0, 12)
            for s in spec.slots
        ]
    )


def op_for(spec: PlanSpec) -> st.SearchStrategy[ops.Op]:
    req = amounts(spec)
    rates = [i for i, s in enumerate(spec.slots) if isinstance(s, RateSpec)]
    ttl = st.one_of(st.none(), st.integers(0, 400))
    choices = [
        st.builds(
            ops.Acquire,
            KEYS,
            req,
            st.one_of(st.none(), st.integers(0, 80)),
            st.booleans(),
        ),
        st.builds(ops.Acquire, KEYS, req, st.none(), st.just(True)),
        st.builds(ops.Poll, KEYS),
        st.builds(ops.Poll, KEYS),
        st.builds(ops.Leave, KEYS, req),
        st.builds(ops.Settle, KEYS, st.integers(0, 12), req, st.one_of(st.none(), req)),
        st.builds(ops.Settle, KEYS, st.integers(0, 12), req, req),
        st.builds(ops.Record, req),
        st.just(ops.Snapshot()),
        st.just(ops.Reset()),
        st.builds(ops.Lower, st.sampled_from(rates), st.integers(0, 10)),
        st.builds(ops.Extend, KEYS, ttl),
    ]
    return st.one_of(*choices)


@st.composite
def batches(draw: st.DrawFn) -> list[Batch]:
    out = []
    at = 0
    for _ in range(draw(st.integers(1, 8))):
        at += draw(STEPS)
        p = draw(st.sampled_from(range(len(PLANS))))
        out.append(
            Batch(
                at,
                draw(st.lists(op_for(PLANS[p]), min_size=1, max_size=5)),
                plan=PLANS[p],
            )
        )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_list=batches(),
    ttl=st.integers(1, 300),
    keep=st.integers(0, 300),
    start=st.sampled_from([0, us(2027, 3, 28, 0, 59, 59) - T0, JAN - 50]),
)
def test_random_batches_agree(
    batch_list: list[Batch],
    ttl: int,
    keep: int,
    start: int,
    redis_store: RedisStore,
    sqlite_store: SQLiteStore,
) -> None:
    for b in batch_list:
        b.at += start
    sc = Scenario("random", PLANS[0], batch_list, ttl=ttl, keep=keep)
    run_all(sc, homes(sc, redis_store, sqlite_store))


# -- the Redis store's own behaviour -----------------------------------------


def _calls(stats: dict[str, dict[str, Any]], command: str) -> int:
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _execute(
    store: RedisStore, name: str, batch: list[ops.Op], now: int | None = 1
) -> ops.Answer:
    return store.execute(name, CAPS, batch, ttl=10_000, keep=10, now_us=now)


def test_one_script_call_per_batch_and_noscript_fallback() -> None:
    with redis_server_or_skip() as server:
        store = RedisStore(server.url)
        try:
            _execute(store, "trips", [acq("a", 1, 1, 0), SNAP])
            before = server.info_commandstats()
            for i in range(5):
                _execute(store, "trips", [SNAP, acq(f"b{i}", 1, 1, 1)], now=2 + i)
            after = server.info_commandstats()
            assert _calls(after, "evalsha") - _calls(before, "evalsha") == 5
            assert _calls(after, "eval") == _calls(before, "eval") == 1  # the first
            assert _calls(after, "watch") == _calls(after, "multi") == 0
            client = server.client()
            try:
                client.script_flush()
            finally:
                client.close()
            (got,) = _execute(store, "trips", [SNAP], now=10).results
            assert isinstance(got, tuple)
            assert _calls(server.info_commandstats(), "eval") == 2
        finally:
            store.close()


def test_the_script_is_a_packaged_lua_file() -> None:
    assert SCRIPT_PATH.name == "decide.lua"
    text = SCRIPT_PATH.read_text(encoding="utf-8")
    assert "_decide.py" in text  # the mirror names what it mirrors
    for name in ("acquire", "service", "settle", "reclaim", "_fail_certain"):
        assert f"local function {name}(" in text


def test_unreachable_redis_is_store_unavailable_without_its_password() -> None:
    pytest.importorskip("redis")
    import redis

    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0", timeout=0.5)
    assert "s3cret" not in repr(store)
    with pytest.raises(StoreUnavailable) as info:
        _execute(store, "x", [SNAP])
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert "s3cret" not in str(info.value)
    with pytest.raises(StoreUnavailable):
        store.register("x", {"limits": []})
    store.close()


def test_an_unreadable_state_is_store_unavailable_and_left_alone(
    redis_store: RedisStore,
) -> None:
    client: Any = redis_store._redis
    name = f"bad-{uuid.uuid4().hex}"
    client.set("{" + name + "}:s", "not json")
    with pytest.raises(StoreUnavailable, match="Redis store"):
        _execute(redis_store, name, [SNAP])
    assert client.get("{" + name + "}:s") == b"not json"
    # a count that is not an integer: the script writes nothing at all
    _execute(redis_store, name + "2", [acq("a", 1, 1, 0)])
    doc = json.loads(client.get("{" + name + "2}:s"))
    doc["b"][R.key][3] = 0.5
    client.set("{" + name + "2}:s", json.dumps(doc))
    with pytest.raises(StoreUnavailable, match="not an integer"):
        _execute(redis_store, name + "2", [SNAP])
    assert json.loads(client.get("{" + name + "2}:s")) == doc


def test_unrepresentable_plans_and_amounts_are_refused(redis_store: RedisStore) -> None:
    huge = PlanSpec((RateSpec("r:usd", 1_000_000_001, 86_400_000_000, 2**52),), 1000)
    with pytest.raises(InvalidRequest, match=r"2\*\*53.*rounder limit or period"):
        redis_store.validate(huge)
    with pytest.raises(InvalidRequest, match=r"2\*\*53"):
        redis_store.validate(
            PlanSpec((CapSpec("c:usd", 2**52, True, None, UTC),), 1000)
        )
    ok = PlanSpec(
        (
            RateSpec("r:ok", 1, 60_000_000, 2**50),
            CapSpec("c:usd", 2**51, True, None, UTC),
        ),
        1000,
    )
    redis_store.validate(ok)
    with pytest.raises(InvalidRequest, match="split it"):
        redis_store.check(ok, (0, 2**51 + 1))
    with pytest.raises(InvalidRequest, match="now_us"):
        redis_store.execute("neg", RATE, [SNAP], ttl=10, keep=10, now_us=-5)


def test_now_defaults_to_redis_time(redis_store: RedisStore) -> None:
    before = time.time_ns() // 1000
    answer = redis_store.execute(f"t-{uuid.uuid4().hex}", CAPS, [SNAP], ttl=10, keep=10)
    assert abs(answer.now - before) < 5_000_000  # the same host's clock
    got = answer.results[0]
    assert isinstance(got, tuple)
    views, _ = got
    month = datetime.fromtimestamp(answer.now / 1e6, UTC).strftime("%Y-%m")
    assert views[1].period == month  # the windows around the client's clock


def test_keys_expire_when_idle(redis_store: RedisStore) -> None:
    client: Any = redis_store._redis
    name = f"ttl-{uuid.uuid4().hex}"
    tag = "{" + name + "}"
    redis_store.execute(
        name, CAPS, [acq("a", 1, 1, 0)], ttl=5_000_000, keep=10, now_us=1
    )
    for key in ("r", "x"):
        # an hour idle, plus the lease TTL
        assert 3_600_000 < client.pttl(f"{tag}:{key}") <= 3_605_000
    # the state holds a cap's reservation: kept as long as a period's usage is
    assert 399 * 86_400_000 < client.pttl(f"{tag}:s") <= 400 * 86_400_000
    redis_store.execute(name, CAPS, [SNAP], ttl=7_200_000_000, keep=10, now_us=2)
    assert client.pttl(f"{tag}:r") > 10_000_000


def test_a_lifetime_caps_usage_never_expires(redis_store: RedisStore) -> None:
    """A limiter idle for a month keeps its month's usage; a lifetime cap's
    usage is kept for good (only leases and idle state age out)."""
    client: Any = redis_store._redis
    name = f"life-{uuid.uuid4().hex}"
    tag = "{" + name + "}"
    redis_store.execute(name, CAPS, [SNAP], ttl=5_000_000, keep=10, now_us=1)
    assert 0 < client.pttl(f"{tag}:s") <= 3_605_000  # nothing counted: it ages out
    redis_store.execute(
        name, CAPS, [ops.Record((0, 0, 7))], ttl=5_000_000, keep=10, now_us=2
    )
    assert client.pttl(f"{tag}:s") == -1  # the lifetime cap (slot 2) counts 7


def test_rate_only_acquisitions_keep_the_keys_as_long(
    redis_store: RedisStore,
) -> None:
    """The script's hot path (acquisitions on a plan of rates alone) leaves
    the TTLs the rest of the script leaves."""
    client: Any = redis_store._redis
    for counted, kept in (((0, 0, 7), -1), ((0, 3, 0), 400 * 86_400_000)):
        name = f"hot-{uuid.uuid4().hex}"
        tag = "{" + name + "}"
        redis_store.execute(name, RATE, [acq("a", 1)], ttl=5_000_000, keep=10, now_us=1)
        assert 3_600_000 < client.pttl(f"{tag}:s") <= 3_605_000
        assert client.exists(f"{tag}:r", f"{tag}:x") == 0
        redis_store.execute(
            name, CAPS, [ops.Record(counted)], ttl=5_000_000, keep=10, now_us=2
        )
        redis_store.execute(name, RATE, [acq("b", 1)], ttl=5_000_000, keep=10, now_us=3)
        if kept < 0:
            assert client.pttl(f"{tag}:s") == -1  # a lifetime cap counts
        else:
            assert kept - 5_000 < client.pttl(f"{tag}:s") <= kept  # a month's usage


def test_a_batch_that_wakes_waiters_publishes_their_keys(
    redis_store: RedisStore,
) -> None:
    client: Any = redis_store._redis
    name = f"wake-{uuid.uuid4().hex}"
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe("{" + name + "}:wake")
        assert pubsub.get_message(timeout=1) is None
        _execute(redis_store, name, [acq("a", 0, 60, 0), release("a", 1, (0, 60, 0))])
        assert pubsub.get_message(timeout=0.2) is None  # nobody was blocked
        answer = _execute(redis_store, name, [acq("b", 0, 60, 0), acq("c", 0, 60, 0)])
        # blocked by b's reservation: it looks again when the first lease
        # record could expire (here a's, kept ``keep`` after its release: a
        # hint, so at worst a look for nothing)
        (b_granted, c_queued) = answer.results
        assert isinstance(b_granted, ops.Granted)
        assert c_queued == ops.Queued(answer.now + 10)
        answer = _execute(
            redis_store, name, [commit("b", 2, (0, 60, 0), 0, 1, 0)], now=9
        )
        assert answer.woken == [ops.Woken("c", ops.Granted(3))]
        message = pubsub.get_message(timeout=2)
        assert message is not None
        assert message["channel"] == ("{" + name + "}:wake").encode()
        assert json.loads(message["data"]) == ["c"]
    finally:
        pubsub.close()


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


@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_cap_usage_survives_a_restart_with_aof(how: str) -> None:
    with redis_server_or_skip(appendonly=True, appendfsync="always") as server:
        store = RedisStore(server.url)
        try:
            _execute(store, "aof", [ops.Record((0, 42, 7))])
            if how == "kill":
                server.kill()
            else:
                server.stop()
            with pytest.raises(StoreUnavailable):
                _execute(store, "aof", [SNAP], now=2)
            server.start()
            (got,) = _execute(store, "aof", [SNAP], now=3).results
            assert encode_result(got) == [
                "snapshot",
                [
                    rate_view(100),
                    cap_view(42, 0, "1970-01", us(1970, 2, 1)),
                    cap_view(7, 0),
                ],
                0,
            ]
        finally:
            store.close()


def test_client_argument_is_used_and_left_open() -> None:
    import redis

    client = redis.Redis.from_url(redis_url_or_skip())
    try:
        store = RedisStore("redis://example.invalid/0", client=client)
        (got,) = store.execute(
            f"c-{uuid.uuid4().hex}", RATE, [SNAP], ttl=1, keep=1, now_us=4
        ).results
        assert encode_result(got) == ["snapshot", [rate_view(100)], 0]
        store.close()
        assert client.ping()
    finally:
        client.close()


def test_a_closed_store_reconnects(redis_store: RedisStore) -> None:
    store = RedisStore(redis_url_or_skip())
    name = f"close-{uuid.uuid4().hex}"
    store.execute(name, RATE, [acq("a", 3)], ttl=1, keep=1, now_us=1)
    store.close()
    (got,) = store.execute(name, RATE, [SNAP], ttl=1, keep=1, now_us=1).results
    assert encode_result(got) == ["snapshot", [rate_view(70)], 0]
    store.close()


# -- down a path of scopes -------------------------------------------------------
#
# A tree of four scopes (root; a under it; x under a; b under it) shares one
# store. Random batches of every op a scope sends, each on one scope's path
# (or the root's own flat batch), run through ``run_path_documents`` (the
# Python core), the Redis script and the SQLite store: after each batch the
# three give the same answers and leave every level's state and records
# alike.

ROOT_PLAN = PlanSpec((RA, MONTH, LIFE), 1000)
A_PLAN = PlanSpec((RB, CapSpec("c:a:life:UTC:hard", 14, True, None, UTC)), 1000)
X_PLAN = PlanSpec((CapSpec("c:x:life:UTC:hard", 9, True, None, UTC), RA), 1000)
B_PLAN = PlanSpec((DAY,), 1000)
PATHS: list[tuple[tuple[str, ...], tuple[PlanSpec, ...]]] = [
    (("/a/x", "/a", ""), (X_PLAN, A_PLAN, ROOT_PLAN)),
    (("/a", ""), (A_PLAN, ROOT_PLAN)),
    (("/b", ""), (B_PLAN, ROOT_PLAN)),
    (("",), (ROOT_PLAN,)),  # the root's own limiter: flat batches
]


def path_op(specs: tuple[PlanSpec, ...]) -> st.SearchStrategy[ops.Op]:
    n = len(specs)
    req = st.tuples(*[amounts(s) for s in specs]).map(lambda t: sum(t, ()))
    takes = st.lists(st.integers(0, 12), min_size=n, max_size=n)
    at = st.integers(0, n - 1)
    timeout = st.one_of(st.none(), st.integers(0, 80))
    packed = takes.map(lambda t: sum(v << (64 * k) for k, v in enumerate(t)))
    return st.one_of(
        st.builds(ops.Acquire, KEYS, req, timeout, st.booleans()),
        st.builds(ops.Acquire, KEYS, req, st.none(), st.just(True)),
        st.builds(
            lambda key, r, a, t, to: ops.PathPoll(key, r, a, tuple(t[:a]), to),
            KEYS,
            req,
            at,
            takes,
            st.one_of(st.none(), st.integers(0, 10**9)),
        ),
        st.builds(
            lambda key, r, a, t: ops.PathLeave(key, r, a, tuple(t[: min(a, n)])),
            KEYS,
            req,
            st.integers(0, n),
            takes,
        ),
        st.builds(ops.Settle, KEYS, packed, req, st.one_of(st.none(), req)),
        st.builds(ops.Record, req),
        st.just(ops.Snapshot()),
        st.just(ops.Reset()),
        st.builds(ops.Extend, KEYS, st.one_of(st.none(), st.integers(0, 400))),
    )


@st.composite
def path_batches(draw: st.DrawFn) -> list[tuple[int, int, list[ops.Op]]]:
    out = []
    at = 0
    for _ in range(draw(st.integers(1, 8))):
        at += draw(STEPS)
        p = draw(st.integers(0, len(PATHS) - 1))
        specs = PATHS[p][1]
        batch = draw(
            st.lists(
                path_op(specs) if len(specs) > 1 else op_for(specs[0]),
                min_size=1,
                max_size=5,
            )
        )
        out.append((at, p, batch))
    return out


class PathCore:
    """``run_path_documents`` on documents and records kept per name."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.records: dict[str, dict[str, Any]] = {}

    def execute(
        self,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        now: int,
        ttl: int,
        keep: int,
    ) -> ops.Answer:
        docs, given, nexts = [], [], []
        for name in names:
            doc = self.docs.get(name)
            recs = self.records.setdefault(name, {})
            clock = max(now, doc["clock"]) if doc else now
            got = {k: r for k, r in recs.items() if r[1] <= clock}
            got.update({k: recs[k] for k in wanted(batch) if k in recs})
            docs.append(json.loads(json.dumps(doc)))
            given.append(json.loads(json.dumps(got)))
            nexts.append(
                min((r[1] for r in recs.values() if r[1] > clock), default=None)
            )
        if len(names) == 1:
            answer, out = run_document(
                docs[0],
                given[0],
                specs[0],
                batch,
                now,
                ttl=ttl,
                keep=keep,
                exact=COUNT_MAX,
                next_exp=nexts[0],
            )
            outs = [out]
        else:
            answer, outs = run_path_documents(
                docs,
                given,
                specs,
                batch,
                now,
                ttl=ttl,
                keep=keep,
                exact=COUNT_MAX,
                next_exps=nexts,
            )
        for name, out in zip(names, outs, strict=True):
            self.docs[name] = json.loads(json.dumps(out.doc))
            for k in out.gone:
                del self.records[name][k]
            self.records[name].update(json.loads(json.dumps(out.records)))
        return answer


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_list=path_batches(),
    ttl=st.integers(1, 300),
    keep=st.integers(0, 300),
)
def test_random_batches_down_paths_agree(
    batch_list: list[tuple[int, int, list[ops.Op]]],
    ttl: int,
    keep: int,
    redis_store: RedisStore,
    sqlite_store: SQLiteStore,
) -> None:
    root = f"p-{uuid.uuid4().hex[:12]}"
    core = PathCore()
    names_of = [[root + s for s in suffixes] for suffixes, _ in PATHS]
    for i, (at, p, batch) in enumerate(batch_list):
        names, specs = names_of[p], list(PATHS[p][1])
        now = T0 + at
        got = [core.execute(names, specs, batch, now, ttl, keep)]
        for store in (redis_store, sqlite_store):
            if len(names) == 1:
                got.append(
                    store.execute(
                        names[0], specs[0], batch, ttl=ttl, keep=keep, now_us=now
                    )
                )
            else:
                got.append(
                    store.execute_path(
                        names, specs, batch, ttl=ttl, keep=keep, now_us=now
                    )
                )
        first, *others = [outcome(a, None, {}) for a in got]
        for home, other in zip(("redis", "sqlite"), others, strict=True):
            assert other == first, f"batch {i} on {names[0]}: {home}"
        # and every state each level's home keeps is the core's
        client: Any = redis_store._redis
        conn = sqlite3.connect(sqlite_store.path)
        try:
            for name in names:
                tag = "{" + root + "}" + name[len(root) :]
                on_redis = json.loads(client.get(f"{tag}:s"))
                (on_sqlite,) = conn.execute(
                    "SELECT state FROM rb_limiter WHERE name = ?", (name,)
                ).fetchone()
                assert on_redis == core.docs[name], f"batch {i}: {name} on redis"
                assert json.loads(on_sqlite) == core.docs[name], f"batch {i}: {name}"
                recs = {
                    k.decode(): json.loads(v)
                    for k, v in client.hgetall(f"{tag}:r").items()
                }
                assert recs == core.records[name], f"batch {i}: {name}'s records"
        finally:
            conn.close()


# the script's hot path down a path (every level a plan of rates alone,
# nobody queued, no counters, no records): acquisitions, then anything, must
# still agree with the core, whether the hot path decided or gave way
RATE_PATHS: list[tuple[tuple[str, ...], tuple[PlanSpec, ...]]] = [
    (
        ("/a/x", "/a", ""),
        (PlanSpec((RB,), 1000), PlanSpec((RA, RB), 1000), PlanSpec((RA,), 1000)),
    ),
    (("/a", ""), (PlanSpec((RA, RB), 1000), PlanSpec((RA,), 1000))),
]


@st.composite
def rate_path_batches(draw: st.DrawFn) -> list[tuple[int, int, list[ops.Op]]]:
    out = []
    at = 0
    for _ in range(draw(st.integers(1, 8))):
        at += draw(
            st.one_of(st.integers(-40, 120), st.sampled_from([500, 5_000, HOUR]))
        )
        p = draw(st.integers(0, len(RATE_PATHS) - 1))
        specs = RATE_PATHS[p][1]
        req = st.tuples(*[amounts(s) for s in specs]).map(lambda t: sum(t, ()))
        acquire = st.builds(ops.Acquire, KEYS, req, st.none(), st.booleans())
        batch: list[ops.Op] = list(
            draw(
                st.one_of(
                    st.lists(acquire, min_size=1, max_size=6),  # the hot path's
                    st.lists(path_op(specs), min_size=1, max_size=4),
                )
            )
        )
        out.append((at, p, batch))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_list=rate_path_batches(), ttl=st.integers(1, 300))
def test_random_rate_batches_down_paths_agree(
    batch_list: list[tuple[int, int, list[ops.Op]]],
    ttl: int,
    redis_store: RedisStore,
    sqlite_store: SQLiteStore,
) -> None:
    root = f"q-{uuid.uuid4().hex[:12]}"
    core = PathCore()
    for i, (at, p, batch) in enumerate(batch_list):
        names = [root + s for s in RATE_PATHS[p][0]]
        specs = list(RATE_PATHS[p][1])
        now = T0 + at
        first = outcome(core.execute(names, specs, batch, now, ttl, ttl), None, {})
        for home, store in (("redis", redis_store), ("sqlite", sqlite_store)):
            got = store.execute_path(names, specs, batch, ttl=ttl, keep=ttl, now_us=now)
            assert outcome(got, None, {}) == first, f"batch {i} on {names[0]}: {home}"
        client: Any = redis_store._redis
        for name in names:
            tag = "{" + root + "}" + name[len(root) :]
            on_redis = json.loads(client.get(f"{tag}:s"))
            assert on_redis == core.docs[name], f"batch {i}: {name} on redis"
