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
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process, restartable on the same port and directory.

    ``appendonly``: keep an append-only file (fsynced on every write with
    ``appendfsync="always"``); ``save``: the RDB snapshot schedule ("": none).
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        save: str = "",
        appendfsync: str = "everysec",
        port: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        binary: str = "redis-server",
    ) -> None:
        self.appendonly = appendonly
        self.save = save
        self.appendfsync = appendfsync
        self.port = port or _free_port()
        self._own_dir = directory is None
        self.dir = Path(
            tempfile.mkdtemp(prefix="ratebudget-redis-")
            if directory is None
            else directory
        )
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.dir / "redis.log"),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", self.save,
        ]  # fmt: skip

    def client(self) -> Any:
        """A new sync client of this server (the caller closes it)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again), and wait until it answers."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    raise RuntimeError(
                        f"redis-server exited at start:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except Exception:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(
                            f"redis-server did not answer:\n{self._log_tail()}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Shut the server down without an RDB snapshot (the AOF is flushed)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            client = self.client()
            try:
                client.shutdown(nosave=True)
            except Exception:
                pass
            finally:
                client.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """``kill -9`` the server: only what the AOF already holds survives."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its directory (if this object made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def info_commandstats(self) -> dict[str, dict[str, Any]]:
        """``INFO commandstats``: ``{"cmdstat_evalsha": {"calls": 3, ...}, ...}``."""
        client = self.client()
        try:
            info: dict[str, dict[str, Any]] = client.info("commandstats")
            return info
        finally:
            client.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
