"""Read LLM requests and responses: what a call will use, and what it used.

No optional dependency: this module only parses the providers' JSON and SSE.

* :func:`classify` tells which API an HTTP request calls (or ``None``).
* :func:`estimate` reads a request body *before* it is sent: its input tokens
  (counted, or estimated from characters) and the most output it may produce.
* :func:`usage_from_json` reads the usage a JSON response reports.
* :class:`StreamUsage` reads it from a streamed (SSE) response, fed the raw
  bytes as they arrive.

What :class:`Usage` counts, and from which provider fields
-----------------------------------------------------------

``input_tokens`` counts **all** input tokens, cached ones included;
``output_tokens`` counts **all** output tokens, reasoning ones included. The
other fields are *parts* of those totals::

    cached_input_tokens + cache_write_tokens <= input_tokens
    reasoning_tokens                         <= output_tokens

====================  ==================================  ================================  ==================================================
Usage field           OpenAI chat / completions           OpenAI responses                  Anthropic messages
====================  ==================================  ================================  ==================================================
input_tokens          prompt_tokens                       input_tokens                      input_tokens + cache_read_input_tokens
                                                                                            + cache_creation_input_tokens
output_tokens         completion_tokens                   output_tokens                     output_tokens
cached_input_tokens   prompt_tokens_details.cached_tokens input_tokens_details.             cache_read_input_tokens
                                                          cached_tokens
cache_write_tokens    prompt_tokens_details.              input_tokens_details.             cache_creation_input_tokens
                      cache_write_tokens (1)              cache_write_tokens (1)
reasoning_tokens      completion_tokens_details.          output_tokens_details.            output_tokens_details.thinking_tokens (2)
                      reasoning_tokens                    reasoning_tokens
====================  ==================================  ================================  ==================================================

OpenAI embeddings report ``prompt_tokens`` only: it is ``input_tokens``, and
``output_tokens`` is 0.

Mind the difference: OpenAI's ``prompt_tokens`` *includes* the cached tokens,
Anthropic's ``input_tokens`` *excludes* both cache reads and cache writes, so
for Anthropic the three are added up. (1) Only recent OpenAI responses (and
some compatible servers) report cache writes; otherwise 0. (2) Only recent
Anthropic responses report thinking tokens; otherwise 0.

Provider JSON is read defensively: a missing, ``null``, negative or
non-integer count reads as 0, a part larger than its total is cut down to the
total, and an answer with no usage at all gives ``None``. Nothing here raises
on what a provider sends; only a wrong argument from the caller's own code (a
body that is not a mapping, an unknown endpoint) raises ``InvalidRequest``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from .._exceptions import InvalidRequest

__all__ = (
    "CHARS_PER_TOKEN",
    "DEFAULT_MAX_OUTPUT",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "Endpoint",
    "Estimate",
    "StreamUsage",
    "Usage",
    "classify",
    "estimate",
    "usage_from_json",
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


# --- reading provider JSON defensively ------------------------------------


def _count(value: object) -> int:
    """A token count from provider JSON: 0 unless a non-negative integer."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return 0


def _is_count(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _get(body: Mapping[str, Any], *keys: str) -> object:
    value: object = body
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _check_body(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest(
            f"expected the decoded JSON object (a mapping), got {type(body).__name__}"
        )
    return body


@dataclass(frozen=True)
class Usage:
    """Tokens a call used, as the provider reported them.

    ``input_tokens`` includes the cached input tokens and the cache writes;
    ``output_tokens`` includes the reasoning tokens (see the module's table
    for each provider's fields). Raises ``InvalidRequest`` for a negative or
    non-integer count, or a part larger than its total.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    """Input tokens read from the provider's prompt cache (billed cheaper)."""
    cache_write_tokens: int = 0
    """Input tokens written to the prompt cache (Anthropic bills them dearer)."""
    reasoning_tokens: int = 0
    """Output tokens spent reasoning / thinking (billed as output)."""

    def __post_init__(self) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(
                    f"Usage.{name}={value!r}: expected a non-negative int"
                )
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise InvalidRequest(
                f"Usage: cached_input_tokens ({self.cached_input_tokens}) + "
                f"cache_write_tokens ({self.cache_write_tokens}) exceed "
                f"input_tokens ({self.input_tokens}), which include them"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise InvalidRequest(
                f"Usage: reasoning_tokens ({self.reasoning_tokens}) exceed "
                f"output_tokens ({self.output_tokens}), which include them"
            )

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``."""
        return self.input_tokens + self.output_tokens


def _usage(
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> Usage:
    """A consistent ``Usage``: parts are cut down to their totals."""
    cached = min(cached, input_tokens)
    cache_write = min(cache_write, input_tokens - cached)
    return Usage(
        input_tokens,
        output_tokens,
        cached,
        cache_write,
        min(reasoning, output_tokens),
    )


def _openai_chat_usage(usage: object) -> Usage | None:
    """``usage`` of chat completions and legacy completions (and embeddings)."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (_is_count(prompt) or _is_count(completion)):
        return None
    return _usage(
        _count(prompt),
        _count(completion),
        _count(_get(usage, "prompt_tokens_details", "cached_tokens")),
        _count(_get(usage, "prompt_tokens_details", "cache_write_tokens")),
        _count(_get(usage, "completion_tokens_details", "reasoning_tokens")),
    )


def _openai_responses_usage(usage: object) -> Usage | None:
    if not isinstance(usage, Mapping):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not (_is_count(inp) or _is_count(out)):
        return None
    return _usage(
        _count(inp),
        _count(out),
        _count(_get(usage, "input_tokens_details", "cached_tokens")),
        _count(_get(usage, "input_tokens_details", "cache_write_tokens")),
        _count(_get(usage, "output_tokens_details", "reasoning_tokens")),
    )


def _anthropic_usage(usage: object) -> Usage | None:
    if not isinstance(usage, Mapping):
        return None
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if not (_is_count(inp) or _is_count(out)):
        return None
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    return _usage(
        _count(inp) + read + write,
        _count(out),
        read,
        write,
        _count(_get(usage, "output_tokens_details", "thinking_tokens")),
    )


def usage_from_json(endpoint: Endpoint | str, body: Mapping[str, Any]) -> Usage | None:
    """The usage a (non-streamed) JSON response reports, or ``None``.

    ``body`` is the decoded JSON object of a successful response. ``None``
    when it reports no usage (an error body, a server that omits it).
    """
    endpoint = _endpoint(endpoint)
    body = _check_body(body)
    usage = body.get("usage")
    if endpoint is Endpoint.OPENAI_RESPONSES:
        return _openai_responses_usage(usage)
    if endpoint is Endpoint.ANTHROPIC_MESSAGES:
        return _anthropic_usage(usage)
    if endpoint is Endpoint.OPENAI_EMBEDDINGS:
        if not isinstance(usage, Mapping) or not _is_count(usage.get("prompt_tokens")):
            return None
        return _usage(_count(usage.get("prompt_tokens")), 0)
    return _openai_chat_usage(usage)


# --- estimating a request ------------------------------------------------

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
                if key not in _SKIPPED_KEYS:
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
    """The ``model`` the request names, if any."""
    input_tokens: int
    """Input tokens: counted, or estimated from characters (see :func:`estimate`)."""
    max_output_tokens: int
    """The most output tokens *one* choice may produce (0 for embeddings)."""
    n: int
    """How many choices the provider generates, and bills, for the request."""
    stream: bool
    """Whether the response will be streamed (``"stream": true``)."""

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
    (responses), ``max_tokens`` (completions, Anthropic); ``default_max_output``
    when the request sets none. Embeddings produce none. ``n`` is the number
    of choices billed: OpenAI's ``n`` (and ``best_of`` for completions, which
    bills every candidate), else 1.
    """
    endpoint = _endpoint(endpoint)
    body = _check_body(body)
    if isinstance(default_max_output, bool) or not isinstance(default_max_output, int):
        raise InvalidRequest(f"default_max_output={default_max_output!r}: not an int")
    if default_max_output < 0:
        raise InvalidRequest(f"default_max_output={default_max_output!r} < 0")

    counter = _Counter()
    limits: Iterable[str]
    n = 1
    if endpoint is Endpoint.OPENAI_CHAT:
        counter.messages(body.get("messages"))
        for key in ("tools", "functions", "response_format"):
            counter.definitions(body.get(key))
        limits = ("max_completion_tokens", "max_tokens")
        n = _positive(body.get("n")) or 1
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

    if endpoint is Endpoint.OPENAI_EMBEDDINGS:
        max_output = 0
    else:
        given = [v for v in (_positive(body.get(k)) for k in limits) if v is not None]
        max_output = max(given) if given else default_max_output
    model = body.get("model")
    return Estimate(
        model=model if isinstance(model, str) else None,
        input_tokens=counter.total(count_tokens),
        max_output_tokens=max_output,
        n=n,
        stream=body.get("stream") is True,
    )


# --- streamed responses ----------------------------------------------------


class StreamUsage:
    """Usage read from a streamed (server-sent events) response.

    Feed it the raw bytes of the body as they arrive, split anywhere (even
    inside a line or a UTF-8 character)::

        meter = StreamUsage(Endpoint.OPENAI_CHAT)
        async for chunk in response.aiter_raw():
            meter.feed(chunk)
        usage = meter.usage  # None if the stream reported none

    Where each provider reports usage in a stream:

    * **OpenAI chat and completions** send it in one last chunk (with empty
      ``choices``) before ``data: [DONE]``, and **only when the request sets**
      ``"stream_options": {"include_usage": true}``: a metering transport
      should add it. Servers that send usage in several chunks: the last
      one wins.
    * **OpenAI responses** send it in the final ``response.completed`` event
      (or ``response.incomplete`` / ``response.failed``).
    * **Anthropic** sends the input (and cache) tokens in ``message_start``
      and the *cumulative* output tokens in each ``message_delta``.

    ``usage`` is what the provider reported so far; if a stream is cut short
    before that, ``text_chars`` (the characters of output seen: text,
    reasoning, refusals, tool-call arguments) lets the caller estimate the
    output, e.g. ``ceil(text_chars / 4)``. Malformed events are ignored.
    """

    def __init__(self, endpoint: Endpoint | str) -> None:
        self.endpoint = _endpoint(endpoint)
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no line ending
        self._skip_lf = False
        self._first_line = True
        self._event = ""
        self._data: list[str] = []
        self._usage: Usage | None = None
        self._anthropic: dict[str, object] = {}
        self._model: str | None = None
        self._text_chars = 0
        self._finished = False

    @property
    def usage(self) -> Usage | None:
        """The usage the provider reported so far, or ``None``."""
        return self._usage

    @property
    def text_chars(self) -> int:
        """Characters of output (text, reasoning, tool arguments) seen so far."""
        return self._text_chars

    @property
    def model(self) -> str | None:
        """The model the stream says answered, once it said so."""
        return self._model

    @property
    def finished(self) -> bool:
        """Whether the stream's final event arrived.

        ``data: [DONE]`` (OpenAI chat, completions), ``response.completed``,
        ``response.incomplete`` or ``response.failed`` (responses),
        ``message_stop`` (Anthropic).
        """
        return self._finished

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the stream."""
        if not chunk:
            return
        if self._skip_lf:  # the previous chunk ended with \r: maybe \r\n
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buffer = self._buffer
        buffer += chunk
        start = 0
        i = self._scanned
        end = len(buffer)
        while i < end:
            byte = buffer[i]
            if byte == 0x0A or byte == 0x0D:  # \n or \r
                self._line(bytes(buffer[start:i]))
                i += 1
                if byte == 0x0D:
                    if i == end:
                        self._skip_lf = True
                    elif buffer[i] == 0x0A:
                        i += 1
                start = i
            else:
                i += 1
        del buffer[:start]
        self._scanned = len(buffer)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._dispatch()
            return
        if line[0] == ":":  # a comment
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value

    def _dispatch(self) -> None:
        event, data = self._event, "\n".join(self._data)
        self._event, self._data = "", []
        if not data:
            return
        if data.strip() == "[DONE]":
            self._finished = True
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if isinstance(payload, Mapping):
            self._payload(event, payload)

    def _payload(self, event: str, payload: Mapping[str, Any]) -> None:
        endpoint = self.endpoint
        kind = payload.get("type")
        kind = kind if isinstance(kind, str) else event
        if endpoint is Endpoint.ANTHROPIC_MESSAGES:
            self._anthropic_event(kind, payload)
        elif endpoint is Endpoint.OPENAI_RESPONSES:
            self._responses_event(kind, payload)
        else:
            self._chat_chunk(payload)

    def _set_model(self, model: object) -> None:
        if isinstance(model, str) and model:
            self._model = model

    def _add_text(self, *values: object) -> None:
        for value in values:
            if isinstance(value, str):
                self._text_chars += len(value)

    def _chat_chunk(self, payload: Mapping[str, Any]) -> None:
        self._set_model(payload.get("model"))
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, Mapping):
                    continue
                self._add_text(choice.get("text"))  # legacy completions
                delta = choice.get("delta")
                if not isinstance(delta, Mapping):
                    continue
                self._add_text(
                    delta.get("content"),
                    delta.get("refusal"),
                    delta.get("reasoning_content"),  # compatible servers
                    delta.get("reasoning"),
                )
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        self._add_text(_get(call, "function", "arguments"))
        usage = _openai_chat_usage(payload.get("usage"))
        if usage is not None:
            self._usage = usage

    def _responses_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        response = payload.get("response")
        if isinstance(response, Mapping):
            self._set_model(response.get("model"))
            usage = _openai_responses_usage(response.get("usage"))
            if usage is not None:
                self._usage = usage
        if kind.endswith(".delta"):
            self._add_text(payload.get("delta"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._finished = True

    def _anthropic_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                self._set_model(message.get("model"))
                self._merge(message.get("usage"))
        elif kind == "message_delta":
            self._merge(payload.get("usage"))
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping):
                self._add_text(
                    delta.get("text"), delta.get("thinking"), delta.get("partial_json")
                )
        elif kind == "message_stop":
            self._finished = True

    def _merge(self, usage: object) -> None:
        """Anthropic: later counts replace earlier ones (they are cumulative)."""
        if not isinstance(usage, Mapping):
            return
        for key, value in usage.items():
            if value is not None:
                self._anthropic[key] = value
        merged = _anthropic_usage(self._anthropic)
        if merged is not None:
            self._usage = merged
