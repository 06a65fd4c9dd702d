from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ratebudget import Cap, Limiter, Rate
from ratebudget.stores import MemoryStore


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A usage ledger's URL: a SQLite file, then a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'usage.db'}"
    else:
        from postgres import postgres_schema

        with postgres_schema() as url:
            yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis server's URL: ``RATEBUDGET_REDIS_URL``, or a private server.

    Skips without ``redis-server`` on PATH (fails with RATEBUDGET_REQUIRE_REDIS=1).
    """
    from redis_server import redis_url_or_skip

    return redis_url_or_skip()


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """A Redis Cluster's URL: ``RATEBUDGET_REDIS_CLUSTER_URL``, or a private cluster.

    ``redis+cluster://host:port,...``; the private cluster has 3 primaries and
    no replicas, started once per test process. Skips without ``redis-server``
    and ``redis-cli`` on PATH (fails with RATEBUDGET_REQUIRE_REDIS=1).
    """
    from redis_cluster import redis_cluster_url_or_skip

    return redis_cluster_url_or_skip()


_names = itertools.count()

Make = Callable[..., Limiter]
"""``make(*limits, name=None, **kw)``: a ``Limiter`` on the store under test."""


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Run a behaviour test on every store."""
    return str(request.param)


@pytest.fixture
def make(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    """Build limiters on the store under test, as ``Limiter(...)`` would.

    Limiters of one ``name`` share their state (on memory, through one
    ``MemoryStore``); limiters built without a name get a fresh one each, so
    they are independent on every store, as two unnamed memory limiters are.
    """
    memory = MemoryStore()
    url = ""
    if store_kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'budgets.db'}"
    elif store_kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif store_kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
    run = uuid.uuid4().hex[:8]

    def build(*limits: Rate | Cap, name: str | None = None, **kw: Any) -> Limiter:
        if store_kind == "memory":
            if name is None:
                return Limiter(*limits, **kw)
            return Limiter(*limits, store=memory, name=name, **kw)
        name = f"{name or f'anon{next(_names)}'}-{run}"
        return Limiter(*limits, store=url, name=name, **kw)

    return build
