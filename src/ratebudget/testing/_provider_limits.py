"""The fake provider's own rate limits: a sliding 60 s window of what it accepted.

A request costs 1 request and its prompt + output tokens; rejected and failed
requests are never in the window, so they use no quota.
"""

from __future__ import annotations

from collections import deque

from ._provider_api import Dialect

__all__ = ("SlidingWindow",)

_WINDOW = 60.0


class SlidingWindow:
    """The requests accepted in the last 60 s (of the provider's clock)."""

    __slots__ = ("_accepted",)

    def __init__(self) -> None:
        self._accepted: deque[tuple[float, int]] = deque()  # (accepted at, tokens)

    def _prune(self, now: float) -> None:
        while self._accepted and self._accepted[0][0] <= now - _WINDOW:
            self._accepted.popleft()

    def admit(
        self, now: float, cost: int, rpm: int | None, tpm: int | None
    ) -> float | None:
        """Take one request and ``cost`` tokens, or say how long to wait."""
        self._prune(now)
        window = self._accepted
        waits: list[float] = []
        if rpm is not None and len(window) + 1 > rpm:
            waits.append(window[-rpm][0] + _WINDOW - now)
        if tpm is not None:
            used = sum(tokens for _, tokens in window)
            if cost > tpm:
                waits.append(_WINDOW)
            elif used + cost > tpm:
                for at, tokens in window:
                    used -= tokens
                    if used + cost <= tpm:
                        waits.append(at + _WINDOW - now)
                        break
        if waits:
            return max(waits)
        window.append((now, cost))
        return None

    def headers(
        self, dialect: Dialect, now: float, rpm: int | None, tpm: int | None
    ) -> list[tuple[str, str]]:
        """The rate-limit headers of the limits that are set, as ``dialect`` writes them."""
        self._prune(now)
        window = self._accepted
        reset = window[-1][0] + _WINDOW - now if window else 0.0
        used_tokens = sum(tokens for _, tokens in window)
        headers: list[tuple[str, str]] = []
        for kind, limit, used in (
            ("requests", rpm, len(window)),
            ("tokens", tpm, used_tokens),
        ):
            if limit is not None:
                headers += dialect.limit_headers(
                    kind, limit, max(0, limit - used), reset
                )
        return headers
