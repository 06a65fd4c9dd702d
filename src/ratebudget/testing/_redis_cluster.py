"""``RedisCluster``: a private Redis Cluster for tests of code that shards over one.

Every node is a ``redis-server --cluster-enabled yes`` (a ``RedisClusterNode``,
which is a ``RedisServer``) on a free loopback port, in a directory of its own
that holds its ``nodes.conf``; ``redis-cli --cluster create`` forms the cluster,
and ``start()`` returns once every node sees the same, complete cluster.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ._redis_cluster_node import (
    RedisClusterNode,
    _free_node_port,
    _owner,
    _parse_nodes,
    _Seen,
)

if TYPE_CHECKING:
    import redis.cluster

__all__ = ("RedisCluster", "RedisClusterNode")

_SLOTS = 16384
_UNHEALTHY = frozenset({"fail", "fail?", "handshake", "noaddr"})
_POLL = 0.02  # seconds between two looks at the cluster

_Level = Literal["served", "settled", "formed"]


class RedisCluster:
    """A private Redis Cluster on loopback, for tests: ``with RedisCluster() as cluster:``.

    ``primaries`` (at least 3, as ``redis-cli --cluster create`` requires) and
    ``replicas`` per primary; ``node_timeout_ms`` is ``cluster-node-timeout``
    (the default, 1 s, makes a failover take about 2–3 s);
    ``appendonly`` keeps an append-only file on every node; ``options``: any
    other ``redis-server`` option, for every node. ``binary`` and ``cli`` are
    the ``redis-server`` and ``redis-cli`` to run (both found on PATH by
    default). ``nodes`` lists the primaries as created, then the replicas.
    Leaving the ``with`` block (or ``close()``) kills every node and deletes
    their directories; so does the interpreter's exit, if nothing did before.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 1000,
        appendonly: bool = False,
        options: Mapping[str, str] | None = None,
        binary: str = "redis-server",
        cli: str = "redis-cli",
    ) -> None:
        if primaries < 3:
            raise ValueError(
                f"a Redis Cluster made by redis-cli needs at least 3 primaries, not {primaries}"
            )
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, not {replicas}")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.cli = cli
        self.dir = Path(tempfile.mkdtemp(prefix="ratebudget-redis-cluster-"))
        taken: set[int] = set()
        self.nodes: list[RedisClusterNode] = []
        for _ in range(primaries * (1 + replicas)):
            port = _free_node_port(taken)
            directory = self.dir / str(port)
            directory.mkdir()
            self.nodes.append(
                RedisClusterNode(
                    port=port,
                    directory=directory,
                    node_timeout_ms=node_timeout_ms,
                    appendonly=appendonly,
                    binary=binary,
                    options=options or {},
                )
            )
        self._started = self._closed = False
        atexit.register(self.close)  # the safety net: no node outlives the tests

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``: the primaries as created.

        Any node of a cluster serves as a seed, so the URL stays usable after
        a failover as long as one of them runs.
        """
        seeds = ",".join(node.address for node in self.nodes[: self.primaries])
        return f"redis+cluster://{seeds}"

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, form the cluster, and wait until it is whole.

        Whole: every node says ``cluster_state:ok`` with all 16384 slots served,
        every node sees every other one, healthy and in the same role, with
        the same slot map, and every replica is linked to its primary.
        Raises ``RuntimeError`` (with the reason) if that takes over ``timeout``
        seconds; nothing is left running then. Once started, it does nothing.
        """
        if self._closed:
            raise RuntimeError("this RedisCluster was closed: make a new one")
        if self._started:
            return
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                node.start(max(deadline - time.monotonic(), 0.1))
            self._create(max(deadline - time.monotonic(), 0.1))
            self._wait(deadline, "to form", "formed")
            self._started = True
        except BaseException:
            self.close()
            raise

    def _create(self, timeout: float) -> None:
        command = [
            self.cli,
            "--cluster", "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"redis-cli --cluster create took over {timeout:.1f} s"
            ) from exc
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the running nodes agree on a whole cluster (see ``start()``).

        Nodes that are down or paused are left out; use it after starting a
        node again, to wait until it has rejoined and, as a replica, resynced.
        """
        self._wait(time.monotonic() + timeout, "to settle", "settled")

    def wait_for_failover(
        self, key: str, timeout: float | None = None
    ) -> RedisClusterNode:
        """Wait until a running node serves ``key``'s slot, and return it.

        After the slot's primary was killed or paused: waits until a replica
        was promoted, every running node says ``cluster_state:ok`` and they
        all agree on the slot map. ``timeout``: 10 node timeouts plus 10 s by
        default; raises ``RuntimeError`` with the reason when it runs out.
        """
        if timeout is None:
            timeout = 10 * self.node_timeout_ms / 1000 + 10
        self._wait(time.monotonic() + timeout, "to fail over", "served")
        return self.primary_for(key)

    def primary_for(self, key: str) -> RedisClusterNode:
        """The node that owns ``key``'s slot, as most running nodes see it.

        In the middle of a failover the nodes may disagree; ``wait_for_failover``
        waits until they do not.
        """
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        owners: Counter[str | None] = Counter()
        for node in self.nodes:
            if node.alive:
                with node._probe() as client:
                    view = _parse_nodes(client.execute_command("CLUSTER", "NODES"))
                owners[_owner(view, slot)] += 1
        if not owners:
            raise RuntimeError("no node of the cluster is running")
        ((owner, _),) = owners.most_common(1)
        if owner is None:
            raise RuntimeError(f"no node serves slot {slot} (key {key!r})")
        return self._node(owner)

    def kill_primary_for(self, key: str) -> RedisClusterNode:
        """``kill -9`` the primary of ``key``'s slot, and return it."""
        node = self.primary_for(key)
        node.kill()
        return node

    def client(self, **options: Any) -> redis.cluster.RedisCluster:
        """A new ``redis.cluster.RedisCluster`` client (the caller closes it).

        It knows every node as a seed; ``options`` go to its constructor
        (``decode_responses=True``, say).
        """
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as ClusterClient

        seeds = [
            ClusterNode("127.0.0.1", node.port)  # type: ignore[no-untyped-call]
            for node in self.nodes
        ]
        return ClusterClient(startup_nodes=seeds, **options)

    def _node(self, address: str) -> RedisClusterNode:
        for node in self.nodes:
            if node.address == address:
                return node
        raise RuntimeError(f"the cluster names a node that is not its own: {address}")

    def _wait(self, deadline: float, what: str, level: _Level) -> None:
        from redis.exceptions import RedisError

        with ExitStack() as stack:
            probes = {node: stack.enter_context(node._probe()) for node in self.nodes}
            while True:
                try:
                    problem = self._problem(probes, level)
                except RedisError as exc:  # a node went away while we looked
                    problem = f"{type(exc).__name__}: {exc}"
                if problem is None:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster failed {what}: {problem}")
                time.sleep(_POLL)

    def _problem(
        self, probes: Mapping[RedisClusterNode, Any], level: _Level
    ) -> str | None:
        """Why the running nodes are not at ``level`` yet, or ``None``.

        ``"served"``: every slot is served by a running node, and they agree
        on which (a failover is over); ``"settled"``: also every running node
        known to every other, healthy, in the same role, replicas linked;
        ``"formed"``: also as many primaries and replicas as were created.
        """
        alive = [node for node in self.nodes if node.alive]
        if not alive:
            return "no node is running"
        addresses = {node.address for node in alive}
        views: dict[str, list[_Seen]] = {}
        for node in alive:
            client = probes[node]
            info = client.execute_command("CLUSTER", "INFO")
            if (
                "cluster_state:ok" not in info
                or f"cluster_slots_ok:{_SLOTS}" not in info
            ):
                return f"{node.address} says {info.splitlines()[0]!r}"
            views[node.address] = _parse_nodes(
                client.execute_command("CLUSTER", "NODES")
            )
        slot_maps = {
            address: sorted(
                (first, last, entry.address)
                for entry in view
                for first, last in entry.slots
            )
            for address, view in views.items()
        }
        first, *others = alive
        for node in others:
            if slot_maps[node.address] != slot_maps[first.address]:
                return f"{node.address} and {first.address} see other slot maps"
        for _, _, owner in slot_maps[first.address]:
            if owner not in addresses:
                return f"slots are still with {owner}, which is down"
        if level == "served":
            return None
        tables = {}
        for address, view in views.items():
            names = {entry.node_id: entry.address for entry in view}
            seen = {entry.address: entry for entry in view}
            if missing := addresses - seen.keys():
                return f"{address} does not know {sorted(missing)}"
            for other in addresses:
                if bad := seen[other].flags & _UNHEALTHY:
                    return f"{address} sees {other} as {','.join(sorted(bad))}"
            tables[address] = {
                other: names.get(seen[other].primary_id, "-") for other in addresses
            }
        for node in others:
            if tables[node.address] != tables[first.address]:
                return f"{node.address} and {first.address} see other roles"
        table = tables[first.address]
        for node in alive:
            if table[node.address] != "-":
                role = probes[node].execute_command("ROLE")
                if role[0] != "slave" or role[3] != "connected":
                    return f"replica {node.address} is not linked yet ({role})"
        for node in alive:  # what clients read: CLUSTER SLOTS lists the replicas
            for low, high, owner, *copies in probes[node].execute_command(
                "CLUSTER", "SLOTS"
            ):
                listed = sorted(f"{ip}:{port}" for ip, port, *_ in copies)
                primary = f"{owner[0]}:{owner[1]}"
                expected = sorted(a for a, of in table.items() if of == primary)
                if listed != expected:
                    return (
                        f"{node.address}'s CLUSTER SLOTS lists {listed} as replicas"
                        f" of {primary} (slots {low}-{high}), not {expected}"
                    )
        if level == "formed":  # redis-cli makes the first nodes it is given primaries
            owners = sorted({owner for _, _, owner in slot_maps[first.address]})
            created = sorted(node.address for node in self.nodes[: self.primaries])
            linked = sum(primary != "-" for primary in table.values())
            if owners != created or linked != len(self.nodes) - self.primaries:
                return f"primaries {owners} and {linked} replicas so far"
        return None

    def close(self) -> None:
        """Kill every node and delete their directories (again: nothing happens)."""
        self._closed = True
        atexit.unregister(self.close)
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        running = sum(node.running for node in self.nodes)
        return (
            f"<RedisCluster {self.primaries} primaries, {self.replicas} replicas "
            f"each, {running}/{len(self.nodes)} nodes running, {self.url}>"
        )
