"""Many processes on one persistent store, and processes that die.

Workers are real processes (``tests/mp_worker.py``) on the SQLite and Redis
stores; the checks read only what the store and the workers report.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ratebudget import AcquireTimeout, Cap, Limiter

WORKER = str(Path(__file__).with_name("mp_worker.py"))


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def cap_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``store_url``, and a Redis Cluster: for the tests of caps."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budgets.db'}"
    return str(request.getfixturevalue(request.param.replace("-", "_") + "_url"))


def spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen[str]], timeout: float = 60) -> list[str]:
    lines: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        lines += out.splitlines()
    return lines


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"mp-{os.getpid()}-{request.node.name}".replace("[", "-").replace("]", "")


def test_eight_processes_never_overspend_a_hard_cap(cap_url: str, name: str) -> None:
    store_url = cap_url
    limit, each = 301, 3
    procs = [spawn("cap", store_url, name, limit, each, 4) for _ in range(8)]
    lines = finish(procs)
    committed = sum(int(line.split()[1]) for line in lines)
    assert committed <= limit
    assert limit - committed < each  # demand exceeded the cap: it was used up
    snap = Limiter(Cap(tokens=limit), store=store_url, name=name).sync.snapshot()
    assert snap[0].used == committed
    assert snap[0].reserved == 0


def test_eight_processes_deliver_each_alert_once(cap_url: str, name: str) -> None:
    """Contract 17: 8 processes on one cap (hard, in shadow mode: nothing
    refused) cross its ten thresholds and go past it; each threshold alert,
    and the period's one shadow alert, is delivered once in all."""
    store_url = cap_url
    procs = [spawn("alerts", store_url, name, "shadow", 20) for _ in range(8)]
    lines = finish(procs)  # 160 tokens recorded on a cap of 100
    kinds = sorted(line.split()[1:3] for line in lines)
    expected = [["shadow", "1.0"]] + [["threshold", str(k / 10)] for k in range(1, 11)]
    assert kinds == sorted(expected)
    assert len({line.split()[3] for line in lines}) == len(expected)
    snap = Limiter(Cap(tokens=100), store=store_url, name=name).sync.snapshot()
    assert snap[0].used == 160


def test_eight_processes_of_two_teams_never_overspend_the_org(
    cap_url: str, name: str
) -> None:
    """Contract 13 and 17 across processes: 8 processes act for users of
    two teams (per-key caps under team caps) under one org cap; everything
    committed fits the org's cap to the nano-dollar, the store's counters
    say exactly that, and each threshold alert is delivered once in all."""
    url = cap_url
    procs = [spawn("org", url, name, i, 3) for i in range(8)]
    lines = finish(procs, timeout=120)
    spent = [Decimal(line.split()[1]) for line in lines if line.startswith("committed")]
    alerts = [line.split()[1:] for line in lines if line.startswith("alert")]
    org = Limiter(Cap(usd="1.5"), store=url, name=name)
    teams = [org.child(f"team{t}", Cap(usd="1")) for t in (0, 1)]
    assert sum(spent) <= Decimal("1.5")
    assert org.sync.snapshot()[0].used == sum(spent)
    assert org.sync.snapshot()[0].reserved == 0
    assert sum(t.sync.snapshot()[0].used for t in teams) == sum(spent)
    assert all(t.sync.snapshot()[0].used <= 1 for t in teams)
    # the org's thresholds it crossed, each once; a team's, each once
    by_scope: dict[str, list[str]] = {}
    for scope, threshold, _id in alerts:
        by_scope.setdefault(scope, []).append(threshold)
    for scope, thresholds in by_scope.items():
        assert len(thresholds) == len(set(thresholds)), (scope, thresholds)
    assert sorted(by_scope[name]) == [
        t
        for t in ("0.25", "0.5", "0.75", "1.0")
        if Decimal(t) * Decimal("1.5") <= sum(spent)
    ]
    assert len({a[2] for a in alerts}) == len(alerts)


def test_four_processes_share_one_rate(store_url: str, name: str) -> None:
    limit, burst, count = 40, 5, 12  # 48 grants: 5 at once, then 40 per second
    start = time.time()
    procs = [spawn("rate", store_url, name, limit, burst, count) for _ in range(4)]
    lines = finish(procs)
    times = sorted(float(line.split()[1]) for line in lines)
    assert len(times) == 4 * count
    # a grant is printed after it is made, so counting by print time is
    # conservative: never more than burst + rate x t since the start
    for k, t in enumerate(times, start=1):
        assert k <= burst + limit * (t - start) + 1e-9, (k, t - start)
    # and the processes did share one bucket rather than each using their own
    assert times[-1] - start >= (4 * count - burst) / limit * 0.99


def test_a_killed_holder_is_reclaimed_after_its_ttl_and_no_sooner(
    store_url: str, name: str
) -> None:
    ttl = 1.5
    p = spawn("hold", store_url, name, ttl)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.startswith("held"), p.stderr.read() if p.stderr else ""
    held_at = float(line.split()[1])
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    lim = Limiter(Cap(tokens=100), store=store_url, name=name, lease_ttl=ttl)

    async def probe() -> bool:
        try:
            await lim.acquire(50, timeout=0)
        except AcquireTimeout:
            return False
        return True

    while True:
        got = anyio.run(probe)
        now = time.time()
        if got:
            break
        assert now - held_at < ttl + 5, "never reclaimed"
        time.sleep(0.05)
    # the worker stamped "held" just after its grant: the lease expired at
    # least ``ttl`` after that grant, so no sooner than here
    assert now >= held_at + ttl - 0.05
    assert now <= held_at + ttl + 2


def test_a_process_killed_mid_commits_loses_nothing_that_returned(
    store_url: str, name: str
) -> None:
    p = spawn("commits", store_url, name)
    assert p.stdout is not None
    returned = 0
    deadline = time.monotonic() + 30  # however slow the machine: 50 records first
    while returned < 50 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        returned = int(line)
    os.kill(p.pid, signal.SIGKILL)  # in the middle of the next ones
    # through p.stdout, not communicate(): with stderr piped too it reads the
    # pipes' descriptors and misses the lines readline() already buffered
    rest = p.stdout.read()
    p.wait()
    assert p.stderr is not None
    p.stderr.close()
    p.stdout.close()
    for line in rest.splitlines():  # printed before the kill, read after it
        returned = int(line)
    assert returned > 10
    snap = Limiter(Cap(tokens=10**9), store=store_url, name=name).sync.snapshot()
    # every record that returned is there; one more may have committed in the
    # store just before the kill, without returning
    assert returned <= snap[0].used <= returned + 1
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
