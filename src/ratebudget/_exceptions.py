"""Exceptions raised by ratebudget.

Exception tree::

    RateBudgetError
    ├── BudgetExceeded          axis, limit, used, reserved, requested, resets_at,
    │                           reason: "cap" or "runaway"
    ├── AcquireTimeout          also TimeoutError; retry_after
    ├── InvalidRequest          also ValueError
    │   └── UnmeteredCall       method, path: a call the transport cannot meter
    └── StoreUnavailable        the driver's error in __cause__
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

__all__ = (
    "AcquireTimeout",
    "BudgetExceeded",
    "InvalidRequest",
    "RateBudgetError",
    "StoreUnavailable",
    "UnmeteredCall",
)

Number = int | Decimal


class RateBudgetError(Exception):
    """Base class of every error ratebudget raises."""


class BudgetExceeded(RateBudgetError):
    """Granting the request would push a hard cap past its limit
    (``reason="cap"``), or its scope's spend runs away (``reason="runaway"``,
    see ``Runaway``).

    Nothing was taken. ``resets_at`` is when the cap's period ends (``None``
    for a lifetime cap): the earliest moment the request could succeed; for
    a runaway, when its window calms if nothing more is spent (``limit`` is
    then the spend a window may reach, ``used`` what the window spent).
    """

    def __init__(
        self,
        message: str,
        *,
        axis: str,
        limit: Number,
        used: Number,
        requested: Number,
        reserved: Number = 0,
        resets_at: datetime | None = None,
        scope: str | None = None,
        labels: Mapping[str, str] | None = None,
        reason: str = "cap",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        """Why: ``"cap"``, a hard cap; ``"runaway"``, a runaway's block."""
        self.axis = axis
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.requested = requested
        self.resets_at = resets_at
        self.scope = scope
        """The name of the limiter whose cap refused (``None``: an unnamed one)."""
        self.labels: Mapping[str, str] = labels if labels is not None else {}
        """The labels of the refused call."""


class AcquireTimeout(RateBudgetError, TimeoutError):
    """The wait for a grant would exceed, or has exceeded, ``timeout=``.

    ``retry_after`` is the wait the limiter foresaw, in seconds, when it
    refused at once; ``None`` when the wait could not be foreseen (a cap
    blocked by other callers' reservations). Nothing was taken.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(RateBudgetError, ValueError):
    """The arguments can never be served: raised before any state changes."""


class UnmeteredCall(InvalidRequest):
    """``BudgetTransport`` cannot meter this request (a ``POST`` it does not
    recognise, or a body it cannot read) and ``unmetered="raise"`` (the
    default) says not to send it. Nothing was sent.
    """

    def __init__(self, message: str, *, method: str, path: str) -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class StoreUnavailable(RateBudgetError):
    """The store holding the limiter's state could not be reached.

    The driver's own exception is chained as ``__cause__``.
    """
