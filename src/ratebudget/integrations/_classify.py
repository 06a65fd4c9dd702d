"""Which LLM API an HTTP request calls: :class:`Endpoint` and :func:`classify`."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from .._exceptions import InvalidRequest

__all__ = ("Endpoint", "azure_deployment", "classify", "gemini_model", "is_free")


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
    GEMINI_GENERATE = "gemini.generate_content"
    """``POST .../models/{model}:generateContent`` (the Gemini API, Vertex AI)."""
    GEMINI_STREAM = "gemini.stream_generate_content"
    """``POST .../models/{model}:streamGenerateContent`` (SSE with ``?alt=sse``)."""
    GEMINI_EMBED = "gemini.embed_content"
    """``POST .../models/{model}:embedContent`` or ``:batchEmbedContents``."""

    def __str__(self) -> str:
        return self.value


_SUFFIXES: Final[Mapping[str, Endpoint]] = {
    "/chat/completions": Endpoint.OPENAI_CHAT,
    "/responses": Endpoint.OPENAI_RESPONSES,
    "/completions": Endpoint.OPENAI_COMPLETIONS,
    "/embeddings": Endpoint.OPENAI_EMBEDDINGS,
    "/messages": Endpoint.ANTHROPIC_MESSAGES,
}

# Gemini's methods end the last segment: .../models/{model}:generateContent
_METHODS: Final[Mapping[str, Endpoint]] = {
    ":generateContent": Endpoint.GEMINI_GENERATE,
    ":streamGenerateContent": Endpoint.GEMINI_STREAM,
    ":embedContent": Endpoint.GEMINI_EMBED,
    ":batchEmbedContents": Endpoint.GEMINI_EMBED,
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


def _under(path: str, base_path: str) -> str | None:
    """``path`` after ``base_path`` (cleaned), or ``None`` if it is not under it."""
    path = _clean_path(path)
    base = _clean_path(base_path)
    if base and base[0] != "/":
        base = "/" + base
    if path != base and not path.startswith(base + "/"):
        return None
    return path[len(base) :]


def classify(method: str, path: str, base_path: str = "") -> Endpoint | None:
    """Which API a request calls, by the shape of its path, or ``None``.

    Only ``POST`` requests are metered. A path is recognised by how it ends,
    wherever the server puts its API: ``.../chat/completions``,
    ``.../responses``, ``.../completions``, ``.../embeddings`` or
    ``.../messages`` (OpenAI's ``/v1/...``, Azure OpenAI's
    ``/openai/deployments/{name}/...``, OpenRouter's ``/api/v1/...``,
    Gemini's ``/v1beta/openai/...``, vLLM or Ollama under any prefix), and
    Gemini's own ``.../{model}:generateContent``,
    ``.../{model}:streamGenerateContent``, ``:embedContent`` and
    ``:batchEmbedContents`` (the Gemini API's
    ``/v1beta/models/...``, Vertex AI's ``.../publishers/google/models/...``).
    A query string, trailing and doubled slashes are ignored. ``base_path``,
    when given, is where the API lives: a path outside it is ``None``.

    >>> classify("POST", "/v1/chat/completions")
    <Endpoint.OPENAI_CHAT: 'openai.chat'>
    >>> classify("POST", "/openai/deployments/gpt4o-prod/chat/completions")
    <Endpoint.OPENAI_CHAT: 'openai.chat'>
    >>> classify("POST", "/v1beta/models/gemini-2.5-flash:streamGenerateContent")
    <Endpoint.GEMINI_STREAM: 'gemini.stream_generate_content'>
    >>> classify("GET", "/v1/models") is None
    True
    """
    if method.upper() != "POST":
        return None
    rest = _under(path, base_path)
    if rest is None:
        return None
    for method_suffix, endpoint in _METHODS.items():
        if rest.endswith(method_suffix):
            return endpoint
    for suffix, endpoint in _SUFFIXES.items():
        if rest.endswith(suffix) and not (
            # an Assistants thread's message is not a model call
            endpoint is Endpoint.ANTHROPIC_MESSAGES and "/threads/" in rest
        ):
            return endpoint
    return None


# POSTs of the LLM APIs that nobody is billed for: token counting, moderation,
# cancelling, uploading files (by their path's last segments; ``*``: an id)
_FREE: Final = (
    ("messages", "count_tokens"),
    ("responses", "input_tokens"),
    ("responses", "*", "cancel"),
    ("batches", "*", "cancel"),
    ("moderations",),
    ("files",),
    ("uploads",),
    ("uploads", "*", "parts"),
    ("uploads", "*", "complete"),
    ("uploads", "*", "cancel"),
)


def is_free(method: str, path: str) -> bool:
    """Whether a request is one the provider bills nothing for (any method
    but ``POST``; counting tokens, moderation, cancelling, file uploads)."""
    if method.upper() != "POST":
        return True
    segments = _clean_path(path).split("/")
    for shape in _FREE:
        tail = segments[-len(shape) :]
        if len(tail) == len(shape) and all(
            want in ("*", got) for want, got in zip(shape, tail, strict=True)
        ):
            return True
    return segments[-1].endswith(":countTokens")  # Gemini


def azure_deployment(path: str) -> str | None:
    """The deployment an Azure OpenAI path names
    (``/openai/deployments/{name}/chat/completions``), or ``None``."""
    segments = _clean_path(path).split("/")
    for i, segment in enumerate(segments[:-2]):
        if segment == "deployments" and i > 0 and segments[i - 1] == "openai":
            return segments[i + 1] or None
    return None


def gemini_model(path: str) -> str | None:
    """The model a Gemini path names (``.../models/{model}:generateContent``
    gives ``{model}``), or ``None`` if it names none.

    Vertex AI's tuned endpoints (``.../endpoints/{id}:generateContent``) give
    the endpoint's id: map it to a model with ``models=``.
    """
    last = _clean_path(path).rsplit("/", 1)[-1]
    model, colon, _ = last.partition(":")
    return (model or None) if colon else None
