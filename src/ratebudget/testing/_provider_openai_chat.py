"""The fake OpenAI ``POST /v1/chat/completions``: JSON, and SSE chunks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._provider_api import (
    BadRequest,
    Build,
    Context,
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

__all__ = ("plan_chat",)


def plan_chat(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    require(body, "model", "messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array")
    prompt = sum(
        count_tokens(text)
        for message in messages
        if isinstance(message, Mapping)
        for text in texts(message.get("content"))
    )
    limit = int_or_none(body.get("max_completion_tokens"), "max_completion_tokens")
    if limit is None:
        limit = int_or_none(body.get("max_tokens"), "max_tokens")
    n = int_or_none(body.get("n"), "n") or 1
    tool = None
    tools = body.get("tools")
    if tools and body.get("tool_choice") != "none":
        try:
            tool = str(tools[0]["function"]["name"])
        except (LookupError, TypeError):
            raise BadRequest("tools[0].function.name is required") from None
    argument = argument_of(tools[0]) if tools and tool is not None else "input"
    reply = context.reply(last_user_text(messages), tool, limit, argument)
    cached = context.cached(prompt)

    def build() -> tuple[int, int, int, Callable[[], Response]]:
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
            lambda: _chat_response(context, body, reply, n, usage),
        )

    return prompt, build


def _chat_response(
    context: Context,
    body: Mapping[str, Any],
    reply: Reply,
    n: int,
    usage: dict[str, Any],
) -> Response:
    ident = context.new_id("chatcmpl-")
    created = int(time.time())
    model = body["model"]
    call_id = context.new_id("call_")
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
        return json_response(
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
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))

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
        return sse(data)

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
                "tool_calls": [{"index": 0, "function": {"arguments": reply.tool[1]}}]
            }
            events.append(chunk([choice(i, delta)]))
        events.extend(chunk([choice(i, {"content": w})]) for w in reply.words())
        events.append(chunk([choice(i, {}, finish)]))
    if include_usage:
        last = json.loads(chunk([])[len(b"data: ") :])
        last["usage"] = usage
        events.append(sse(last))
    events.append(sse("[DONE]"))
    return stream_response(events)
