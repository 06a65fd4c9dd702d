"""A private ``redis-server`` for the tests of the Redis store.

``RedisServer`` runs the ``redis-server`` binary on a free local port in a
temporary directory, and can stop and start it again on the same port and
directory (restart tests, with ``appendonly=True``)::

    with RedisServer(appendonly=True) as server:
        store = RedisStore(server.url)
        ...
        server.stop()
        server.start()

``redis_url_or_skip()`` is the URL tests should use: ``RATEBUDGET_REDIS_URL``
when set (an external server: tests that restart it skip), else a server of
this module started once per test process. Without ``redis-server`` on PATH
the calling test skips, or fails when ``RATEBUDGET_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import atexit
import os
import shutil
from typing import Any

import pytest

from ratebudget.testing import RedisServer

__all__ = (
    "RedisServer",
    "external_redis_url",
    "redis_server_or_skip",
    "redis_url_or_skip",
)

_shared: RedisServer | None = None


def external_redis_url() -> str | None:
    """``RATEBUDGET_REDIS_URL``, if the tests should use that server."""
    return os.environ.get("RATEBUDGET_REDIS_URL") or None


def _binary_or_skip() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (or set RATEBUDGET_REDIS_URL)"
        if os.environ.get("RATEBUDGET_REQUIRE_REDIS") == "1":
            pytest.fail(reason + " and RATEBUDGET_REQUIRE_REDIS=1")
        pytest.skip(reason)
    return binary


def redis_url_or_skip() -> str:
    """The URL of a Redis the tests may use, or skip (see the module's docstring)."""
    global _shared
    url = external_redis_url()
    if url is not None:
        return url
    _binary_or_skip()
    if _shared is None or not _shared.running:
        _shared = RedisServer()
        _shared.start()
        atexit.register(_shared.close)
    return _shared.url


def redis_server_or_skip(**options: Any) -> RedisServer:
    """A private, not yet started server; skip if the tests use an external one."""
    if external_redis_url() is not None:
        pytest.skip("RATEBUDGET_REDIS_URL is set: cannot start or stop that server")
    _binary_or_skip()
    return RedisServer(**options)
