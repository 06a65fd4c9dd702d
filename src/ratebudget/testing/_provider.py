"""A fake OpenAI / Anthropic API server for offline tests (not for production).

``FakeProvider`` is a plain ASGI 3 application (no web framework) that speaks
enough of both APIs for the official SDKs:

* OpenAI: ``POST /v1/chat/completions`` (JSON, and SSE with ``stream: true``;
  ``stream_options.include_usage`` adds a last chunk with ``choices: []`` and
  the usage), ``POST /v1/responses`` (JSON and SSE events), ``POST
  /v1/completions`` (JSON and SSE) and ``POST /v1/embeddings`` (float lists, or
  base64 float32 as the SDK asks for by default).
* Anthropic: ``POST /v1/messages`` (JSON and SSE with ``event:`` lines).
* Gemini: ``POST .../models/{model}:generateContent`` and
  ``...:streamGenerateContent`` (SSE with ``?alt=sse``, else a JSON array),
  under any prefix; usage in ``usageMetadata`` (``thoughtsTokenCount`` apart
  from ``candidatesTokenCount``, as Gemini reports them).

The same routes are served under any prefix, as OpenAI-compatible servers
put them: Azure OpenAI's ``/openai/deployments/{name}/chat/completions``,
OpenRouter's ``/api/v1/...``, Gemini's ``/v1beta/openai/...``. ``models``
maps a requested model (an Azure deployment) to the model the answer names.

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
  replying: arguments ``json.dumps({<argument>: <last user text>})``, where
  the argument is the tool's first required parameter (else its first, else
  ``"input"``), output
  tokens ``count_tokens(name) + count_tokens(arguments)``, finish_reason
  ``"tool_calls"`` / stop_reason ``"tool_use"``. A limit does not cut a call.
  The tool's results do not change the last user text, so by default an
  agent that asks for the tool is answered with a call on every turn: an
  agent loop that never converges. ``tool_turns=N`` ends it: a request that
  already carries ``N`` tool results (chat messages of role ``tool``,
  Responses ``function_call_output`` items, Anthropic ``tool_result``
  blocks, Gemini ``functionResponse`` parts) gets the echo instead.
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
daemon thread, for sync clients and other event loops), by a minimal
HTTP/1.1 server (``_http_server``: keep-alive, chunked streams, no TLS).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from ._http_server import Receive, Scope, Send, serve, serve_in_thread
from ._provider_anthropic import ANTHROPIC_ROUTES
from ._provider_api import (
    BadRequest,
    Context,
    Dialect,
    Plan,
    Response,
    count_tokens,
    json_response,
    tool_results,
)
from ._provider_gemini import GEMINI_METHODS, path_fields
from ._provider_limits import SlidingWindow
from ._provider_log import FakeRequest, FakeUsage
from ._provider_openai import OPENAI, OPENAI_ROUTES

__all__ = ("FakeProvider",)

_ROUTES: dict[str, tuple[Dialect, Plan]] = {**OPENAI_ROUTES, **ANTHROPIC_ROUTES}
# the same routes under any prefix (Azure's /openai/deployments/{name}/...,
# OpenRouter's /api/v1/..., Gemini's /v1beta/openai/...): by their ends,
# longest first (/chat/completions before /completions)
_BY_SUFFIX: list[tuple[str, tuple[Dialect, Plan]]] = sorted(
    ((path.removeprefix("/v1"), route) for path, route in _ROUTES.items()),
    key=lambda item: -len(item[0]),
)


def _route(path: str) -> tuple[Dialect, Plan] | None:
    gemini = GEMINI_METHODS.get(path.rstrip("/").rsplit(":", 1)[-1])
    if gemini is not None and ":" in path:  # .../models/{model}:generateContent
        return gemini
    route = _ROUTES.get(path)
    if route is None:
        for suffix, candidate in _BY_SUFFIX:
            if path.endswith(suffix):
                return candidate
    return route


@dataclass(frozen=True)
class _Failure:
    status: int
    retry_after: float | None
    message: str | None


class FakeProvider:
    """A fake LLM API: an ASGI 3 app with its own rate limits and a request log.

    ``rpm`` / ``tpm``: its own limits (a sliding 60 s window; ``None``: none).
    ``clock``: monotonic seconds for that window and the log's ``time``.
    ``latency``: seconds slept (``anyio.sleep``) before each response starts;
    ``stream_delay``: seconds slept between two SSE events of a stream.
    ``cached_tokens`` / ``reasoning_tokens``: reported in every usage.
    ``tool_turns``: tool calls a conversation gets before the answer is the
    echo (``None``, the default: a call on every turn, an agent loop that
    never ends). See the module docstring for what it answers and how it counts.
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
        models: Mapping[str, str] | None = None,
        tool_turns: int | None = None,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None)")
        if latency < 0 or stream_delay < 0:
            raise ValueError("latency and stream_delay must be >= 0")
        if cached_tokens < 0 or reasoning_tokens < 0:
            raise ValueError("cached_tokens and reasoning_tokens must be >= 0")
        if tool_turns is not None and (
            isinstance(tool_turns, bool)
            or not isinstance(tool_turns, int)
            or tool_turns < 0
        ):
            raise ValueError("tool_turns must be an int >= 0 (or None)")
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.latency = latency
        self.stream_delay = stream_delay
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.tool_turns = tool_turns
        self.models = dict(models or {})
        """The model a response names for a requested name (an Azure
        deployment answers with the model it serves); others answer as asked."""
        self.requests: list[FakeRequest] = []
        """Every request received, oldest first."""
        self._lock = threading.RLock()
        self._window = SlidingWindow()
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

    def serve(
        self, host: str = "127.0.0.1", port: int = 0
    ) -> contextlib.AbstractAsyncContextManager[str]:
        """Serve this app over HTTP/1.1 on ``host`` (a free port by default).

        ``async with provider.serve() as base_url:`` gives ``"http://127.0.0.1:PORT"``;
        leaving the block closes the listener and every connection.
        """
        return serve(self, host, port)

    def serve_in_thread(
        self, host: str = "127.0.0.1", port: int = 0
    ) -> contextlib.AbstractContextManager[str]:
        """Like :meth:`serve`, on an asyncio loop of its own in a daemon thread.

        ``with provider.serve_in_thread() as base_url:`` — usable from sync
        code and from any event loop.
        """
        return serve_in_thread(self, host, port, name="FakeProvider")

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
        response = self._handle(
            scope["method"],
            scope["path"],
            b"".join(chunks),
            scope.get("query_string", b""),
        )
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

    def _handle(
        self, method: str, path: str, raw: bytes, query: bytes = b""
    ) -> Response:
        now = self.clock()
        route = _route(path)
        if route is None:
            return self._error(OPENAI, 404, f"Unknown path {path}", now)
        dialect, plan = route
        if method != "POST":
            return self._error(dialect, 405, f"{method} not allowed on {path}", now)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            with self._lock:
                self._log(path, {}, 0, 0, 400, now)
            return self._error(dialect, 400, "The body must be a JSON object", now)
        with self._lock:
            context = Context(
                self.cached_tokens,
                self.reasoning_tokens,
                self._new_id,
                self.tool_turns,
                tool_results(body),
            )
            served = {**body, **path_fields(path, query)}  # Gemini: from the path
            model = served.get("model")
            if isinstance(model, str) and model in self.models:
                served = {**served, "model": self.models[model]}
            try:
                prompt, build = plan(context, served)
            except BadRequest as exc:
                self._log(path, body, 0, 0, 400, now)
                return self._error(dialect, 400, str(exc), now)
            failure = self._failures.popleft() if self._failures else None
            if failure is not None:
                self._log(path, body, prompt, 0, failure.status, now)
                return self._error(
                    dialect,
                    failure.status,
                    failure.message or f"Forced failure ({failure.status})",
                    now,
                    retry_after=failure.retry_after,
                )
            output, cached, reasoning, respond = build()
            retry_after = self._window.admit(now, prompt + output, self.rpm, self.tpm)
            if retry_after is not None:
                self._log(path, body, prompt, 0, 429, now)
                return self._rate_limited(dialect, now, retry_after, prompt + output)
            self._log(
                path, body, prompt, output, 200, now, cached=cached, reasoning=reasoning
            )
            headers = self._window.headers(dialect, now, self.rpm, self.tpm)
        response = respond()
        response.headers.extend(headers)
        response.headers.append((dialect.request_id_header, self._new_id("req_")))
        return response

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

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
        named = {**body, **path_fields(path)}  # Gemini names them in the path
        model = named.get("model")
        self.requests.append(
            FakeRequest(
                path=path,
                model=model if isinstance(model, str) else None,
                stream=bool(named.get("stream", False)),
                prompt_tokens=prompt,
                output_tokens=output,
                status=status,
                time=now,
                cached_tokens=cached,
                reasoning_tokens=reasoning,
                body=body,
            )
        )

    # -- errors ----------------------------------------------------------------

    def _error(
        self,
        dialect: Dialect,
        status: int,
        message: str,
        now: float,
        *,
        retry_after: float | None = None,
        limit: str | None = None,
    ) -> Response:
        payload = dialect.error_payload(status, message, limit)
        with self._lock:
            headers = self._window.headers(dialect, now, self.rpm, self.tpm)
        if retry_after is not None:
            if dialect.retry_info is not None:
                dialect.retry_info(payload, retry_after)
            else:
                headers.append(("retry-after", str(max(0, math.ceil(retry_after)))))
        return json_response(payload, status, headers)

    def _rate_limited(
        self, dialect: Dialect, now: float, retry_after: float, cost: int
    ) -> Response:
        return self._error(
            dialect,
            429,
            f"Rate limit reached (rpm={self.rpm}, tpm={self.tpm}, "
            f"requested {cost} tokens); retry in {math.ceil(retry_after)}s",
            now,
            retry_after=max(retry_after, 1.0),
            limit="tokens" if self.tpm is not None else "requests",
        )
