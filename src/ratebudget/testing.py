"""Test helpers: a fake clock that never sleeps for real, a private Redis.

``FakeClock`` moves only when told: ``clock.advance(seconds)`` moves both the
monotonic and the wall clock and wakes every sleeper whose deadline came.
Use it as ``Limiter(..., clock=FakeClock())``; it works on asyncio and trio
(sleepers must belong to the event loop that calls ``advance``) and with
plain threads blocked in ``limiter.sync``.

``RedisServer`` runs a private ``redis-server`` (the binary must be on PATH)
on a free port in a temporary directory, for tests of code that uses a
``RedisStore``; it can be stopped, killed and started again.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._clock import Sleeper
from ._fake_provider import FakeProvider

__all__ = ("FakeClock", "FakeProvider", "RedisServer")

_NS = 1_000_000_000


class FakeClock:
    """A manual clock for tests (like ``trio.testing.MockClock``)."""

    def __init__(
        self, start: datetime | float = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ) -> None:
        if isinstance(start, datetime):
            if start.tzinfo is None:
                raise ValueError("FakeClock(start=...) needs an aware datetime")
            start = start.timestamp()
        self._wall0 = float(start)
        self._now = 0
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._sleepers: list[tuple[int, int, Callable[[], None]]] = []

    def monotonic_ns(self) -> int:
        return self._now

    def time(self) -> float:
        return self._wall0 + self._now / _NS

    @property
    def seconds(self) -> float:
        """Monotonic seconds elapsed since the clock was made."""
        return self._now / _NS

    def _register(
        self, deadline_ns: int, callback: Callable[[], None]
    ) -> tuple[int, int, Callable[[], None]]:
        entry = (deadline_ns, next(self._seq), callback)
        with self._lock:
            heapq.heappush(self._sleepers, entry)
        return entry

    def _unregister(self, entry: tuple[int, int, Callable[[], None]]) -> None:
        with self._lock:
            try:
                self._sleepers.remove(entry)
            except ValueError:
                return
            heapq.heapify(self._sleepers)

    async def sleep_until(self, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await anyio.sleep_forever()
            return
        await self.wait(anyio.Event(), deadline_ns)

    async def wait(self, event: Sleeper, deadline_ns: int | None) -> None:
        if deadline_ns is None:
            await event.wait()
            return
        if deadline_ns <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        entry = self._register(deadline_ns, event.set)
        try:
            await event.wait()
        finally:
            self._unregister(entry)

    def schedule(
        self, deadline_ns: int, callback: Callable[[], None]
    ) -> Callable[[], object]:
        """Call ``callback`` when fake time reaches the deadline (in ``advance``)."""
        entry = self._register(deadline_ns, callback)
        return lambda: self._unregister(entry)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of fake time."""
        await self.sleep_until(self._now + math.ceil(seconds * _NS))

    def wait_until(self, event: threading.Event, deadline_ns: int | None) -> None:
        if deadline_ns is None or deadline_ns <= self._now:
            if deadline_ns is None:
                event.wait()
            return
        entry = self._register(deadline_ns, event.set)
        try:
            event.wait()
        finally:
            self._unregister(entry)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake the sleepers now due."""
        if not seconds >= 0:
            raise ValueError(f"advance({seconds!r}): time only moves forward")
        self.advance_ns(math.ceil(seconds * _NS))

    def advance_ns(self, ns: int) -> None:
        """Move time forward by exactly ``ns`` nanoseconds (no float rounding)."""
        if ns < 0:
            raise ValueError(f"advance_ns({ns!r}): time only moves forward")
        due: list[Callable[[], None]] = []
        with self._lock:
            self._now += ns
            while self._sleepers and self._sleepers[0][0] <= self._now:
                due.append(heapq.heappop(self._sleepers)[2])
        for callback in due:
            callback()

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending."""
        return len(self._sleepers)

    def next_deadline(self) -> float | None:
        """Seconds until the earliest pending sleep ends, or ``None``."""
        deadline = self.next_deadline_ns()
        return None if deadline is None else max(0, deadline - self._now) / _NS

    def next_deadline_ns(self) -> int | None:
        """The earliest pending sleep's deadline (monotonic ns), or ``None``.

        ``clock.advance_ns(clock.next_deadline_ns() - clock.monotonic_ns())``
        lands exactly on it.
        """
        with self._lock:
            return self._sleepers[0][0] if self._sleepers else None

    def __repr__(self) -> str:
        return f"<FakeClock at {self._now / _NS:.6f}s, {len(self._sleepers)} sleeping>"


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
