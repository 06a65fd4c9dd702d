"""The fake OpenAI ``POST /v1/responses``: JSON, and SSE events."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._provider_api import (
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

__all__ = ("plan_responses",)


def plan_responses(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    require(body, "model")
    items = body.get("input", "")
    if isinstance(items, list):
        found = [
            text for item in items if isinstance(item, Mapping) for text in texts(item)
        ]
    else:
        found = list(texts(items))
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        found.append(instructions)
    prompt = sum(count_tokens(t) for t in found)
    limit = int_or_none(body.get("max_output_tokens"), "max_output_tokens")
    tool, argument = None, "input"
    if body.get("tool_choice") != "none":
        for spec in body.get("tools") or ():
            if isinstance(spec, Mapping) and spec.get("type") == "function":
                tool, argument = str(spec.get("name")), argument_of(spec)
                break
    reply = context.reply(last_user_text(items), tool, limit, argument)
    cached = context.cached(prompt)

    def build() -> tuple[int, int, int, Callable[[], Response]]:
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
            lambda: _responses_response(context, body, reply, usage),
        )

    return prompt, build


def _responses_response(
    context: Context, body: Mapping[str, Any], reply: Reply, usage: dict[str, Any]
) -> Response:
    ident = context.new_id("resp_")
    item_id = context.new_id("msg_" if reply.tool is None else "fc_")
    call_id = context.new_id("call_")
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
        return json_response(response(status, [final_item], True))
    seq = itertools.count()
    events: list[bytes] = []

    def emit(kind: str, **data: Any) -> None:
        events.append(sse({"type": kind, "sequence_number": next(seq), **data}, kind))

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
        emit("response.content_part.done", **where, content_index=0, part=part(text))
    emit("response.output_item.done", output_index=0, item=final_item)
    emit(f"response.{status}", response=response(status, [final_item], True))
    return stream_response(events)
