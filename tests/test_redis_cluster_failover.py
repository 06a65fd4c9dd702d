"""A primary of a real Redis Cluster killed mid-run (3 primaries, a replica each).

Its callers get ``StoreUnavailable`` (or, with ``on_store_error="allow"``,
their grants) until its replica is promoted and has a replica of its own
again (``replicas=1`` asks that of every decision), then go on with the
same limiter objects; callers of the other shards never notice; and no
grant that returned is lost, so the cap holds.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import pytest

from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    Limiter,
    Rate,
    StoreUnavailable,
)
from ratebudget.stores import RedisStore
from ratebudget.testing import RedisCluster
from redis_cluster import redis_cluster_or_skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    # the other shards serve while one has no primary: Redis' default,
    # cluster-require-full-coverage yes, stops the whole cluster instead
    options = {"cluster-require-full-coverage": "no"}
    with redis_cluster_or_skip(primaries=3, replicas=1, options=options) as c:
        yield c


def _names_by_shard(cluster: RedisCluster, count: int) -> dict[int, list[str]]:
    """Fresh limiter names, by the port of the primary serving each."""
    out: dict[int, list[str]] = {}
    while sum(len(v) >= count for v in out.values()) < cluster.primaries:
        name = f"fo-{uuid.uuid4().hex[:8]}"
        out.setdefault(cluster.primary_for("{" + name + "}:s").port, []).append(name)
    return out


@dataclass
class Tally:
    granted: int = 0
    unavailable: int = 0
    refused: bool = False
    phases: dict[str, int] = field(default_factory=dict)  # grants per phase


async def test_a_killed_primary_fails_over_without_a_restart_or_a_lost_grant(
    cluster: RedisCluster,
) -> None:
    limit = 600
    by_shard = _names_by_shard(cluster, 2)
    victim_port = next(iter(by_shard))
    victim, victim_open = by_shard[victim_port][:2]
    others = [names[0] for port, names in by_shard.items() if port != victim_port]
    store = RedisStore(cluster.url, timeout=0.5, replicas=1)
    phase = "before"
    tallies: dict[str, Tally] = {}

    def limiter(name: str, **kw: object) -> Limiter:
        tallies[name] = Tally()
        return Limiter(
            Rate(requests=10_000, per="second"),
            Cap(requests=limit),
            store=store,
            name=name,
            **kw,  # type: ignore[arg-type]
        )

    limiters = [limiter(victim), limiter(victim_open, on_store_error="allow")]
    limiters += [limiter(name) for name in others]
    stop = anyio.Event()

    async def work(lim: Limiter) -> None:
        tally = tallies[str(lim.name)]
        while not stop.is_set() and not tally.refused:
            try:
                async with lim.acquire():
                    pass
            except StoreUnavailable:
                tally.unavailable += 1
                await anyio.sleep(0.01)
                continue
            except BudgetExceeded:
                tally.refused = True
                return
            tally.granted += 1
            tally.phases[phase] = tally.phases.get(phase, 0) + 1
            await anyio.sleep(0.002)

    try:
        with _within(60, lambda: f"stuck in phase {phase!r}: {tallies}"):
            async with anyio.create_task_group() as tg:
                for lim in limiters:
                    for _ in range(3):
                        tg.start_soon(work, lim)
                await anyio.sleep(0.3)
                killed = await anyio.to_thread.run_sync(
                    cluster.kill_primary_for, "{" + victim + "}:s"
                )
                phase = "outage"
                promoted = await anyio.to_thread.run_sync(
                    cluster.wait_for_failover, "{" + victim + "}:s"
                )
                assert promoted.port != killed.port
                # replicas=1: the promoted primary confirms nothing until it
                # has a replica again; the killed node comes back as one
                await anyio.to_thread.run_sync(killed.start)
                await anyio.to_thread.run_sync(cluster.wait_ready)
                phase = "after"
                while tallies[victim].phases.get("after", 0) < 50:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                stop.set()
        # the victim's callers noticed, and recovered with the same objects
        assert tallies[victim].unavailable > 0
        assert tallies[victim].phases["after"] >= 50
        # fail-open callers were granted throughout
        assert tallies[victim_open].unavailable == 0
        assert tallies[victim_open].phases.get("outage", 0) > 0
        # the other shards' callers never noticed
        for name in others:
            assert tallies[name].unavailable == 0, name
            assert tallies[name].phases.get("outage", 0) > 0, name
        # drive the victim to its cap: every grant that returned is counted
        # (each waited for the replica), and none went past the cap (calls
        # that failed after they ran hold reservations until their TTL:
        # a wait for those is cut short)
        lim = limiters[0]
        with _within(30, lambda: f"driving to the cap: {tallies[victim]}"):
            while True:
                try:
                    async with lim.acquire(timeout=1):
                        pass
                except (BudgetExceeded, AcquireTimeout):
                    break
                tallies[victim].granted += 1
        snap = (await lim.snapshot())[1]
        assert tallies[victim].granted <= snap.used
        assert snap.used + snap.reserved <= limit
    finally:
        store.close()
        for node in cluster.nodes:  # whole again for the next test
            if not node.alive:
                node.start()
        cluster.wait_ready()


@contextlib.contextmanager
def _within(seconds: float, state: Callable[[], str]) -> Iterator[None]:
    """``anyio.fail_after``, failing with ``state()`` (where it was stuck)."""
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise AssertionError(state()) from None
