"""Test helpers: a fake clock, a fake LLM provider, a private Redis.

``FakeClock`` moves only when told: ``clock.advance(seconds)`` moves both the
monotonic and the wall clock and wakes every sleeper whose deadline came.
Use it as ``Limiter(..., clock=FakeClock())``; it works on asyncio and trio
(sleepers must belong to the event loop that calls ``advance``) and with
plain threads blocked in ``limiter.sync``.

``FakeProvider`` is an offline OpenAI and Anthropic API (an ASGI app, or
served on loopback) with rate limits of its own and a log of the requests.

``RedisServer`` runs a private ``redis-server`` (the binary must be on PATH)
on a free port in a temporary directory, for tests of code that uses a
``RedisStore``; it can be stopped, killed and started again.

``RedisCluster`` runs a private Redis Cluster of such servers (``redis-cli``
forms it), whose nodes (``RedisClusterNode``) can be killed, paused and
restarted, and waits for a failover.
"""

from __future__ import annotations

from ._clock import FakeClock as FakeClock
from ._clock import store_busy as store_busy
from ._provider import FakeProvider as FakeProvider
from ._redis import RedisServer as RedisServer
from ._redis_cluster import RedisCluster as RedisCluster
from ._redis_cluster_node import RedisClusterNode as RedisClusterNode

__all__ = (
    "FakeClock",
    "FakeProvider",
    "RedisCluster",
    "RedisClusterNode",
    "RedisServer",
    "store_busy",
)
