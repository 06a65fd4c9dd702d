"""What the HTTP-facing parts share (the metering transport, the webhook)."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

__all__ = ("retry_after",)


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (a number of seconds or
    an HTTP date), or ``None`` when it is absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
