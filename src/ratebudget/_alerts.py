"""Alerts and overruns: logged, and handed to the limiter's ``on_alert``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio

from ._snapshot import Alert

__all__ = ("AlertHandler", "deliver", "deliver_sync", "logger", "report")

logger: Final = logging.getLogger("ratebudget")

AlertHandler = Callable[[Alert], Awaitable[None] | None]
"""``on_alert``: a plain or async callable taking an ``Alert``."""


def report(alerts: list[Alert], overruns: list[str], handled: bool) -> None:
    """Log overruns (WARNING) and alerts (WARNING, or INFO when a handler gets them)."""
    for note in overruns:
        logger.warning("ratebudget: %s", note)
    level = logging.INFO if handled else logging.WARNING
    for alert in alerts:
        logger.log(level, "ratebudget alert: %s", alert)


async def deliver(handler: AlertHandler | None, alerts: list[Alert]) -> None:
    """Hand each alert to ``handler`` (awaited, shielded); a failing handler is logged."""
    if handler is None:
        return
    for alert in alerts:
        try:
            result = handler(alert)
            if inspect.isawaitable(result):
                with anyio.CancelScope(shield=True):
                    await result
        except Exception:
            logger.exception("ratebudget: on_alert handler failed for %s", alert)


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


def deliver_sync(handler: AlertHandler | None, alerts: list[Alert]) -> None:
    """``deliver`` for plain threads (an async handler runs in its own loop)."""
    if handler is None:
        return
    for alert in alerts:
        try:
            result = handler(alert)
            if inspect.isawaitable(result):
                anyio.run(_await, result)
        except Exception:
            logger.exception("ratebudget: on_alert handler failed for %s", alert)
