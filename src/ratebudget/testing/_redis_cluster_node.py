"""``RedisClusterNode``: one ``redis-server --cluster-enabled yes`` of a
``RedisCluster``, and what a node says of the cluster (``CLUSTER NODES``).

A node is a ``RedisServer`` on a free loopback port whose cluster bus port
(the port + 10000) is free too, in a directory of its own that holds its
``nodes.conf``: it can be killed, paused and started again, to rejoin.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._redis import RedisServer, _free_port

__all__ = ("RedisClusterNode",)

_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_node_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = _free_port()
        bus = port + _BUS_OFFSET
        if bus <= 65535 and not {port, bus} & taken and _can_bind(bus):
            taken.update((port, bus))
            return port
    raise RuntimeError("found no free pair of loopback ports (port, port + 10000)")


class RedisClusterNode(RedisServer):
    """One node of a ``RedisCluster``: a ``RedisServer`` in cluster mode.

    ``kill()``, ``stop()``, ``pause()``, ``resume()`` and ``start()`` work as on
    a ``RedisServer``; a node started again keeps its port, its directory and
    its ``nodes.conf``, so it rejoins its cluster (a primary that was replaced
    meanwhile comes back as a replica: ``cluster.wait_ready()`` waits for that).
    """

    def __init__(
        self,
        *,
        port: int,
        directory: Path,
        node_timeout_ms: int,
        appendonly: bool,
        binary: str,
        options: Mapping[str, str],
    ) -> None:
        super().__init__(
            appendonly=appendonly,
            port=port,
            directory=directory,
            binary=binary,
            options={
                "cluster-enabled": "yes",
                "cluster-config-file": str(directory / "nodes.conf"),
                "cluster-node-timeout": str(node_timeout_ms),
                # Redis 7 waits 5 s for more replicas before a diskless full sync
                "repl-diskless-sync-delay": "0",
                # a replica is left out of CLUSTER SLOTS until its offset moves,
                # which an idle primary's pings do every 10 s by default
                "repl-ping-replica-period": "1",
                **options,
            },
        )
        self._paused = False

    @property
    def address(self) -> str:
        """``"127.0.0.1:port"``, as the cluster names the node."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Running and not paused: the node can answer."""
        return self.running and not self._paused

    @property
    def role(self) -> Literal["primary", "replica"]:
        """What the node says it is now (it is asked: ``ROLE``).

        Raises redis-py's ``ConnectionError`` or ``TimeoutError`` when the node
        is down or paused.
        """
        with self._probe() as client:
            reply = client.execute_command("ROLE")
        return "primary" if reply[0] == "master" else "replica"

    def start(self, timeout: float = 10.0) -> None:
        """Start the node (again) on its port and files, and wait until it answers."""
        super().start(timeout)
        self._paused = False

    def kill(self) -> None:
        """``kill -9`` the node."""
        super().kill()
        self._paused = False

    def stop(self) -> None:
        """Shut the node down cleanly (``SHUTDOWN NOSAVE``)."""
        super().stop()
        self._paused = False

    def pause(self) -> None:
        """Freeze the node (``SIGSTOP``): to the others it stops answering."""
        if self.running:
            super().pause()
            self._paused = True

    def resume(self) -> None:
        """Thaw a paused node (``SIGCONT``)."""
        super().resume()
        self._paused = False

    @contextmanager
    def _probe(self) -> Iterator[Any]:
        """A client for looking at the node: short timeouts, no retries, str replies."""
        import redis as redis_py
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis_py.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            yield client
        finally:
            client.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "down"
        return f"<RedisClusterNode {self.address} {state}>"


@dataclass(frozen=True)
class _Seen:
    """One line of ``CLUSTER NODES``: a node as one node sees it."""

    address: str
    node_id: str
    flags: frozenset[str]
    primary_id: str  # the node it replicates; "-" for a primary
    slots: tuple[tuple[int, int], ...]  # inclusive ranges


def _parse_nodes(text: str) -> list[_Seen]:
    seen: list[_Seen] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        slots: list[tuple[int, int]] = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot on its way in or out
                continue
            first, _, last = part.partition("-")
            slots.append((int(first), int(last or first)))
        seen.append(
            _Seen(
                address=fields[1].split("@")[0],
                node_id=fields[0],
                flags=frozenset(fields[2].split(",")),
                primary_id=fields[3],
                slots=tuple(slots),
            )
        )
    return seen


def _owner(view: list[_Seen], slot: int) -> str | None:
    for entry in view:
        if any(first <= slot <= last for first, last in entry.slots):
            return entry.address
    return None
