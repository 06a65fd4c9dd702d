"""Alerts and overruns: logged, and handed to the limiter's ``on_alert``."""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import sys
import threading
from asyncio import _get_running_loop as _running_loop
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import anyio

from ._snapshot import Alert

__all__ = ("AlertHandler", "Dispatch", "handlers_of", "logger", "report")

logger: Final = logging.getLogger("ratebudget")

AlertHandler = Callable[[Alert], Awaitable[None] | None]
"""``on_alert``: a plain or async callable taking an ``Alert``."""


def handlers_of(
    on_alert: AlertHandler | Sequence[AlertHandler] | None,
) -> tuple[AlertHandler, ...]:
    """``on_alert`` as a tuple of handlers, or ``InvalidRequest``."""
    from ._exceptions import InvalidRequest

    if on_alert is None:
        return ()
    handlers = (
        tuple(on_alert)
        if isinstance(on_alert, (list, tuple)) and not callable(on_alert)
        else (on_alert,)
    )
    for handler in handlers:
        if not callable(handler):
            raise InvalidRequest(
                f"on_alert: {handler!r} is not callable (give a callable, an "
                "async callable, or a list of them)"
            )
    return handlers


def report(alerts: list[Alert], overruns: list[str], handled: bool) -> None:
    """Log overruns (WARNING) and alerts (WARNING, or INFO when a handler gets them)."""
    for note in overruns:
        logger.warning("ratebudget: %s", note)
    level = logging.INFO if handled else logging.WARNING
    for alert in alerts:
        logger.log(level, "ratebudget alert: %s", alert)


class Dispatch:
    """Hands a limiter's alerts to its ``on_alert`` handler off the callers'
    path, one at a time, in the order they fired.

    A commit or record that crosses a threshold queues its alerts and
    returns; one drainer at a time runs the handler for each: a task of the
    caller's event loop (asyncio or trio: an async handler runs where its
    resources live), each handler of ``on_alert`` in turn, or, for the blocking facade, the shared
    ``ratebudget-alerts`` thread (an async handler runs there in a loop of
    its own). A failing handler is logged (ERROR) and the next alert is
    still delivered. Alerts a cancelled drainer left (its event loop
    closing) go to the thread. ``flush`` / ``flush_sync`` wait until every
    alert queued so far has been handled.
    """

    __slots__ = ("_busy", "_handlers", "_idle", "_lock", "_queue", "_tasks")

    def __init__(self, handlers: tuple[AlertHandler, ...]) -> None:
        self._handlers = handlers
        self._queue: deque[Alert] = deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = False  # a drainer runs (or is about to)
        self._tasks: set[Any] = set()  # asyncio holds only weak references

    def post(self, alerts: list[Alert]) -> None:
        """Queue ``alerts`` from an event loop; drain them in a task of it."""
        if not self._claim(alerts):
            return
        try:
            loop = _running_loop()
            if loop is None:  # trio (anyio runs on asyncio or trio)
                import trio

                trio.lowlevel.spawn_system_task(self._drain_trio)
            else:
                task = loop.create_task(self._drain())
                self._tasks.add(task)
                task.add_done_callback(self._ended)
        except BaseException:
            self._to_thread()
            raise

    def post_here(self, alerts: list[Alert]) -> None:
        """Queue ``alerts`` from wherever this runs: ``post`` in an event
        loop, ``post_sync`` in a plain thread (a store's worker, say)."""
        if _in_event_loop():
            self.post(alerts)
        else:
            self.post_sync(alerts)

    def post_sync(self, alerts: list[Alert]) -> None:
        """Queue ``alerts`` from a plain thread; drain them in the alerts thread."""
        if self._claim(alerts):
            self._to_thread()

    def _claim(self, alerts: list[Alert]) -> bool:
        """Queue ``alerts``; whether the caller must start a drainer."""
        with self._lock:
            self._queue.extend(alerts)
            if self._busy or not self._queue:
                return False
            self._busy = True
            return True

    def _to_thread(self) -> None:
        _executor().submit(self._drain_sync)

    def _next(self) -> Alert | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            self._busy = False
            self._idle.notify_all()
            return None

    async def _drain(self) -> None:
        while (alert := self._next()) is not None:
            for handler in self._handlers:
                try:
                    result = handler(alert)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    _failed(handler, alert)

    def _ended(self, task: Any) -> None:
        """An asyncio drainer ended: if its loop cancelled it (closing), even
        before it started, the alerts left go to the thread."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            self._to_thread()

    async def _drain_trio(self) -> None:
        try:
            await self._drain()
        except BaseException:  # cancelled: the run is ending
            self._to_thread()
            raise

    def _drain_sync(self) -> None:
        while (alert := self._next()) is not None:
            for handler in self._handlers:
                try:
                    result = handler(alert)
                    if inspect.isawaitable(result):
                        anyio.run(_await, result)
                except Exception:
                    _failed(handler, alert)

    async def flush(self) -> None:
        """Wait until every alert queued so far has been handled."""
        while True:
            with self._lock:
                if not self._busy:
                    return
            await anyio.sleep(0.001)

    def flush_sync(self, timeout: float | None = None) -> bool:
        """``flush`` for plain threads; ``False`` if ``timeout`` ran out."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._busy, timeout)


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop (asyncio or trio) right now."""
    if _running_loop() is not None:
        return True
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _failed(handler: AlertHandler, alert: Alert) -> None:
    logger.exception(
        "ratebudget: on_alert handler %r failed for %s (%s)", handler, alert, alert.id
    )


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that runs handlers for the blocking facade (joined at
    interpreter exit, so an alert fired last is still delivered)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="ratebudget-alerts"
            )
        return _pool
