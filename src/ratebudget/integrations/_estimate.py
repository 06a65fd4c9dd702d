"""What a request may use, read from its body before it is sent.

:func:`estimate` counts the input tokens (with the caller's tokenizer, or
``ceil(characters / 4)``) and reads the most output the request allows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .._exceptions import InvalidRequest
from ._classify import Endpoint, _endpoint
from ._parse import _check_body, _count, _either, _is_count

__all__ = (
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "Estimate",
    "estimate",
)

CHARS_PER_TOKEN: Final = 4
"""The heuristic without a tokenizer: one token per 4 characters, rounded up."""

MESSAGE_OVERHEAD: Final = 4
"""Tokens added per message (or input item) for the role and the separators."""

IMAGE_TOKENS: Final = 1_600
"""Flat tokens for each image, audio, file or document part of a request.

Roughly the most an image costs: Anthropic bills about 1,600 tokens for a
1.15-megapixel image, OpenAI 765 for a high-detail 1024×1024 one. Audio and
files can cost more; the committed usage replaces the estimate.
"""

DEFAULT_MAX_OUTPUT: Final = 4_096
"""Output tokens assumed when a request sets no maximum."""


_FLAT_PARTS: Final = frozenset(
    {
        "image",
        "image_url",
        "input_image",
        "input_audio",
        "audio",
        "file",
        "input_file",
        "document",
        "container_upload",
    }
)
"""Content parts counted as ``IMAGE_TOKENS`` each, whatever their size."""

_FLAT_KEYS: Final = frozenset({"inlineData", "inline_data", "fileData", "file_data"})
"""Gemini's media fields of a part: ``IMAGE_TOKENS`` each, whatever their size."""

_SKIPPED_KEYS: Final = frozenset(
    {
        "type",
        "role",
        "id",
        "tool_call_id",
        "tool_use_id",
        "call_id",
        "cache_control",
        "signature",
        "encrypted_content",
        "status",
        # Gemini's
        "mimeType",
        "mime_type",
        "fileUri",
        "file_uri",
        "thoughtSignature",
        "thought_signature",
    }
)
"""Keys whose string values are identifiers, not text the model reads."""


class _Counter:
    """Collects a request's texts, token-id arrays, flat parts and messages."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tokens = 0  # token ids given as such, and flat parts

    def walk(self, value: object) -> None:
        if isinstance(value, str):
            if value:
                self.texts.append(value)
        elif isinstance(value, Mapping):
            if value.get("type") in _FLAT_PARTS:
                self.tokens += IMAGE_TOKENS
                return
            for key, item in value.items():
                if key in _FLAT_KEYS:
                    self.tokens += IMAGE_TOKENS
                elif key not in _SKIPPED_KEYS:
                    self.walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                self.walk(item)

    def messages(self, value: object) -> None:
        """A list of messages / input items: their text plus the overhead."""
        if isinstance(value, list | tuple):
            self.tokens += MESSAGE_OVERHEAD * len(value)
            self.walk(value)
        else:
            self.walk(value)

    def definitions(self, value: object) -> None:
        """Tool definitions, schemas: counted as their JSON text."""
        if value is None:
            return
        try:
            self.texts.append(json.dumps(value, ensure_ascii=False, default=str))
        except (TypeError, ValueError):  # a circular structure: its strings
            self.walk(value)

    def prompt(self, value: object) -> None:
        """A completions prompt / embeddings input: text, or token ids."""
        if isinstance(value, str):
            self.walk(value)
        elif isinstance(value, list | tuple):
            if value and all(_is_count(v) for v in value):
                self.tokens += len(value)  # one array of token ids
            else:
                for item in value:
                    self.prompt(item)

    def total(self, count_tokens: Callable[[str], int] | None) -> int:
        if count_tokens is None:
            chars = sum(len(text) for text in self.texts)
            return self.tokens + math.ceil(chars / CHARS_PER_TOKEN)
        total = self.tokens
        for text in self.texts:
            n = count_tokens(text)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InvalidRequest(
                    f"count_tokens returned {n!r}: expected a non-negative int"
                )
            total += n
        return total


@dataclass(frozen=True)
class Estimate:
    """What a request may use, read from its body before it is sent."""

    model: str | None
    """The ``model`` the request's body names, if any (Gemini names it in the
    path: see ``gemini_model``)."""
    input_tokens: int
    """Input tokens: counted, or estimated from characters (see :func:`estimate`)."""
    max_output_tokens: int
    """The most output tokens *one* choice may produce (0 for embeddings)."""
    n: int
    """How many choices the provider generates, and bills, for the request."""
    stream: bool
    """Whether the response will be streamed (``"stream": true``, or Gemini's
    ``streamGenerateContent``)."""

    @property
    def max_total_tokens(self) -> int:
        """The most tokens the call may use: ``input + max_output × n``."""
        return self.input_tokens + self.max_output_tokens * self.n


def _positive(value: object) -> int | None:
    """A request's positive integer setting, else ``None`` (unset or invalid)."""
    count = _count(value) if _is_count(value) else 0
    return count if count > 0 else None


def estimate(
    endpoint: Endpoint | str,
    body: Mapping[str, Any],
    count_tokens: Callable[[str], int] | None = None,
    *,
    default_max_output: int = DEFAULT_MAX_OUTPUT,
) -> Estimate:
    """Estimate a request from its JSON body, before sending it.

    **Input tokens** are counted over every text the model reads: message
    contents (strings and ``text`` parts), system prompts and instructions,
    tool calls and results, plus the JSON of the tool definitions and of a
    structured-output schema. Each image, audio, file or document part counts
    a flat :data:`IMAGE_TOKENS`; each message or input item adds
    :data:`MESSAGE_OVERHEAD`. Prompts given as token ids count one token per
    id. The texts are counted by ``count_tokens`` (say, a tiktoken encoder's
    ``lambda s: len(enc.encode(s))``) when given, else estimated as
    ``ceil(characters / 4)``. Either way it is an **estimate**, used to
    reserve before the call; the usage the provider reports replaces it.

    **Output tokens** are the request's limit: ``max_completion_tokens`` or
    ``max_tokens`` (chat; the larger if both), ``max_output_tokens``
    (responses), ``max_tokens`` (completions, Anthropic),
    ``generationConfig.maxOutputTokens`` (Gemini, whose thinking counts
    against it); ``default_max_output`` when the request sets none.
    Embeddings produce none. ``n`` is the number of choices billed: OpenAI's
    ``n`` (and ``best_of`` for completions, which bills every candidate),
    Gemini's ``generationConfig.candidateCount``, else 1.

    Gemini bodies are read as the REST API spells them (``systemInstruction``,
    ``generationConfig``) or in snake_case (``system_instruction``); each
    ``inlineData`` or ``fileData`` part counts :data:`IMAGE_TOKENS`. A
    ``cachedContent`` the request refers to is not counted: its tokens are
    only known from the response. Gemini embeddings count the ``content``
    (and ``title``) of each request of the batch, and produce no output.
    """
    endpoint = _endpoint(endpoint)
    body = _check_body(body)
    if isinstance(default_max_output, bool) or not isinstance(default_max_output, int):
        raise InvalidRequest(f"default_max_output={default_max_output!r}: not an int")
    if default_max_output < 0:
        raise InvalidRequest(f"default_max_output={default_max_output!r} < 0")

    counter = _Counter()
    limits: Iterable[str]
    settings: Mapping[str, Any] = body  # where the output limit is set
    n = 1
    if endpoint in (Endpoint.GEMINI_GENERATE, Endpoint.GEMINI_STREAM):
        counter.walk(_either(body, "systemInstruction", "system_instruction"))
        counter.messages(body.get("contents"))
        counter.definitions(body.get("tools"))
        counter.definitions(_either(body, "toolConfig", "tool_config"))
        config = _either(body, "generationConfig", "generation_config")
        settings = config if isinstance(config, Mapping) else {}
        for camel, snake in (
            ("responseSchema", "response_schema"),
            ("responseJsonSchema", "response_json_schema"),
        ):
            counter.definitions(_either(settings, camel, snake))
        limits = ("maxOutputTokens", "max_output_tokens")
        n = _positive(_either(settings, "candidateCount", "candidate_count")) or 1
    elif endpoint is Endpoint.OPENAI_CHAT:
        counter.messages(body.get("messages"))
        for key in ("tools", "functions", "response_format"):
            counter.definitions(body.get(key))
        limits = ("max_completion_tokens", "max_tokens")
        n = _positive(body.get("n")) or 1
    elif endpoint is Endpoint.GEMINI_EMBED:
        # :embedContent has one ``content``; :batchEmbedContents ``requests``
        asks = body.get("requests")
        for ask in asks if isinstance(asks, list) else [body]:
            if isinstance(ask, Mapping):
                counter.walk(ask.get("content"))
                counter.walk(ask.get("title"))
        limits = ()
    elif endpoint is Endpoint.OPENAI_RESPONSES:
        counter.walk(body.get("instructions"))
        counter.messages(body.get("input"))
        for key in ("tools", "text"):
            counter.definitions(body.get(key))
        limits = ("max_output_tokens",)
    elif endpoint is Endpoint.OPENAI_COMPLETIONS:
        counter.prompt(body.get("prompt"))
        counter.walk(body.get("suffix"))
        limits = ("max_tokens",)
        n = max(_positive(body.get("n")) or 1, _positive(body.get("best_of")) or 1)
    elif endpoint is Endpoint.OPENAI_EMBEDDINGS:
        counter.prompt(body.get("input"))
        limits = ()
    else:  # Anthropic messages
        counter.walk(body.get("system"))
        counter.messages(body.get("messages"))
        for key in ("tools", "output_format"):
            counter.definitions(body.get(key))
        limits = ("max_tokens",)

    if endpoint in (Endpoint.OPENAI_EMBEDDINGS, Endpoint.GEMINI_EMBED):
        max_output = 0
    else:
        given = [
            v for v in (_positive(settings.get(k)) for k in limits) if v is not None
        ]
        max_output = max(given) if given else default_max_output
    model = body.get("model")
    return Estimate(
        model=model if isinstance(model, str) else None,
        input_tokens=counter.total(count_tokens),
        max_output_tokens=max_output,
        n=n,
        stream=body.get("stream") is True or endpoint is Endpoint.GEMINI_STREAM,
    )
