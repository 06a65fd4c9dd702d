"""The fake OpenAI ``POST /v1/completions`` (legacy): JSON, and SSE chunks."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ._provider_api import (
    BadRequest,
    Build,
    Context,
    Reply,
    Response,
    count_tokens,
    int_or_none,
    json_response,
    require,
    sse,
    stream_response,
)

__all__ = ("plan_completions",)


def plan_completions(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    require(body, "model", "prompt")
    prompts = body["prompt"]
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be a string or an array of strings")
    prompt = sum(count_tokens(p) for p in prompts)
    limit = int_or_none(body.get("max_tokens"), "max_tokens")
    replies = [context.reply(p, None, limit) for p in prompts]
    cached = context.cached(prompt)

    def build() -> tuple[int, int, int, Callable[[], Response]]:
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
            lambda: _completions_response(context, body, replies, usage),
        )

    return prompt, build


def _completions_response(
    context: Context,
    body: Mapping[str, Any],
    replies: list[Reply],
    usage: dict[str, Any],
) -> Response:
    base = {
        "id": context.new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
    }

    def choice(i: int, text: str, end: str | None) -> Any:
        return {"index": i, "text": text, "logprobs": None, "finish_reason": end}

    def finish(reply: Reply) -> str:
        return "length" if reply.truncated else "stop"

    if not body.get("stream"):
        choices = [choice(i, r.text or "", finish(r)) for i, r in enumerate(replies)]
        return json_response({**base, "choices": choices, "usage": usage})
    events = [
        sse({**base, "choices": [choice(i, w, None)]})
        for i, r in enumerate(replies)
        for w in r.words()
    ]
    events += [
        sse({**base, "choices": [choice(i, "", finish(r))]})
        for i, r in enumerate(replies)
    ]
    options = body.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage"):
        events.append(sse({**base, "choices": [], "usage": usage}))
    events.append(sse("[DONE]"))
    return stream_response(events)
