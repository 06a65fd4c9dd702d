"""The Redis Cluster the tests run on: it forms, serves every slot, fails over.

The clients here are redis-py's own cluster clients: these tests check the
helper (``ratebudget.testing.RedisCluster``) and the shared cluster behind
the ``redis_cluster_url`` fixture, not a store.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ratebudget.testing import RedisClusterNode
from redis_cluster import (
    RedisCluster,
    cluster_client,
    redis_cluster_or_skip,
    shared_redis_cluster_or_skip,
)

SLOTS = 16384


@pytest.fixture
def shared() -> RedisCluster:
    """The shared 3-primary cluster (the one ``redis_cluster_url`` names)."""
    return shared_redis_cluster_or_skip()


@pytest.fixture
def replicated() -> Iterator[RedisCluster]:
    """A cluster of its own: 3 primaries with a replica each, to fail over."""
    with redis_cluster_or_skip(primaries=3, replicas=1) as cluster:
        yield cluster


def tags_on_distinct_primaries(
    cluster: RedisCluster, count: int
) -> dict[str, RedisClusterNode]:
    """``count`` hash tags, each of a slot owned by a different primary."""
    found: dict[str, RedisClusterNode] = {}
    for n in range(1000):
        tag = f"{{tenant-{n}}}"
        owner = cluster.primary_for(tag)
        if owner not in found.values():
            found[tag] = owner
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} tags on distinct primaries")


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class TestSharedCluster:
    def test_the_url_names_the_primaries(self, redis_cluster_url: str) -> None:
        client = cluster_client(redis_cluster_url)
        try:
            assert client.ping()
        finally:
            client.close()
        cluster = shared_redis_cluster_or_skip()  # not with an external cluster
        seeds = redis_cluster_url.removeprefix("redis+cluster://").split(",")
        assert seeds == [node.address for node in cluster.nodes]
        assert [node.role for node in cluster.nodes] == ["primary"] * 3

    def test_every_node_serves_every_slot_and_agrees_on_the_map(
        self, shared: RedisCluster
    ) -> None:
        maps = []
        for node in shared.nodes:
            client = node.client()
            try:
                info = client.cluster("INFO")
                maps.append(sorted(client.execute_command("CLUSTER", "SLOTS")))
            finally:
                client.close()
            assert info["cluster_state"] == "ok"
            assert info["cluster_slots_ok"] == str(SLOTS)
        assert all(slot_map == maps[0] for slot_map in maps)
        covered = sum(high - low + 1 for low, high, *_ in maps[0])
        assert covered == SLOTS

    def test_keys_of_different_tags_land_on_different_primaries(
        self, shared: RedisCluster
    ) -> None:
        tags = tags_on_distinct_primaries(shared, 3)
        client = shared.client(decode_responses=True)
        try:
            for tag in tags:
                client.set(f"{tag}:spend", tag)
        finally:
            client.close()
        for tag, owner in tags.items():
            direct = owner.client()  # no redirection: the node must hold the key
            try:
                assert direct.get(f"{tag}:spend") == tag.encode()
                assert direct.delete(f"{tag}:spend") == 1
            finally:
                direct.close()

    def test_primary_for_names_the_node_that_holds_the_key(
        self, shared: RedisCluster
    ) -> None:
        keys = ("{acme}/search:s", "{globex}", "plain-key", "a{b}c", "{}x")
        client = shared.client()
        try:
            for key in keys:
                client.set(key, key)
        finally:
            client.close()
        for key in keys:
            owner = shared.primary_for(key)
            assert owner.role == "primary"
            direct = owner.client()
            try:
                assert direct.get(key) == key.encode()
                assert direct.delete(key) == 1
            finally:
                direct.close()


class TestLifecycle:
    def test_closing_ends_every_node_and_deletes_the_directories(self) -> None:
        cluster = redis_cluster_or_skip()
        with cluster:
            assert all(node.running for node in cluster.nodes)
            assert cluster.dir.is_dir()
            paused = cluster.nodes[0]
            paused.pause()  # a frozen node is ended too
        assert not any(node.running for node in cluster.nodes)
        assert not any(answers(node.port) for node in cluster.nodes)
        assert not cluster.dir.exists()

    def test_a_node_that_cannot_start_leaves_nothing_behind(self) -> None:
        cluster = redis_cluster_or_skip(options={"no-such-option": "1"})
        with pytest.raises(RuntimeError, match="exited at start"):
            cluster.start()
        assert not any(node.running for node in cluster.nodes)
        assert not cluster.dir.exists()

    def test_redis_cli_needs_three_primaries(self) -> None:
        with pytest.raises(ValueError, match="at least 3 primaries"):
            RedisCluster(primaries=2)


class TestFailover:
    def test_a_killed_primarys_replica_takes_over_and_serves_writes(
        self, replicated: RedisCluster
    ) -> None:
        key = "{acme}:spend"
        replicas = {node for node in replicated.nodes if node.role == "replica"}
        assert len(replicas) == 3
        client = replicated.client(decode_responses=True)
        try:
            client.set(key, "before")
            old = replicated.primary_for(key)
            direct = old.client()
            try:
                assert direct.wait(1, 5000) == 1  # the replica has it
            finally:
                direct.close()

            assert replicated.kill_primary_for(key) is old
            promoted = replicated.wait_for_failover(key)

            assert promoted in replicas
            assert promoted.role == "primary"
            assert client.get(key) == "before"
            client.set(key, "after")
            direct = promoted.client()
            try:
                assert direct.get(key) == b"after"
            finally:
                direct.close()
        finally:
            client.close()

        old.start()  # same port and nodes.conf: it rejoins, as a replica
        replicated.wait_ready()
        assert old.role == "replica"
        assert replicated.primary_for(key) is promoted

    def test_a_paused_primary_is_replaced_and_comes_back_a_replica(
        self, replicated: RedisCluster
    ) -> None:
        key = "{globex}:spend"
        old = replicated.primary_for(key)
        old.pause()
        promoted = replicated.wait_for_failover(key)
        assert promoted is not old
        assert promoted.role == "primary"
        old.resume()
        replicated.wait_ready()
        assert old.role == "replica"
