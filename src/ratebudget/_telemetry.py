"""Hooks for observers (``ratebudget.otel``): what happened, told to whoever
listens, at no cost when nobody does.

The core calls ``waited`` and ``refused``, the integrations ``called`` (a
metered LLM call ended), each only while ``OBSERVERS`` is not empty.
``LIMITERS`` holds every limiter and scope weakly, for gauges read at
collection time.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from ._limiter import Limiter

__all__ = (
    "LIMITERS",
    "OBSERVERS",
    "Call",
    "Observer",
    "called",
    "provider_name",
    "refused",
    "scope_of",
    "waited",
)


@dataclass(frozen=True, slots=True)
class Call:
    """A metered LLM call that ended (the transport's, or ``meter()``'s)."""

    operation: str  # gen_ai.operation.name: chat, embeddings, ...
    provider: str  # gen_ai.provider.name: openai, anthropic, gcp.gemini, ...
    request_model: str | None
    response_model: str | None
    input_tokens: int | None  # None: not reported (an error)
    output_tokens: int | None
    duration: float  # seconds, from sending the request to the end of its body
    error_type: str | None  # an HTTP status ("429") or an exception's name
    server_address: str | None
    server_port: int | None
    scope: str  # the charged scope, a per-key one as "parent/*"
    usd: Decimal | None  # what it cost (None: not priced)


class Observer(Protocol):
    def called(self, call: Call) -> None: ...

    def waited(self, scope: str, seconds: float) -> None: ...

    def refused(self, scope: str, reason: str) -> None: ...


OBSERVERS: Final[list[Observer]] = []
LIMITERS: Final[weakref.WeakSet[Limiter]] = weakref.WeakSet()


def scope_of(limiter: Limiter, name: str | None = None) -> str:
    """The scope attribute for ``name`` (default: ``limiter``'s own) on
    ``limiter``'s path: a per-key scope is counted as its parent's ``/*``,
    so that metrics do not grow a series per key."""
    node: Limiter | None = limiter
    if name is not None:
        while node is not None and node._name != name:
            node = node._parent
    if node is None:
        return name or ""
    if node._keyed and node._parent is not None:
        return f"{node._parent._name or ''}/*"
    return node._name or ""


def provider_name(family: str, host: str | None) -> str:
    """OpenTelemetry's ``gen_ai.provider.name`` of a call to ``host`` of an
    API ``family`` (``openai``, ``anthropic``, ``gemini``)."""
    host = (host or "").lower()
    if host.endswith(".openai.azure.com"):
        return "azure.ai.openai"
    if host.endswith("aiplatform.googleapis.com"):
        return "gcp.vertex_ai"
    if family == "gemini":
        return "gcp.gemini"
    return family


def called(call: Call) -> None:
    """Tell the observers a metered call ended (never raises)."""
    for observer in OBSERVERS:
        try:
            observer.called(call)
        except Exception:  # pragma: no cover - an exporter's own failure
            _failed(observer)


def waited(limiter: Limiter, seconds: float) -> None:
    scope = scope_of(limiter)
    for observer in OBSERVERS:
        try:
            observer.waited(scope, seconds)
        except Exception:  # pragma: no cover
            _failed(observer)


def refused(limiter: Limiter, name: str | None, reason: str) -> None:
    scope = scope_of(limiter, name)
    for observer in OBSERVERS:
        try:
            observer.refused(scope, reason)
        except Exception:  # pragma: no cover
            _failed(observer)


def _failed(observer: Observer) -> None:
    from ._alerts import logger

    logger.exception("ratebudget: telemetry observer %r failed", observer)
