"""The fake provider's request log: one ``FakeRequest`` per request, and their sum."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ("FakeRequest", "FakeUsage")


@dataclass(frozen=True)
class FakeRequest:
    """One request the provider received (successful or not)."""

    path: str
    model: str | None
    stream: bool
    prompt_tokens: int
    """The request's prompt tokens (also when it was rejected)."""
    output_tokens: int
    """Output tokens it was answered with (reasoning included; 0 if it failed)."""
    status: int
    time: float
    """``clock()`` when it arrived."""
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    body: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The parsed JSON body (empty if it was not a JSON object)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class FakeUsage:
    """What ``FakeProvider.usage_total()`` sums over the successful requests."""

    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens
