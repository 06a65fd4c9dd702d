"""``RedisServer``: a private ``redis-server`` for tests of code using a ``RedisStore``.

It runs the binary found on PATH on a free port in a temporary directory, and
can be stopped, killed and started again on the same port and files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ("RedisServer",)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server``, restartable on the same port and directory.

    ``with RedisServer() as server: store = RedisStore(server.url)``.
    ``appendonly``: keep an append-only file (fsynced on every write with
    ``appendfsync="always"``); ``save``: the RDB snapshot schedule ("": none);
    ``options``: any other ``redis-server`` option (``{"maxclients": "10000"}``).
    ``stop()`` shuts it down cleanly, ``kill()`` as ``kill -9`` would, and
    ``start()`` starts it again on the same port and files; leaving the
    ``with`` block stops it and deletes its directory.
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
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.appendonly = appendonly
        self.options = dict(options or {})
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
            *(arg for k, v in self.options.items() for arg in (f"--{k}", v)),
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

    def version(self) -> str:
        """The server's version, as ``INFO`` gives it."""
        client = self.client()
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()

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
        self.resume()  # a paused server would not hear the shutdown
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

    def pause(self) -> None:
        """Freeze the server (``SIGSTOP``): connections stay open and
        nothing answers, like a server that hangs; ``resume()`` thaws it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server (``SIGCONT``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

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
