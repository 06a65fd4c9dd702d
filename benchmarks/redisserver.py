"""A private ``redis-server`` for the store benchmarks.

The start and stop logic of ``tests/redis_server.py``, without pytest: a
``redis-server`` on a free local port, in a temporary directory, persisting
nothing (no AOF, no RDB), stopped and deleted when the run ends. The
benchmarks never touch a Redis they did not start (in particular not the
system one on 6379).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ("RedisServer", "binary")


def binary() -> str | None:
    """The ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process: ``with RedisServer() as server: server.url``."""

    def __init__(self, executable: str = "redis-server") -> None:
        self.executable = executable
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ratebudget-bench-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        """A new sync client of this server (the caller closes it)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # no retries: SHUTDOWN drops the connection, and a retrying client
        # would back off for seconds before giving up
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=10,
            retry=Retry(NoBackoff(), 0),
        )

    def version(self) -> str:
        client = self.client()
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers."""
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.dir),
            "daemonize": "no",
            "protected-mode": "no",
            "logfile": str(self.dir / "redis.log"),
            "appendonly": "no",
            "save": "",
            "maxclients": "10000",
        }
        args = [self.executable]
        for name, value in options.items():
            args += [f"--{name}", value]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                if self._proc.poll() is not None:
                    self._proc = None
                    raise RuntimeError(f"redis-server exited at start:\n{self._log()}")
                try:
                    if client.ping():
                        return
                except Exception:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"redis-server did not answer:\n{self._log()}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def _log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (SHUTDOWN NOSAVE, then SIGKILL) and delete its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            client = self.client()
            try:
                client.shutdown(nosave=True)
            except Exception:  # the connection drops as it shuts down
                pass
            finally:
                client.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
