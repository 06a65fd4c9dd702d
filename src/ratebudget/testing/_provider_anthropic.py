"""The fake provider's Anthropic family: ``POST /v1/messages``, errors and headers.

Messages answer in JSON, or in SSE with ``event:`` lines. Errors are
``{"type": "error", "error": {"type", "message"}}``; the headers
``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, the reset
an RFC 3339 time (the wall clock now plus the seconds until the window is
empty); the request id is ``request-id``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from ._provider_api import (
    BadRequest,
    Build,
    Context,
    Dialect,
    Plan,
    Reply,
    Response,
    argument_of,
    count_tokens,
    int_or_none,
    json_response,
    last_user_text,
    require,
    sse,
    stream_response,
    texts,
)

__all__ = ("ANTHROPIC", "ANTHROPIC_ROUTES")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _error_payload(status: int, message: str, limit: str | None) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return {"type": "error", "error": {"type": kind, "message": message}}


def _rfc3339_in(seconds: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=math.ceil(seconds))
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _limit_headers(
    kind: str, limit: int, remaining: int, reset: float
) -> list[tuple[str, str]]:
    prefix = f"anthropic-ratelimit-{kind}"
    return [
        (f"{prefix}-limit", str(limit)),
        (f"{prefix}-remaining", str(remaining)),
        (f"{prefix}-reset", _rfc3339_in(reset)),
    ]


def plan_messages(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    require(body, "model", "messages", "max_tokens")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise BadRequest("messages: Input should be a valid list")
    limit = int_or_none(body.get("max_tokens"), "max_tokens")
    found = [
        text
        for message in messages
        if isinstance(message, Mapping)
        for text in texts(message.get("content"))
    ]
    found += texts(body.get("system"))
    prompt = sum(count_tokens(t) for t in found)
    tool = None
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools and not (isinstance(choice, Mapping) and choice.get("type") == "none"):
        try:
            tool = str(tools[0]["name"])
        except (LookupError, TypeError):
            raise BadRequest("tools.0.name: Field required") from None
    argument = argument_of(tools[0]) if tools and tool is not None else "input"
    reply = context.reply(last_user_text(messages), tool, limit, argument)
    cached = context.cached(prompt)

    def build() -> tuple[int, int, int, Callable[[], Response]]:
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
            lambda: _messages_response(context, body, reply, usage),
        )

    return prompt, build


def _messages_response(
    context: Context, body: Mapping[str, Any], reply: Reply, usage: dict[str, Any]
) -> Response:
    ident = context.new_id("msg_")
    tool_id = context.new_id("toolu_")
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
        return json_response(message)
    events: list[bytes] = []

    def emit(kind: str, **data: Any) -> None:
        events.append(sse({"type": kind, **data}, kind))

    start_usage = {**usage, "output_tokens": 1}
    emit(
        "message_start",
        message={**message, "content": [], "stop_reason": None, "usage": start_usage},
    )
    if reply.tool is not None:
        emit("content_block_start", index=0, content_block={**block, "input": {}})
        emit("ping")
        delta = {"type": "input_json_delta", "partial_json": reply.tool[1]}
        emit("content_block_delta", index=0, delta=delta)
    else:
        emit("content_block_start", index=0, content_block={"type": "text", "text": ""})
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
    return stream_response(events)


ANTHROPIC = Dialect(
    request_id_header="request-id",
    error_payload=_error_payload,
    limit_headers=_limit_headers,
)

ANTHROPIC_ROUTES: dict[str, tuple[Dialect, Plan]] = {
    "/v1/messages": (ANTHROPIC, plan_messages),
}
