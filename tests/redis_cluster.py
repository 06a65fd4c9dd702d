"""A private Redis Cluster for the tests of sharding over Redis Cluster.

``RedisCluster`` runs ``redis-server --cluster-enabled yes`` nodes on free
local ports and forms them into a cluster with ``redis-cli --cluster create``::

    with RedisCluster(primaries=3, replicas=1) as cluster:
        client = cluster.client()
        ...
        cluster.kill_primary_for("{acme}")
        promoted = cluster.wait_for_failover("{acme}")

``redis_cluster_url_or_skip()`` is the ``redis+cluster://`` URL tests should
use: ``RATEBUDGET_REDIS_CLUSTER_URL`` when set (an external cluster), else a
3-primary cluster of this module started once per test process (each process
its own, on its own free ports). Without ``redis-server`` and ``redis-cli`` on
PATH the calling test skips, or fails when ``RATEBUDGET_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest

from ratebudget.testing import RedisCluster

if TYPE_CHECKING:
    import redis.cluster

__all__ = (
    "RedisCluster",
    "cluster_client",
    "external_redis_cluster_url",
    "redis_cluster_or_skip",
    "redis_cluster_url_or_skip",
    "shared_redis_cluster_or_skip",
)

_shared: RedisCluster | None = None


def external_redis_cluster_url() -> str | None:
    """``RATEBUDGET_REDIS_CLUSTER_URL``, if the tests should use that cluster."""
    return os.environ.get("RATEBUDGET_REDIS_CLUSTER_URL") or None


def _binaries_or_skip() -> None:
    missing = [name for name in ("redis-server", "redis-cli") if not shutil.which(name)]
    if missing:
        reason = f"{' and '.join(missing)} not on PATH"
        if os.environ.get("RATEBUDGET_REQUIRE_REDIS") == "1":
            pytest.fail(reason + " and RATEBUDGET_REQUIRE_REDIS=1")
        pytest.skip(reason)


def shared_redis_cluster_or_skip() -> RedisCluster:
    """This process's shared 3-primary cluster, started at the first call.

    Tests may read and write it, not stop its nodes. Skips when the tests use
    an external cluster (``RATEBUDGET_REDIS_CLUSTER_URL``).
    """
    global _shared
    if external_redis_cluster_url() is not None:
        pytest.skip("RATEBUDGET_REDIS_CLUSTER_URL is set: no private cluster here")
    _binaries_or_skip()
    if _shared is None:
        _shared = RedisCluster(primaries=3)
        _shared.start()  # closed at exit (RedisCluster registers that itself)
    return _shared


def redis_cluster_url_or_skip() -> str:
    """The URL of a Redis Cluster the tests may use, or skip (see the module)."""
    url = external_redis_cluster_url()
    if url is not None:
        return url
    return shared_redis_cluster_or_skip().url


def redis_cluster_or_skip(**options: Any) -> RedisCluster:
    """A private, not yet started cluster (``RedisCluster(**options)``), or skip."""
    _binaries_or_skip()
    return RedisCluster(**options)


def cluster_client(url: str, **options: Any) -> redis.cluster.RedisCluster:
    """A redis-py cluster client seeded with the nodes of a ``redis+cluster://`` URL."""
    from redis.cluster import ClusterNode
    from redis.cluster import RedisCluster as ClusterClient

    parts = urlsplit(url)
    if parts.scheme != "redis+cluster":
        raise ValueError(f"not a redis+cluster:// URL: {url!r}")
    if parts.username:
        options.setdefault("username", unquote(parts.username))
    if parts.password:
        options.setdefault("password", unquote(parts.password))
    seeds = []
    for address in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = address.rpartition(":")
        seeds.append(ClusterNode(host, int(port)))  # type: ignore[no-untyped-call]
    return ClusterClient(startup_nodes=seeds, **options)
