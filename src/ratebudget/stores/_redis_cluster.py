"""A ``RedisStore`` on a Redis Cluster: its URL, its routes and its wake-ups.

``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` with
TLS) names a cluster by some of its nodes; the rest are found with
``CLUSTER SLOTS``. Every key of a tree of limiters carries its root's hash
tag (``{root}``), so each decision is one script call on the primary that
serves the tree's slot, and different trees spread over the shards.

The script calls do not go through redis-py's cluster client, which retries
a command after a timeout and would run a decision twice: ``Routes`` sends
each to the primary of its slot on a connection of that node's pool (held
by the thread, as on a single server), or on the event loop's own link to
that node. A ``MOVED`` reply (the slot moved: the call did not run) sends
it once more where the reply says and has the slot map read again; ``ASK``
(a slot being migrated) sends it there after ``ASKING``. A node that does
not answer fails its calls with ``StoreUnavailable`` and has the map read
again, so once a replica is promoted the next call reaches it. Everything
else (the registry, live limits, ledger streams) goes through redis-py's
``RedisCluster``.

Wake-ups use sharded pub/sub where the servers have it (Redis 7+): the
script ``SPUBLISH``es on ``{root}:wake``, which only the shard of that slot
relays, and the listener ``SSUBSCRIBE``s each root a process waits on, on
its shard (redis-py's ``ClusterPubSub`` follows a slot that moves). Older
servers get the broadcast ``PUBLISH`` and one pattern subscription.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import StoreUnavailable
from ._redis_calls import thread_connection
from ._redis_urls import parse_cluster_url

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

    from ._redis_link import Links

# redis-py's cluster client is untyped: its nodes (``ClusterNode``) are Any
Node = Any

__all__ = ("Routes", "cluster_client")

# the slot map is read again at most this often (s) after failed calls
_REFRESH_EVERY: Final = 0.25


def cluster_client(url: str, timeout: float) -> RedisCluster:
    """A ``RedisCluster`` of the nodes ``url`` names (no retries of a call
    that timed out: one retry, for a ``MOVED`` or a node just promoted)."""
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry

    nodes, options = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in nodes
        ],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        require_full_coverage=False,
        **options,
    )


class Routes:
    """Which primary serves a key, and this process's connections to it."""

    def __init__(
        self,
        cluster: Callable[[], Any],
        links_for: Callable[[Any], Links | None] | None,
    ) -> None:
        self._cluster = cluster  # the RedisCluster (made at first use)
        self._links_for = links_for  # a node's Redis -> its loops' links
        self._links: dict[str, Links | None] = {}
        self._held = threading.local()  # each thread's connections, by node
        self._lock = threading.Lock()
        self._refresh_at = 0.0  # monotonic time before which none is due
        self._refreshing = False

    @property
    def cluster(self) -> Any:
        return self._cluster()

    def node_of(self, key: str) -> Node:
        """The primary serving ``key``'s slot, as the map last read says."""
        return self.cluster.get_node_from_key(key)

    def node_at(self, host: str, port: int) -> Node:
        """The node at ``host:port`` (a ``MOVED`` or ``ASK`` reply's)."""
        node = self.cluster.get_node(host=host, port=port)
        if node is None:  # a node the map does not know yet
            self.refresh(wait=True)
            node = self.cluster.get_node(host=host, port=port)
        if node is None:
            raise StoreUnavailable(
                f"the cluster sent a call to {host}:{port}, a node its slot map "
                "does not list (yet)"
            )
        return node

    def connection(self, node: Node) -> Any:
        """This thread's connection to ``node`` (from the node's pool)."""
        pool = node.redis_connection.connection_pool
        return thread_connection(self._held, pool, node.name)

    def links(self, node: Node) -> Links | None:
        """The event loops' links to ``node`` (``None``: none can be made)."""
        links = self._links.get(node.name)
        if links is None and self._links_for is not None:
            with self._lock:
                if node.name not in self._links:
                    self._links[node.name] = self._links_for(node.redis_connection)
                links = self._links[node.name]
        return links

    def refresh(self, *, wait: bool = False) -> None:
        """Read the slot map again (at most every 0.25 s): here with
        ``wait``, else on a thread of its own (from an event loop)."""
        now = time.monotonic()
        with self._lock:
            if self._refreshing or now < self._refresh_at:
                return
            self._refreshing = True
        if wait:
            self._refresh()
        else:
            threading.Thread(
                target=self._refresh, name="ratebudget-redis-slots", daemon=True
            ).start()

    def _refresh(self) -> None:
        try:
            self.cluster.nodes_manager.initialize()
        except Exception:  # the next failed call asks again
            pass
        finally:
            with self._lock:
                self._refreshing = False
                self._refresh_at = time.monotonic() + _REFRESH_EVERY

    def primaries(self) -> list[Node]:
        return list(self.cluster.get_primaries())

    def close(self) -> None:
        for links in self._links.values():
            if links is not None:
                links.close()
