"""The Redis store on a real Redis Cluster (``ratebudget.testing.RedisCluster``).

The shared cluster (3 primaries, ``redis_cluster_url``) serves what does
not break it; the failover tests start their own, with a replica per
primary, and kill primaries. The behaviour suites (``test_conformance.py``,
``test_scopes.py``, ``test_multiprocess.py``'s caps) run on the shared
cluster too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import anyio
import pytest

from ratebudget import (
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
    StoreUnavailable,
)
from ratebudget.stores import RedisStore, open_store

# -- URLs (no server) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "seed"),
    [
        ("redis+cluster://10.0.0.1:7000", "10.0.0.1:7000"),
        ("redis+cluster://a:7000,b:7001,c", "a:7000"),
        ("redis+cluster://:s3cret@a:7000/0", "a:7000"),
        ("rediss+cluster://user:pw@a:7000,b:7001", "a:7000"),
        ("redis+cluster://[::1]:7000?replicas=1", "::1:7000"),
    ],
)
def test_cluster_urls_are_read_without_connecting(url: str, seed: str) -> None:
    pytest.importorskip("redis")
    store = open_store(url)
    assert isinstance(store, RedisStore)
    assert store.cluster
    assert "s3cret" not in store.url
    assert ":pw@" not in store.url
    assert store.url.startswith(url.partition("://")[0] + "://")
    assert store.replicas == (1 if "replicas=1" in url else 0)
    store.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://a:7000/1", "database 0 only"),
        ("redis+cluster://a:7000?ssl_cert_reqs=none", "no options"),
        ("redis+cluster://a:port", "no valid port"),
        ("redis+cluster://a:70000", "no valid port"),
        ("redis+cluster://a:7000,:7001", "without a host"),
        ("redis+cluster://a:7000?replicas=-1", "replicas"),
        ("redis+cluster://a:7000?replicas=99", "replicas"),
        ("redis+clusterx://a:7000", "unknown scheme"),
    ],
)
def test_bad_cluster_urls_are_refused_at_the_call(url: str, says: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(InvalidRequest, match=says):
        open_store(url)


def test_cluster_options_are_checked() -> None:
    pytest.importorskip("redis")
    with pytest.raises(InvalidRequest, match="cluster="):
        RedisStore("redis://a:7000", cluster="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="replicas="):
        RedisStore("redis://a:7000", replicas=True)
    with pytest.raises(InvalidRequest, match="host:port"):
        RedisStore("unix:///tmp/redis.sock", cluster=True)
    store = RedisStore("redis://a:7000/0", cluster=True)  # a node of it, as a seed
    assert store.cluster
    assert store.url == "redis+cluster://a:7000"
    store.close()


# -- the shared cluster ------------------------------------------------------------


def _seed(url: str) -> tuple[str, int]:
    host, _, port = url.partition("://")[2].split(",")[0].rpartition(":")
    return host, int(port)


@pytest.fixture
def cluster_url(redis_cluster_url: str) -> str:
    return redis_cluster_url


@pytest.fixture
def redis_py(cluster_url: str) -> Iterator[Any]:
    """redis-py's own cluster client, to look at the servers."""
    from redis.cluster import RedisCluster

    host, port = _seed(cluster_url)
    client = RedisCluster(host=host, port=port)
    try:
        yield client
    finally:
        client.close()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _script_calls(redis_py: Any) -> dict[str, int]:
    """Each primary's count of script calls so far."""
    out: dict[str, int] = {}
    for node in redis_py.get_primaries():
        stats = node.redis_connection.info("commandstats")
        out[node.name] = sum(
            stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval")
        )
    return out


async def test_every_name_works_each_decision_one_script_call_on_its_shard(
    cluster_url: str, redis_py: Any
) -> None:
    store = RedisStore(cluster_url)
    try:
        names = [_unique(f"spread{i}") for i in range(24)]
        shards = {redis_py.get_node_from_key("{" + n + "}:s").name for n in names}
        assert len(shards) == 3  # 24 names: every shard serves some
        for name in names:
            limiter = Limiter(
                Rate(requests=1000, per="second"),
                Cap(requests=3),
                store=store,
                name=name,
            )
            shard = redis_py.get_node_from_key("{" + name + "}:s").name
            for _ in range(3):
                async with limiter.acquire():  # (the first registers the name)
                    pass
            before = _script_calls(redis_py)
            with pytest.raises(BudgetExceeded):
                await limiter.acquire()
            after = _script_calls(redis_py)
            # the refusal was one script call, on the name's shard alone
            assert {k: after[k] - before[k] for k in after} == {
                k: int(k == shard) for k in after
            }
            snap = await limiter.snapshot()
            assert snap[1].used == 3
        assert set(names) <= set(store.limiters())
    finally:
        store.close()


async def test_a_tree_of_scopes_lives_on_one_shard_and_trees_spread(
    cluster_url: str, redis_py: Any
) -> None:
    store = RedisStore(cluster_url)
    try:
        shards_of_trees = set()
        for i in range(8):
            org = Limiter(Cap(usd="10"), store=store, name=_unique(f"org{i}"))
            team = org.child("team", Cap(usd="4"))
            users = team.per_key(Cap(usd="1"))
            async with users["alice"].acquire(usd="0.5") as lease:
                await lease.commit(usd="0.25")
            async with users["bob"].acquire(usd="0.5") as lease:
                await lease.release()
            assert (await team.snapshot())[0].used == Decimal("0.25")
            assert (await org.snapshot())[0].used == Decimal("0.25")
            where = set()
            for node in redis_py.get_primaries():
                keys = node.redis_connection.keys("{" + str(org.name) + "}*")
                if keys:
                    where.add(node.name)
                    assert len(keys) >= 3 * 4  # org, team, alice, bob: 3 keys each
            assert len(where) == 1  # the whole tree, on one shard
            shards_of_trees |= where
        assert len(shards_of_trees) >= 2
    finally:
        store.close()


async def test_a_release_in_another_process_wakes_a_waiter_by_sharded_pub_sub(
    cluster_url: str, redis_py: Any
) -> None:
    # two "processes": waiters are woken in-process by store URL, so the
    # holder's store names the cluster by other nodes: only the script's
    # SPUBLISH on {name}:wake, heard on its shard, reaches the waiter
    nodes = cluster_url.partition("://")[2].split(",")
    here = RedisStore(cluster_url)
    there = RedisStore("redis+cluster://" + ",".join(reversed(nodes)))
    name = _unique("wake")
    shard = redis_py.get_node_from_key("{" + name + "}:wake")
    try:
        holder = Limiter(Cap(tokens=100), store=there, name=name)
        waiter = Limiter(Cap(tokens=100), store=here, name=name)
        lease = await holder.acquire(80)
        got: list[str] = []

        async def blocked() -> None:
            async with waiter.acquire(50, timeout=60) as mine:
                got.append(mine.id)

        def subscribed() -> int:
            reply = shard.redis_connection.execute_command(
                "PUBSUB", "SHARDNUMSUB", "{" + name + "}:wake"
            )
            return int(reply[1])

        def publishes() -> tuple[int, int]:
            stats = shard.redis_connection.info("commandstats")
            calls = [
                stats.get(f"cmdstat_{c}", {}).get("calls", 0)
                for c in ("spublish", "publish")
            ]
            return calls[0], calls[1]

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                while subscribed() < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                await anyio.sleep(0.05)
                assert got == []  # 80 of 100 reserved: it waits
                sharded, broadcast = publishes()
                await lease.release()  # the waiter's turn
        assert len(got) == 1
        assert publishes()[0] > sharded  # told on its shard
        assert publishes()[1] == broadcast  # not broadcast to every node
    finally:
        here.close()
        there.close()


def test_a_plain_url_of_a_cluster_node_names_the_url_to_use(cluster_url: str) -> None:
    host, port = _seed(cluster_url)
    limiter = Limiter(
        Rate(requests=5, per="second"),
        store=f"redis://{host}:{port}/0",
        name=_unique("plain"),
    )
    with pytest.raises(InvalidRequest) as caught:
        limiter.sync.acquire()
    assert f"redis+cluster://{host}:{port}" in str(caught.value)


def test_a_redis_cluster_client_works_and_messages_name_the_cluster(
    cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from redis.cluster import RedisCluster

    host, port = _seed(cluster_url)
    client = RedisCluster(host=host, port=port)
    store = RedisStore(client=client)
    try:
        assert store.cluster
        assert store.url.startswith("redis+cluster://")
        with caplog.at_level(logging.WARNING, logger="ratebudget"):
            limiter = Limiter(Cap(requests=2), store=store, name=_unique("client"))
            for _ in range(2):
                with limiter.sync.acquire():
                    pass
            with pytest.raises(BudgetExceeded):
                limiter.sync.acquire()
        # the cluster keeps nothing on disk: said once, naming the cluster
        warned = [
            r.getMessage() for r in caplog.records if "persists" in r.getMessage()
        ]
        assert warned
        assert "redis+cluster://" in warned[0]
        assert "localhost:6379" not in warned[0]
    finally:
        store.close()
    assert client.ping()  # the caller's client is left open
    client.close()


def test_a_plain_client_for_a_cluster_url_is_refused(cluster_url: str) -> None:
    import redis

    host, port = _seed(cluster_url)
    with pytest.raises(InvalidRequest, match="RedisCluster"):
        RedisStore(cluster_url, client=redis.Redis(host=host, port=port))


async def test_the_blocking_facade_and_threads_on_a_cluster(cluster_url: str) -> None:
    limiter = Limiter(Cap(requests=40), store=cluster_url, name=_unique("threads"))

    def take() -> int:
        n = 0
        while True:
            try:
                with limiter.sync.acquire():
                    pass
            except BudgetExceeded:
                return n
            n += 1

    got: list[int] = []

    async def worker() -> None:
        got.append(await anyio.to_thread.run_sync(take))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(worker)
    assert sum(got) == 40
    assert limiter.sync.snapshot()[0].used == 40


def test_unreachable_cluster_is_unavailable_not_a_hang() -> None:
    pytest.importorskip("redis")
    store = RedisStore("redis+cluster://127.0.0.1:1", timeout=0.5)
    limiter = Limiter(Cap(requests=1), store=store, name="nowhere")
    with pytest.raises(StoreUnavailable, match=r"redis\+cluster://127\.0\.0\.1:1"):
        limiter.sync.acquire()
    store.close()


def _move_slot(redis_py: Any, key: str) -> Callable[[], None]:
    """Migrate ``key``'s slot, keys and all, to another primary
    (``redis-cli --cluster reshard``'s steps) and stop half-way: the old
    owner answers ``ASK`` for its keys, which are all on the new one. The
    function returned finishes (then the old owner answers ``MOVED``)."""
    from redis.crc import key_slot

    slot = key_slot(key.encode())
    source = redis_py.get_node_from_key(key)
    target = next(n for n in redis_py.get_primaries() if n.name != source.name)
    src, dst = source.redis_connection, target.redis_connection
    src_id = src.execute_command("CLUSTER", "MYID")
    dst_id = dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys
        )

    def finish() -> None:
        for node in redis_py.get_primaries():
            node.redis_connection.execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", dst_id
            )

    return finish


async def test_a_slot_that_moves_is_followed_with_its_state(
    cluster_url: str, redis_py: Any
) -> None:
    """A store whose slot map is old gets ASK (mid-migration), then MOVED
    (the slot's new owner): either way the call runs once, where the keys are."""
    store = RedisStore(cluster_url)
    try:
        name = _unique("moving")
        limiter = Limiter(Cap(requests=6), store=store, name=name)
        for _ in range(2):
            async with limiter.acquire():
                pass
        finish = _move_slot(redis_py, "{" + name + "}:s")
        try:
            for _ in range(2):  # ASK
                async with limiter.acquire():
                    pass
        finally:
            finish()
        for _ in range(2):  # MOVED
            async with limiter.acquire():
                pass
        with pytest.raises(BudgetExceeded):
            await limiter.acquire()
        assert (await limiter.snapshot())[0].used == 6
    finally:
        store.close()


def test_status_reads_a_cluster(cluster_url: str) -> None:
    """``ratebudget status`` (the real CLI) on a cluster: the registry on
    its own shard, each tree's state on its shard, the cluster's URL."""
    import json
    import subprocess
    import sys

    names = [_unique(f"status{i}") for i in range(4)]
    for name in names:
        org = Limiter(Cap(usd="10"), store=cluster_url, name=name)
        team = org.child("team", Cap(usd="4"))
        with team.sync.acquire(usd="0.25"):
            pass
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ratebudget",
            "status",
            "--store",
            cluster_url,
            "--json",
            "status*",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["store"] == cluster_url
    used = {
        s["name"]: s["limits"][0]["used"]
        for s in data["limiters"]
        if s["name"].split("/")[0] in names
    }
    assert used == {
        **dict.fromkeys(names, "0.25"),
        **{f"{n}/team": "0.25" for n in names},
    }


def test_replicas_the_cluster_lacks_fail_each_decision(cluster_url: str) -> None:
    """``replicas=1`` on primaries without a replica: each decision ran, but
    nothing confirms it, so it fails (the shared cluster has no replicas)."""
    # WAIT gives up after half the timeout; the rest is for the reply (a
    # loaded machine answers slowly)
    store = RedisStore(cluster_url + "?replicas=1", timeout=2.0)
    try:
        limiter = Limiter(Cap(requests=5), store=store, name=_unique("replicas"))
        with pytest.raises(StoreUnavailable, match="0 of 1 replicas"):
            limiter.sync.acquire()
        plain = Limiter(Cap(requests=5), store=cluster_url, name=limiter.name)
        # it ran on the primary: its reservation holds until its TTL
        assert plain.sync.snapshot()[0].reserved == 1
    finally:
        store.close()


def test_live_limits_set_by_a_fresh_store_reach_the_listeners(cluster_url: str) -> None:
    """``update`` from a store that has done nothing else yet still tells
    the other processes on the live channel's shard (sharded pub/sub)."""
    import time

    nodes = cluster_url.partition("://")[2].split(",")
    there = RedisStore("redis+cluster://" + ",".join(reversed(nodes)))
    name = _unique("live")
    try:
        watcher = Limiter(Cap(usd="10"), store=there, name=name)
        watcher.sync.record(usd="3")  # registered, listening
        time.sleep(0.3)  # its listener subscribed (it looks once when it has)
        Limiter(Cap(usd="10"), store=cluster_url, name=name).sync.update(Cap(usd="4"))
        deadline = time.monotonic() + 5
        while watcher.limits != (Cap(usd="4"),) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watcher.limits == (Cap(usd="4"),)
    finally:
        there.close()
