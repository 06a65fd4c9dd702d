from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis server's URL: ``RATEBUDGET_REDIS_URL``, or a private server.

    Skips without ``redis-server`` on PATH (fails with RATEBUDGET_REQUIRE_REDIS=1).
    """
    from redis_server import redis_url_or_skip

    return redis_url_or_skip()
