"""A fake OpenAI / Anthropic API server for offline tests (not for production).

``FakeProvider`` is a plain ASGI 3 application (no web framework) that speaks
enough of both APIs for the official SDKs:

* OpenAI: ``POST /v1/chat/completions`` (JSON, and SSE with ``stream: true``;
  ``stream_options.include_usage`` adds a last chunk with ``choices: []`` and
  the usage), ``POST /v1/responses`` (JSON and SSE events), ``POST
  /v1/completions`` (JSON and SSE) and ``POST /v1/embeddings`` (float lists, or
  base64 float32 as the SDK asks for by default).
* Anthropic: ``POST /v1/messages`` (JSON and SSE with ``event:`` lines).

Everything it answers is a function of the request, so tests can compute
what to expect:

* Tokens: :meth:`FakeProvider.count_tokens` is the number of
  whitespace-separated words (``len(text.split())``). Prompt tokens are the
  sum of it over every text the request carries: each message's string
  content, or the ``text`` of its content parts (and the string content of
  Anthropic ``tool_result`` blocks, the ``output`` of Responses
  ``function_call_output`` items), plus the system prompt (Anthropic
  ``system``, Responses ``instructions``). Completions count the prompt(s),
  embeddings each input (a list of token ids counts its length).
* The reply is ``"echo:"`` followed by the words of the last user text, joined
  by single spaces (``"echo: hello world"`` for ``"hello   world"``); its
  output tokens are its words. A limit (``max_tokens``,
  ``max_completion_tokens``, ``max_output_tokens``) keeps only the first words
  and says so (finish_reason ``"length"``, stop_reason ``"max_tokens"``,
  Responses status ``"incomplete"``). Chat ``n`` gives ``n`` identical choices
  (completion tokens ``n`` times the reply's). Streams send one word per
  delta (``"echo:"``, ``" hello"``, ``" world"``).
* Tool calls: when the request has ``tools`` (and ``tool_choice`` is not
  ``"none"``) and the last user text contains the word ``tool`` (the regex
  ``\\btool\\b``, any case), the answer calls the first tool instead of
  replying: arguments ``json.dumps({"input": <last user text>})``, output
  tokens ``count_tokens(name) + count_tokens(arguments)``, finish_reason
  ``"tool_calls"`` / stop_reason ``"tool_use"``. A limit does not cut a call.
* ``cached_tokens``: reported as ``prompt_tokens_details.cached_tokens``
  (at most the prompt tokens; Anthropic: ``cache_read_input_tokens``, and
  ``input_tokens`` is the rest, as Anthropic counts). ``reasoning_tokens``:
  reported as ``completion_tokens_details.reasoning_tokens`` and counted in
  the output tokens (Anthropic ``output_tokens``), and they come out of the
  output limit first.

Rate limits of its own (``rpm``, ``tpm``): a sliding 60 s window over the
requests it accepted, measured with ``clock``. A request costs 1 request and
its prompt + output tokens (known before answering, the reply being
deterministic). If it would take the window over a limit it gets a 429 with
``Retry-After`` (whole seconds until enough leaves the window; 60 if the
request alone is bigger than ``tpm``) and the provider's error JSON; rejected
and failed requests use no quota. Every response carries the rate-limit
headers of the limits that are set (OpenAI ``x-ratelimit-*``; Anthropic
``anthropic-ratelimit-requests-*`` and ``-tokens-*``, where ``-reset`` is an
RFC 3339 time: the wall clock now plus the ``clock`` seconds until the window
is empty). A limit left as ``None`` has no headers.

``fail_next(status, times, retry_after=)`` makes the next requests fail with
that status and the provider's error shape. ``requests`` logs every request
(:class:`FakeRequest`), ``usage_total()`` sums the successful ones.

Serving: the app can be used in-process (``httpx.ASGITransport``), or on
loopback with ``async with provider.serve() as base_url`` or
``with provider.serve_in_thread() as base_url`` (its own asyncio loop in a
daemon thread, for sync clients and other event loops). The HTTP/1.1 server
is minimal: Content-Length or chunked request bodies, keep-alive, chunked
responses for streams; no TLS, no pipelining guarantees beyond sequential
requests, no HTTP/2, no upgrade, 64 KiB of headers and 64 MiB of body at most.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http
import itertools
import json
import math
import re
import struct
import threading
import time
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ("FakeProvider", "FakeRequest", "FakeUsage")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_WINDOW = 60.0
_TOOL_TRIGGER = re.compile(r"\btool\b", re.IGNORECASE)
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_EMBEDDING_DIMENSIONS = 8

_OPENAI_PATHS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
)
_ANTHROPIC_PATHS = ("/v1/messages",)

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


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


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None
    message: str | None


@dataclass(frozen=True)
class _Reply:
    text: str | None  # None: a tool call
    tool: tuple[str, str] | None  # (name, arguments JSON)
    visible_tokens: int
    reasoning_tokens: int
    truncated: bool

    @property
    def output_tokens(self) -> int:
        return self.visible_tokens + self.reasoning_tokens

    def words(self) -> list[str]:
        """The stream deltas: one word each, the later ones with a space."""
        words = (self.text or "").split()
        return [w if i == 0 else " " + w for i, w in enumerate(words)]


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[bytes] | None = None  # SSE: each a complete event


_Build = Callable[[], tuple[int, int, int, Callable[[], _Response]]]
"""Admission's second step: (output, cached, reasoning tokens, make the response)."""


class _BadRequest(Exception):
    pass


def count_tokens(text: str) -> int:
    """The fake tokenizer: whitespace-separated words."""
    return len(text.split())


def _texts(content: Any) -> Iterator[str]:
    """The texts in a message content, a content part list or a block."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            yield from _texts(part)
    elif isinstance(content, Mapping):
        text = content.get("text")
        if isinstance(text, str):
            yield text
        for key in ("content", "output"):
            if key in content:
                yield from _texts(content[key])


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return " ".join(_texts(message.get("content")))
    return ""


def _go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def _rfc3339_in(seconds: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=math.ceil(seconds))
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BadRequest(f"{name} must be a non-negative integer")
    return value


class FakeProvider:
    """A fake LLM API: an ASGI 3 app with its own rate limits and a request log.

    ``rpm`` / ``tpm``: its own limits (a sliding 60 s window; ``None``: none).
    ``clock``: monotonic seconds for that window and the log's ``time``.
    ``latency``: seconds slept (``anyio.sleep``) before each response starts;
    ``stream_delay``: seconds slept between two SSE events of a stream.
    ``cached_tokens`` / ``reasoning_tokens``: reported in every usage.
    See the module docstring for what it answers and how it counts.
    """

    count_tokens = staticmethod(count_tokens)

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        latency: float = 0.0,
        stream_delay: float = 0.0,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None)")
        if latency < 0 or stream_delay < 0:
            raise ValueError("latency and stream_delay must be >= 0")
        if cached_tokens < 0 or reasoning_tokens < 0:
            raise ValueError("cached_tokens and reasoning_tokens must be >= 0")
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.latency = latency
        self.stream_delay = stream_delay
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.requests: list[FakeRequest] = []
        """Every request received, oldest first."""
        self._lock = threading.RLock()
        self._window: deque[tuple[float, int]] = deque()  # (accepted at, tokens)
        self._failures: deque[_Failure] = deque()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"<FakeProvider rpm={self.rpm} tpm={self.tpm} {len(self.requests)} requests>"

    # -- the test-facing API ---------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        times: int = 1,
        *,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` valid API requests with ``status`` (error JSON).

        ``retry_after`` adds a ``Retry-After`` header (seconds, rounded up).
        Failed requests use no rate-limit quota and are logged.
        """
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        if times < 0:
            raise ValueError("times must be >= 0")
        with self._lock:
            self._failures.extend(
                _Failure(status, retry_after, message) for _ in range(times)
            )

    def usage_total(self) -> FakeUsage:
        """The sum over the successful (status 200) requests."""
        done = [r for r in list(self.requests) if r.status == 200]
        return FakeUsage(
            requests=len(done),
            prompt_tokens=sum(r.prompt_tokens for r in done),
            output_tokens=sum(r.output_tokens for r in done),
            cached_tokens=sum(r.cached_tokens for r in done),
            reasoning_tokens=sum(r.reasoning_tokens for r in done),
        )

    # -- ASGI ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise RuntimeError(f"FakeProvider does not serve {scope['type']!r}")
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response = self._handle(scope["method"], scope["path"], b"".join(chunks))
        if self.latency:
            await anyio.sleep(self.latency)
        headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
        ]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers,
            }
        )
        if response.events is None:
            await send({"type": "http.response.body", "body": response.body})
            return
        for i, event in enumerate(response.events):
            if i and self.stream_delay:
                await anyio.sleep(self.stream_delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- request handling (synchronous, under the lock) ------------------------

    def _handle(self, method: str, path: str, raw: bytes) -> _Response:
        now = self.clock()
        anthropic = path in _ANTHROPIC_PATHS
        if path not in _OPENAI_PATHS and not anthropic:
            return self._error(anthropic, 404, f"Unknown path {path}", now)
        if method != "POST":
            return self._error(anthropic, 405, f"{method} not allowed on {path}", now)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            with self._lock:
                self._log(path, {}, 0, 0, 400, now)
            return self._error(anthropic, 400, "The body must be a JSON object", now)
        with self._lock:
            try:
                prompt, build = self._plan(path, body)
            except _BadRequest as exc:
                self._log(path, body, 0, 0, 400, now)
                return self._error(anthropic, 400, str(exc), now)
            failure = self._failures.popleft() if self._failures else None
            if failure is not None:
                self._log(path, body, prompt, 0, failure.status, now)
                return self._error(
                    anthropic,
                    failure.status,
                    failure.message or f"Forced failure ({failure.status})",
                    now,
                    retry_after=failure.retry_after,
                )
            output, cached, reasoning, respond = build()
            retry_after = self._admit(now, prompt + output)
            if retry_after is not None:
                self._log(path, body, prompt, 0, 429, now)
                return self._rate_limited(anthropic, now, retry_after, prompt + output)
            self._log(
                path, body, prompt, output, 200, now, cached=cached, reasoning=reasoning
            )
            headers = self._limit_headers(anthropic, now)
        response = respond()
        response.headers.extend(headers)
        response.headers.append(
            (
                "request-id" if anthropic else "x-request-id",
                f"req_{next(self._ids):08d}",
            )
        )
        return response

    def _log(
        self,
        path: str,
        body: Mapping[str, Any],
        prompt: int,
        output: int,
        status: int,
        now: float,
        *,
        cached: int = 0,
        reasoning: int = 0,
    ) -> None:
        model = body.get("model")
        self.requests.append(
            FakeRequest(
                path=path,
                model=model if isinstance(model, str) else None,
                stream=bool(body.get("stream", False)),
                prompt_tokens=prompt,
                output_tokens=output,
                status=status,
                time=now,
                cached_tokens=cached,
                reasoning_tokens=reasoning,
                body=body,
            )
        )

    # -- rate limits -----------------------------------------------------------

    def _prune(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - _WINDOW:
            self._window.popleft()

    def _admit(self, now: float, cost: int) -> float | None:
        """Take one request and ``cost`` tokens, or say how long to wait."""
        self._prune(now)
        waits: list[float] = []
        if self.rpm is not None and len(self._window) + 1 > self.rpm:
            waits.append(self._window[-self.rpm][0] + _WINDOW - now)
        if self.tpm is not None:
            used = sum(tokens for _, tokens in self._window)
            if cost > self.tpm:
                waits.append(_WINDOW)
            elif used + cost > self.tpm:
                for at, tokens in self._window:
                    used -= tokens
                    if used + cost <= self.tpm:
                        waits.append(at + _WINDOW - now)
                        break
        if waits:
            return max(waits)
        self._window.append((now, cost))
        return None

    def _limit_headers(self, anthropic: bool, now: float) -> list[tuple[str, str]]:
        self._prune(now)
        reset = self._window[-1][0] + _WINDOW - now if self._window else 0.0
        used_tokens = sum(tokens for _, tokens in self._window)
        headers: list[tuple[str, str]] = []
        for kind, limit, used in (
            ("requests", self.rpm, len(self._window)),
            ("tokens", self.tpm, used_tokens),
        ):
            if limit is None:
                continue
            remaining = str(max(0, limit - used))
            if anthropic:
                prefix = f"anthropic-ratelimit-{kind}"
                headers += [
                    (f"{prefix}-limit", str(limit)),
                    (f"{prefix}-remaining", remaining),
                    (f"{prefix}-reset", _rfc3339_in(reset)),
                ]
            else:
                headers += [
                    (f"x-ratelimit-limit-{kind}", str(limit)),
                    (f"x-ratelimit-remaining-{kind}", remaining),
                    (f"x-ratelimit-reset-{kind}", _go_duration(reset)),
                ]
        return headers

    # -- errors ----------------------------------------------------------------

    def _error(
        self,
        anthropic: bool,
        status: int,
        message: str,
        now: float,
        *,
        retry_after: float | None = None,
        openai_type: str | None = None,
        openai_code: str | None = None,
    ) -> _Response:
        if anthropic:
            kind = _ANTHROPIC_ERROR_TYPES.get(
                status, "api_error" if status >= 500 else "invalid_request_error"
            )
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": kind, "message": message},
            }
        else:
            kind = openai_type or _OPENAI_ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            )
            code = openai_code or ("rate_limit_exceeded" if status == 429 else None)
            payload = {
                "error": {"message": message, "type": kind, "param": None, "code": code}
            }
        with self._lock:
            headers = self._limit_headers(anthropic, now)
        if retry_after is not None:
            headers.append(("retry-after", str(max(0, math.ceil(retry_after)))))
        return self._json(payload, status, headers)

    def _rate_limited(
        self, anthropic: bool, now: float, retry_after: float, cost: int
    ) -> _Response:
        return self._error(
            anthropic,
            429,
            f"Rate limit reached (rpm={self.rpm}, tpm={self.tpm}, "
            f"requested {cost} tokens); retry in {math.ceil(retry_after)}s",
            now,
            retry_after=max(retry_after, 1.0),
            openai_type="tokens" if self.tpm is not None else "requests",
        )

    @staticmethod
    def _json(
        payload: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> _Response:
        body = json.dumps(payload).encode()
        return _Response(
            status, [("content-type", "application/json"), *(headers or [])], body
        )

    @staticmethod
    def _stream(events: list[bytes]) -> _Response:
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
        ]
        return _Response(200, headers, events=events)

    # -- planning: prompt tokens, then (output, cached, reasoning, respond) -----

    def _plan(self, path: str, body: dict[str, Any]) -> tuple[int, _Build]:
        if path == "/v1/chat/completions":
            return self._plan_chat(body)
        if path == "/v1/responses":
            return self._plan_responses(body)
        if path == "/v1/completions":
            return self._plan_completions(body)
        if path == "/v1/embeddings":
            return self._plan_embeddings(body)
        return self._plan_messages(body)

    def _reply(self, last_user: str, tool: str | None, limit: int | None) -> _Reply:
        reasoning = self.reasoning_tokens
        if limit is not None:
            reasoning = min(reasoning, limit)
        if tool is not None and _TOOL_TRIGGER.search(last_user):
            arguments = json.dumps({"input": last_user})
            tokens = count_tokens(tool) + count_tokens(arguments)
            return _Reply(None, (tool, arguments), tokens, reasoning, False)
        words = ["echo:", *last_user.split()]
        truncated = limit is not None and len(words) > limit - reasoning
        if limit is not None:
            words = words[: limit - reasoning]
        return _Reply(" ".join(words), None, len(words), reasoning, truncated)

    def _cached(self, prompt: int) -> int:
        return min(self.cached_tokens, prompt)

    @staticmethod
    def _require(body: Mapping[str, Any], *names: str) -> None:
        for name in names:
            if name not in body:
                raise _BadRequest(f"Missing required parameter: '{name}'")
        if not isinstance(body.get("model"), str):
            raise _BadRequest("'model' must be a string")

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    # OpenAI chat completions

    def _plan_chat(self, body: dict[str, Any]) -> tuple[int, _Build]:
        self._require(body, "model", "messages")
        messages = body["messages"]
        if not isinstance(messages, list):
            raise _BadRequest("'messages' must be an array")
        prompt = sum(
            count_tokens(text)
            for message in messages
            if isinstance(message, Mapping)
            for text in _texts(message.get("content"))
        )
        limit = _int_or_none(body.get("max_completion_tokens"), "max_completion_tokens")
        if limit is None:
            limit = _int_or_none(body.get("max_tokens"), "max_tokens")
        n = _int_or_none(body.get("n"), "n") or 1
        tool = None
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":
            try:
                tool = str(tools[0]["function"]["name"])
            except (LookupError, TypeError):
                raise _BadRequest("tools[0].function.name is required") from None
        reply = self._reply(_last_user_text(messages), tool, limit)
        cached = self._cached(prompt)

        def build() -> tuple[int, int, int, Callable[[], _Response]]:
            output = n * reply.output_tokens
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt + output,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": n * reply.reasoning_tokens,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            reasoning = n * reply.reasoning_tokens
            return (
                output,
                cached,
                reasoning,
                lambda: self._chat_response(body, reply, n, usage),
            )

        return prompt, build

    def _chat_response(
        self, body: Mapping[str, Any], reply: _Reply, n: int, usage: dict[str, Any]
    ) -> _Response:
        ident = self._new_id("chatcmpl-")
        created = int(time.time())
        model = body["model"]
        call_id = self._new_id("call_")
        if reply.tool is not None:
            finish = "tool_calls"
        else:
            finish = "length" if reply.truncated else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": reply.text,
                "refusal": None,
            }
            if reply.tool is not None:
                message["tool_calls"] = [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": reply.tool[0], "arguments": reply.tool[1]},
                    }
                ]
            choices = [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ]
            return self._json(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                }
            )
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(
            options.get("include_usage")
        )

        def chunk(choices: list[dict[str, Any]]) -> bytes:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if include_usage:
                data["usage"] = None
            return _sse(data)

        def choice(i: int, delta: dict[str, Any], end: str | None = None) -> Any:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": end}

        events: list[bytes] = []
        for i in range(n):
            first: dict[str, Any] = {"role": "assistant", "content": ""}
            if reply.tool is not None:
                first = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": reply.tool[0], "arguments": ""},
                        }
                    ],
                }
            events.append(chunk([choice(i, first)]))
            if reply.tool is not None:
                delta = {
                    "tool_calls": [
                        {"index": 0, "function": {"arguments": reply.tool[1]}}
                    ]
                }
                events.append(chunk([choice(i, delta)]))
            events.extend(chunk([choice(i, {"content": w})]) for w in reply.words())
            events.append(chunk([choice(i, {}, finish)]))
        if include_usage:
            last = json.loads(chunk([])[len(b"data: ") :])
            last["usage"] = usage
            events.append(_sse(last))
        events.append(_sse("[DONE]"))
        return self._stream(events)

    # OpenAI responses

    def _plan_responses(self, body: dict[str, Any]) -> tuple[int, _Build]:
        self._require(body, "model")
        items = body.get("input", "")
        if isinstance(items, list):
            texts = [
                text
                for item in items
                if isinstance(item, Mapping)
                for text in _texts(item)
            ]
        else:
            texts = list(_texts(items))
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            texts.append(instructions)
        prompt = sum(count_tokens(t) for t in texts)
        limit = _int_or_none(body.get("max_output_tokens"), "max_output_tokens")
        tool = None
        if body.get("tool_choice") != "none":
            for spec in body.get("tools") or ():
                if isinstance(spec, Mapping) and spec.get("type") == "function":
                    tool = str(spec.get("name"))
                    break
        reply = self._reply(_last_user_text(items), tool, limit)
        cached = self._cached(prompt)

        def build() -> tuple[int, int, int, Callable[[], _Response]]:
            output = reply.output_tokens
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": output,
                "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
                "total_tokens": prompt + output,
            }
            return (
                output,
                cached,
                reply.reasoning_tokens,
                lambda: self._responses_response(body, reply, usage),
            )

        return prompt, build

    def _responses_response(
        self, body: Mapping[str, Any], reply: _Reply, usage: dict[str, Any]
    ) -> _Response:
        ident = self._new_id("resp_")
        item_id = self._new_id("msg_" if reply.tool is None else "fc_")
        call_id = self._new_id("call_")
        status = "incomplete" if reply.truncated else "completed"

        def response(state: str, output: list[Any], with_usage: bool) -> Any:
            return {
                "id": ident,
                "object": "response",
                "created_at": int(time.time()),
                "status": state,
                "error": None,
                "incomplete_details": (
                    {"reason": "max_output_tokens"} if state == "incomplete" else None
                ),
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"),
                "model": body["model"],
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None},
                "store": True,
                "temperature": 1.0,
                "text": {"format": {"type": "text"}},
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []),
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": usage if with_usage else None,
                "metadata": {},
            }

        def message(state: str, text: str) -> dict[str, Any]:
            if reply.tool is not None:
                return {
                    "type": "function_call",
                    "id": item_id,
                    "call_id": call_id,
                    "name": reply.tool[0],
                    "arguments": reply.tool[1] if state != "in_progress" else "",
                    "status": state,
                }
            content = [] if state == "in_progress" else [part(text)]
            return {
                "type": "message",
                "id": item_id,
                "status": state,
                "role": "assistant",
                "content": content,
            }

        def part(text: str) -> dict[str, Any]:
            return {"type": "output_text", "text": text, "annotations": []}

        text = reply.text or ""
        final_item = message("completed" if not reply.truncated else "incomplete", text)
        if not body.get("stream"):
            return self._json(response(status, [final_item], True))
        seq = itertools.count()
        events: list[bytes] = []

        def emit(kind: str, **data: Any) -> None:
            events.append(
                _sse({"type": kind, "sequence_number": next(seq), **data}, kind)
            )

        emit("response.created", response=response("in_progress", [], False))
        emit("response.in_progress", response=response("in_progress", [], False))
        emit(
            "response.output_item.added",
            output_index=0,
            item=message("in_progress", ""),
        )
        where = {"item_id": item_id, "output_index": 0}
        if reply.tool is not None:
            emit("response.function_call_arguments.delta", **where, delta=reply.tool[1])
            emit(
                "response.function_call_arguments.done",
                **where,
                arguments=reply.tool[1],
            )
        else:
            emit("response.content_part.added", **where, content_index=0, part=part(""))
            for word in reply.words():
                emit(
                    "response.output_text.delta",
                    **where,
                    content_index=0,
                    delta=word,
                    logprobs=[],
                )
            emit(
                "response.output_text.done",
                **where,
                content_index=0,
                text=text,
                logprobs=[],
            )
            emit(
                "response.content_part.done", **where, content_index=0, part=part(text)
            )
        emit("response.output_item.done", output_index=0, item=final_item)
        emit(f"response.{status}", response=response(status, [final_item], True))
        return self._stream(events)

    # OpenAI legacy completions

    def _plan_completions(self, body: dict[str, Any]) -> tuple[int, _Build]:
        self._require(body, "model", "prompt")
        prompts = body["prompt"]
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not all(
            isinstance(p, str) for p in prompts
        ):
            raise _BadRequest("'prompt' must be a string or an array of strings")
        prompt = sum(count_tokens(p) for p in prompts)
        limit = _int_or_none(body.get("max_tokens"), "max_tokens")
        replies = [self._reply(p, None, limit) for p in prompts]
        cached = self._cached(prompt)

        def build() -> tuple[int, int, int, Callable[[], _Response]]:
            output = sum(r.output_tokens for r in replies)
            reasoning = sum(r.reasoning_tokens for r in replies)
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": output,
                "total_tokens": prompt + output,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            }
            return (
                output,
                cached,
                reasoning,
                lambda: self._completions_response(body, replies, usage),
            )

        return prompt, build

    def _completions_response(
        self, body: Mapping[str, Any], replies: list[_Reply], usage: dict[str, Any]
    ) -> _Response:
        base = {
            "id": self._new_id("cmpl-"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
        }

        def choice(i: int, text: str, end: str | None) -> Any:
            return {"index": i, "text": text, "logprobs": None, "finish_reason": end}

        def finish(reply: _Reply) -> str:
            return "length" if reply.truncated else "stop"

        if not body.get("stream"):
            choices = [
                choice(i, r.text or "", finish(r)) for i, r in enumerate(replies)
            ]
            return self._json({**base, "choices": choices, "usage": usage})
        events = [
            _sse({**base, "choices": [choice(i, w, None)]})
            for i, r in enumerate(replies)
            for w in r.words()
        ]
        events += [
            _sse({**base, "choices": [choice(i, "", finish(r))]})
            for i, r in enumerate(replies)
        ]
        options = body.get("stream_options")
        if isinstance(options, Mapping) and options.get("include_usage"):
            events.append(_sse({**base, "choices": [], "usage": usage}))
        events.append(_sse("[DONE]"))
        return self._stream(events)

    # OpenAI embeddings

    def _plan_embeddings(self, body: dict[str, Any]) -> tuple[int, _Build]:
        self._require(body, "model", "input")
        inputs = body["input"]
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise _BadRequest("'input' must be a string or a non-empty array")
        counts = []
        for item in inputs:
            if isinstance(item, str):
                counts.append(count_tokens(item))
            elif isinstance(item, list):
                counts.append(len(item))
            else:
                raise _BadRequest("'input' items must be strings or token arrays")
        prompt = sum(counts)
        dimensions = _int_or_none(body.get("dimensions"), "dimensions")
        dimensions = dimensions or _EMBEDDING_DIMENSIONS
        as_base64 = body.get("encoding_format") == "base64"

        def vector(item: Any) -> Any:
            digest = hashlib.sha256(json.dumps(item).encode()).digest()
            values = [(digest[i % len(digest)] - 128) / 128 for i in range(dimensions)]
            if as_base64:
                packed = struct.pack(f"<{dimensions}f", *values)
                return base64.b64encode(packed).decode()
            return values

        def build() -> tuple[int, int, int, Callable[[], _Response]]:
            data = [
                {"object": "embedding", "index": i, "embedding": vector(item)}
                for i, item in enumerate(inputs)
            ]
            payload = {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
            return 0, 0, 0, lambda: self._json(payload)

        return prompt, build

    # Anthropic messages

    def _plan_messages(self, body: dict[str, Any]) -> tuple[int, _Build]:
        self._require(body, "model", "messages", "max_tokens")
        messages = body["messages"]
        if not isinstance(messages, list):
            raise _BadRequest("messages: Input should be a valid list")
        limit = _int_or_none(body.get("max_tokens"), "max_tokens")
        texts = [
            text
            for message in messages
            if isinstance(message, Mapping)
            for text in _texts(message.get("content"))
        ]
        texts += _texts(body.get("system"))
        prompt = sum(count_tokens(t) for t in texts)
        tool = None
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if tools and not (isinstance(choice, Mapping) and choice.get("type") == "none"):
            try:
                tool = str(tools[0]["name"])
            except (LookupError, TypeError):
                raise _BadRequest("tools.0.name: Field required") from None
        reply = self._reply(_last_user_text(messages), tool, limit)
        cached = self._cached(prompt)

        def build() -> tuple[int, int, int, Callable[[], _Response]]:
            output = reply.output_tokens
            usage = {
                "input_tokens": prompt - cached,
                "output_tokens": output,
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0,
            }
            return (
                output,
                cached,
                reply.reasoning_tokens,
                lambda: self._messages_response(body, reply, usage),
            )

        return prompt, build

    def _messages_response(
        self, body: Mapping[str, Any], reply: _Reply, usage: dict[str, Any]
    ) -> _Response:
        ident = self._new_id("msg_")
        tool_id = self._new_id("toolu_")
        if reply.tool is not None:
            stop = "tool_use"
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id,
                "name": reply.tool[0],
                "input": json.loads(reply.tool[1]),
            }
        else:
            stop = "max_tokens" if reply.truncated else "end_turn"
            block = {"type": "text", "text": reply.text or ""}
        message: dict[str, Any] = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [block],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return self._json(message)
        events: list[bytes] = []

        def emit(kind: str, **data: Any) -> None:
            events.append(_sse({"type": kind, **data}, kind))

        start_usage = {**usage, "output_tokens": 1}
        emit(
            "message_start",
            message={
                **message,
                "content": [],
                "stop_reason": None,
                "usage": start_usage,
            },
        )
        if reply.tool is not None:
            emit("content_block_start", index=0, content_block={**block, "input": {}})
            emit("ping")
            delta = {"type": "input_json_delta", "partial_json": reply.tool[1]}
            emit("content_block_delta", index=0, delta=delta)
        else:
            emit(
                "content_block_start",
                index=0,
                content_block={"type": "text", "text": ""},
            )
            emit("ping")
            for word in reply.words():
                emit(
                    "content_block_delta",
                    index=0,
                    delta={"type": "text_delta", "text": word},
                )
        emit("content_block_stop", index=0)
        emit(
            "message_delta",
            delta={"stop_reason": stop, "stop_sequence": None},
            usage={"output_tokens": usage["output_tokens"]},
        )
        emit("message_stop")
        return self._stream(events)

    # -- serving on loopback ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve this app over HTTP/1.1 on ``host`` (a free port by default).

        ``async with provider.serve() as base_url:`` gives ``"http://127.0.0.1:PORT"``;
        leaving the block closes the listener and every connection.
        """
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._connection)
            try:
                yield f"http://{host}:{bound}"
            finally:
                tg.cancel_scope.cancel()

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Like :meth:`serve`, on an asyncio loop of its own in a daemon thread.

        ``with provider.serve_in_thread() as base_url:`` — usable from sync
        code and from any event loop.
        """
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            stop = anyio.Event()
            box["token"] = anyio.lowlevel.current_token()
            box["stop"] = stop
            async with self.serve(host, port) as url:
                box["url"] = url
                ready.set()
                await stop.wait()

        def run() -> None:
            try:
                anyio.run(main, backend="asyncio")
            except BaseException as exc:  # pragma: no cover - reported below
                box["error"] = exc
            finally:
                ready.set()

        thread = threading.Thread(target=run, name="FakeProvider", daemon=True)
        thread.start()
        ready.wait()
        if "url" not in box:
            raise RuntimeError("FakeProvider could not start serving") from box.get(
                "error"
            )
        try:
            yield box["url"]
        finally:
            with contextlib.suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(box["stop"].set, token=box["token"])
            thread.join(timeout=10)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                await self._serve_connection(stream)
        except Exception:  # a broken connection never stops the server
            return

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        client = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
        server = stream.extra(anyio.abc.SocketAttribute.local_address, None)
        while True:
            try:
                head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
            except (anyio.IncompleteRead, anyio.EndOfStream):
                return
            except anyio.DelimiterNotFound:
                await stream.send(_plain(431, "Request header fields too large"))
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ")
            except ValueError:
                await stream.send(_plain(400, "Bad request line"))
                return
            headers: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    await stream.send(_plain(400, "Bad header line"))
                    return
                headers.append((name.strip().lower(), value.strip()))
            fields = dict(headers)
            connection = fields.get("connection", "").lower()
            keep_alive = (
                "close" not in connection
                if version == "HTTP/1.1"
                else "keep-alive" in connection
            )
            if "chunked" in fields.get("transfer-encoding", "").lower():
                body = await _read_chunked(reader)
            else:
                length = int(fields.get("content-length", "0") or 0)
                if length > _MAX_BODY:
                    await stream.send(_plain(413, "Body too large"))
                    return
                body = await reader.receive_exactly(length) if length else b""
            path, _, query = target.partition("?")
            scope: Scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": version.removeprefix("HTTP/"),
                "method": method,
                "scheme": "http",
                "path": unquote(path),
                "raw_path": path.encode("latin-1"),
                "query_string": query.encode("latin-1"),
                "root_path": "",
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers
                ],
                "client": tuple(client[:2]) if isinstance(client, tuple) else None,
                "server": tuple(server[:2]) if isinstance(server, tuple) else None,
            }
            exchange = _Exchange(stream, body, keep_alive, head_only=method == "HEAD")
            try:
                await self(scope, exchange.receive, exchange.send)
            except Exception:
                if not exchange.started:
                    await stream.send(_plain(500, "The app failed"))
                return
            finally:
                exchange.finished.set()
            if not exchange.started:
                await stream.send(_plain(500, "The app sent no response"))
                return
            if not exchange.complete or not exchange.keep_alive:
                return


class _Exchange:
    """One request/response on a connection: the ASGI receive and send."""

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        body: bytes,
        keep_alive: bool,
        *,
        head_only: bool,
    ) -> None:
        self.stream = stream
        self.body: bytes | None = body
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.finished = anyio.Event()
        self.started = False
        self.complete = False
        self.chunked = False
        self.start: Message | None = None

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.start is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start = message
            return
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r}")
        if self.start is None or self.complete:
            raise RuntimeError("http.response.body out of order")
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out = b""
        if not self.started:
            self.started = True
            out = self._head(len(data), more)
        if self.head_only:
            data = b""
        if self.chunked:
            if data:
                out += b"%x\r\n%s\r\n" % (len(data), data)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += data
        if not more:
            self.complete = True
        if out:
            await self.stream.send(out)

    def _head(self, length: int, more: bool) -> bytes:
        assert self.start is not None
        status = int(self.start["status"])
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in self.start.get("headers", [])
        ]
        names = {k.lower() for k, _ in headers}
        if "content-length" not in names:
            if more:
                self.chunked = True
                headers.append(("transfer-encoding", "chunked"))
            else:
                headers.append(("content-length", str(length)))
        headers.append(("connection", "keep-alive" if self.keep_alive else "close"))
        headers.append(("server", "ratebudget-fake-provider"))
        lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _plain(status: int, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {_phrase(status)}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("latin-1") + body


async def _read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.receive_until(b"\r\n", 1024)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while await reader.receive_until(b"\r\n", _MAX_HEAD):
                pass  # trailers
            return b"".join(parts)
        total += size
        if total > _MAX_BODY:
            raise ValueError("chunked body too large")
        parts.append(await reader.receive_exactly(size))
        await reader.receive_exactly(2)
