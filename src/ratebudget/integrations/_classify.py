"""Which LLM API an HTTP request calls: :class:`Endpoint` and :func:`classify`."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from .._exceptions import InvalidRequest

__all__ = ("Endpoint", "classify")


class Endpoint(str, Enum):
    """An LLM API whose requests ratebudget can estimate and meter."""

    OPENAI_CHAT = "openai.chat"
    """``POST /v1/chat/completions`` (OpenAI and compatible servers)."""
    OPENAI_RESPONSES = "openai.responses"
    """``POST /v1/responses``."""
    OPENAI_COMPLETIONS = "openai.completions"
    """``POST /v1/completions`` (legacy text completions)."""
    OPENAI_EMBEDDINGS = "openai.embeddings"
    """``POST /v1/embeddings``."""
    ANTHROPIC_MESSAGES = "anthropic.messages"
    """``POST /v1/messages``."""

    def __str__(self) -> str:
        return self.value


_SUFFIXES: Final[Mapping[str, Endpoint]] = {
    "/chat/completions": Endpoint.OPENAI_CHAT,
    "/responses": Endpoint.OPENAI_RESPONSES,
    "/completions": Endpoint.OPENAI_COMPLETIONS,
    "/embeddings": Endpoint.OPENAI_EMBEDDINGS,
    "/messages": Endpoint.ANTHROPIC_MESSAGES,
}


def _endpoint(endpoint: Endpoint | str) -> Endpoint:
    try:
        return Endpoint(endpoint)
    except ValueError:
        known = ", ".join(repr(e.value) for e in Endpoint)
        raise InvalidRequest(
            f"unknown endpoint {endpoint!r}: expected one of {known}"
        ) from None


def _clean_path(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0]
    while "//" in path:
        path = path.replace("//", "/")
    return path.rstrip("/")


def classify(method: str, path: str, base_path: str = "") -> Endpoint | None:
    """Which API a request calls, or ``None`` to let it pass unmetered.

    Only ``POST`` requests are metered. ``path`` is the URL's path (a query
    string is ignored). ``base_path`` is the path an OpenAI-compatible server
    puts its API under, e.g. ``"/openai/v1"`` or ``"/api"``; after it, an
    optional ``/v1`` and then one of ``/chat/completions``, ``/responses``,
    ``/completions``, ``/embeddings`` or ``/messages``. Trailing and doubled
    slashes are tolerated. With the default ``""``, ``/v1/chat/completions``
    (OpenAI) and ``/v1/messages`` (Anthropic) match.

    >>> classify("POST", "/v1/chat/completions")
    <Endpoint.OPENAI_CHAT: 'openai.chat'>
    >>> classify("POST", "/openai/v1/responses/", base_path="/openai/v1")
    <Endpoint.OPENAI_RESPONSES: 'openai.responses'>
    >>> classify("GET", "/v1/models") is None
    True
    """
    if method.upper() != "POST":
        return None
    path = _clean_path(path)
    base = _clean_path(base_path)
    if base and base[0] != "/":
        base = "/" + base
    if path != base and not path.startswith(base + "/"):
        return None
    rest = path[len(base) :]
    if rest not in _SUFFIXES and rest.startswith("/v1/"):
        rest = rest[3:]
    return _SUFFIXES.get(rest)
