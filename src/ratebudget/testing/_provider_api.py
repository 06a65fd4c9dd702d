"""What every endpoint of the fake provider is made of.

An endpoint is a ``Plan``: it reads the request body and returns the prompt
tokens at once, and a ``Build`` that the provider calls once the request
passed its checks: the output, cached and reasoning tokens, and a function
making the response (called after admission, outside the provider's lock).
A ``Dialect`` is what a provider family shapes its own way outside the
endpoints: the error JSON, the rate-limit headers and the request-id header.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = (
    "BadRequest",
    "Build",
    "Context",
    "Dialect",
    "Plan",
    "Reply",
    "Response",
    "argument_of",
    "count_tokens",
    "int_or_none",
    "json_response",
    "last_user_text",
    "require",
    "sse",
    "stream_response",
    "texts",
    "tool_results",
)

_TOOL_TRIGGER = re.compile(r"\btool\b", re.IGNORECASE)


class BadRequest(Exception):
    """The body is not a valid request of its endpoint (a 400)."""


@dataclass(frozen=True)
class Reply:
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
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[bytes] | None = None  # SSE: each a complete event


Build = Callable[[], tuple[int, int, int, Callable[[], Response]]]
"""Admission's second step: (output, cached, reasoning tokens, make the response)."""


@dataclass(frozen=True)
class Context:
    """What an endpoint knows of the provider: its usage settings and its ids."""

    cached_tokens: int
    reasoning_tokens: int
    new_id: Callable[[str], str]
    """A new id with that prefix (``"chatcmpl-00000007"``)."""
    tool_turns: int | None = None
    """Tool calls a conversation gets before its answer (``None``: no end)."""
    tool_results: int = 0
    """The tool results the request carries (``tool_results(body)``)."""

    def reply(
        self,
        last_user: str,
        tool: str | None,
        limit: int | None,
        argument: str = "input",
    ) -> Reply:
        """The answer to ``last_user``: a call of ``tool`` (``last_user`` as
        its ``argument``), or its echo."""
        reasoning = self.reasoning_tokens
        if limit is not None:
            reasoning = min(reasoning, limit)
        if (
            tool is not None
            and _TOOL_TRIGGER.search(last_user)
            and (self.tool_turns is None or self.tool_results < self.tool_turns)
        ):
            arguments = json.dumps({argument: last_user})
            tokens = count_tokens(tool) + count_tokens(arguments)
            return Reply(None, (tool, arguments), tokens, reasoning, False)
        words = ["echo:", *last_user.split()]
        truncated = limit is not None and len(words) > limit - reasoning
        if limit is not None:
            words = words[: limit - reasoning]
        return Reply(" ".join(words), None, len(words), reasoning, truncated)

    def cached(self, prompt: int) -> int:
        """The cached tokens reported for a prompt of ``prompt`` tokens."""
        return min(self.cached_tokens, prompt)


Plan = Callable[[Context, dict[str, Any]], tuple[int, Build]]
"""An endpoint: the body -> its prompt tokens and its ``Build``."""


@dataclass(frozen=True)
class Dialect:
    """How a provider family shapes errors and rate-limit headers."""

    request_id_header: str
    error_payload: Callable[[int, str, str | None], dict[str, Any]]
    """(status, message, the own limit that refused it on a 429) -> error JSON."""
    limit_headers: Callable[[str, int, int, float], list[tuple[str, str]]]
    """(``"requests"``/``"tokens"``, limit, remaining, seconds to reset) -> headers."""
    retry_info: Callable[[dict[str, Any], float], None] | None = None
    """Puts a retry delay (seconds) into the error JSON, for a family that
    says it there rather than in ``Retry-After`` (Gemini)."""


def argument_of(spec: Any) -> str:
    """The argument a tool call fills: the first required parameter of the
    tool's JSON schema (``parameters``, ``input_schema``...), else its first
    parameter, else ``"input"``."""
    if isinstance(spec, Mapping):
        spec = spec.get("function", spec)
    for key in ("parameters", "input_schema", "parametersJsonSchema"):
        schema = spec.get(key) if isinstance(spec, Mapping) else None
        if isinstance(schema, Mapping):
            required = schema.get("required")
            properties = schema.get("properties")
            for name in [
                *(required if isinstance(required, list) else ()),
                *(properties if isinstance(properties, Mapping) else ()),
            ]:
                if isinstance(name, str):
                    return name
    return "input"


def count_tokens(text: str) -> int:
    """The fake tokenizer: whitespace-separated words."""
    return len(text.split())


def texts(content: Any) -> Iterator[str]:
    """The texts in a message content, a content part list or a block."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            yield from texts(part)
    elif isinstance(content, Mapping):
        text = content.get("text")
        if isinstance(text, str):
            yield text
        for key in ("content", "output"):
            if key in content:
                yield from texts(content[key])


def tool_results(body: Mapping[str, Any]) -> int:
    """The tool results a request carries, in any dialect: chat messages of
    role ``tool``, Responses ``function_call_output`` items, Anthropic
    ``tool_result`` blocks, Gemini ``functionResponse`` parts."""
    found = 0
    for key in ("messages", "input", "contents"):
        items = body.get(key)
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, Mapping):
                continue
            if item.get("role") == "tool" or item.get("type") == "function_call_output":
                found += 1
            parts = item.get("content", item.get("parts"))
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, Mapping) and (
                    part.get("type") == "tool_result"
                    or "functionResponse" in part
                    or "function_response" in part
                ):
                    found += 1
    return found


def last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return " ".join(texts(message.get("content")))
    return ""


def int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


def require(body: Mapping[str, Any], *names: str) -> None:
    for name in names:
        if name not in body:
            raise BadRequest(f"Missing required parameter: '{name}'")
    if not isinstance(body.get("model"), str):
        raise BadRequest("'model' must be a string")


def sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def json_response(
    payload: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload).encode()
    return Response(
        status, [("content-type", "application/json"), *(headers or [])], body
    )


def stream_response(events: list[bytes]) -> Response:
    headers = [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
    ]
    return Response(200, headers, events=events)
