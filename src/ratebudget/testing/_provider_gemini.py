"""The fake provider's Gemini family: ``POST .../models/{model}:generateContent``
and ``...:streamGenerateContent``, errors.

The model is named in the path, under any prefix (the Gemini API's
``/v1beta/models/...``, Vertex AI's ``.../publishers/google/models/...``).
A stream is SSE with ``?alt=sse`` (as ``google-genai`` asks), else one JSON
array of the chunks. Every chunk carries ``usageMetadata`` so far (the prompt
only, until the last, which has the ``finishReason`` and every count), as
Gemini does. Errors are ``{"error": {"code", "message", "status"}}``, and a
429's delay is a ``google.rpc.RetryInfo`` in its ``details`` (no
``Retry-After``); Gemini sends no rate-limit headers, so neither does this.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
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
    sse,
    stream_response,
)

__all__ = ("GEMINI", "GEMINI_METHODS", "path_fields")

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _error_payload(status: int, message: str, limit: str | None) -> dict[str, Any]:
    name = _STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    return {"error": {"code": status, "message": message, "status": name}}


def _retry_info(payload: dict[str, Any], seconds: float) -> None:
    """Gemini says when to retry in the error's details (``google.rpc.RetryInfo``)."""
    payload["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": f"{math.ceil(seconds)}s",
        }
    ]


def _no_limit_headers(
    kind: str, limit: int, remaining: int, reset: float
) -> list[tuple[str, str]]:
    return []


_METHODS = (
    "generateContent",
    "streamGenerateContent",
    "embedContent",
    "batchEmbedContents",
)


def path_fields(path: str, query: bytes = b"") -> dict[str, Any]:
    """What a Gemini path says of its call (``model``, ``stream``, ``alt``,
    ``method``), or ``{}`` for any other path."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    model, _, method = last.partition(":")
    if method not in _METHODS:
        return {}
    alt = "sse" if b"alt=sse" in query else "json"
    stream = method == "streamGenerateContent"
    return {"model": model, "stream": stream, "alt": alt, "method": method}


def _get(body: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = body.get(camel)
    return body.get(snake) if value is None else value


def _texts(content: Any) -> Iterator[str]:
    """The texts of a ``Content`` (its ``parts``), or of a list of them."""
    if isinstance(content, list):
        for item in content:
            yield from _texts(item)
    elif isinstance(content, Mapping):
        parts = content.get("parts")
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]


def _last_user_text(contents: list[Any]) -> str:
    for content in reversed(contents):
        if isinstance(content, Mapping) and content.get("role", "user") == "user":
            return " ".join(_texts(content))
    return ""


def _tool(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The tool to call (its name, and the argument it fills), if any."""
    tools = body.get("tools")
    if not tools:
        return None
    calling = _get(
        _get(body, "toolConfig", "tool_config") or {},
        "functionCallingConfig",
        "function_calling_config",
    )
    if isinstance(calling, Mapping) and calling.get("mode") == "NONE":
        return None
    try:
        declarations = _get(tools[0], "functionDeclarations", "function_declarations")
        return str(declarations[0]["name"]), argument_of(declarations[0])
    except (LookupError, TypeError):
        raise BadRequest("tools[0].functionDeclarations[0].name is required") from None


def plan_generate(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    config = _get(body, "generationConfig", "generation_config") or {}
    if not isinstance(config, Mapping):
        raise BadRequest("generationConfig must be an object")
    limit = int_or_none(
        _get(config, "maxOutputTokens", "max_output_tokens"), "maxOutputTokens"
    )
    n = int_or_none(_get(config, "candidateCount", "candidate_count"), "candidateCount")
    n = n or 1
    system = _get(body, "systemInstruction", "system_instruction")
    prompt = sum(count_tokens(t) for t in [*_texts(contents), *_texts(system)])
    tool = _tool(body)
    reply = context.reply(
        _last_user_text(contents),
        None if tool is None else tool[0],
        limit,
        "input" if tool is None else tool[1],
    )
    cached = context.cached(prompt)

    def build() -> tuple[int, int, int, Callable[[], Response]]:
        visible, thoughts = n * reply.visible_tokens, n * reply.reasoning_tokens
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": visible,
            "totalTokenCount": prompt + visible + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        }
        if cached:  # Gemini leaves out the counts that are 0
            usage["cachedContentTokenCount"] = cached
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return (
            visible + thoughts,
            cached,
            thoughts,
            lambda: _response(context, body, reply, n, prompt, usage),
        )

    return prompt, build


def _parts(reply: Reply, text: str | None) -> list[dict[str, Any]]:
    if reply.tool is not None:
        name, arguments = reply.tool
        return [{"functionCall": {"name": name, "args": json.loads(arguments)}}]
    return [{"text": text if text is not None else reply.text or ""}]


def _response(
    context: Context,
    body: Mapping[str, Any],
    reply: Reply,
    n: int,
    prompt: int,
    usage: dict[str, Any],
) -> Response:
    ident = context.new_id("resp-")
    finish = "MAX_TOKENS" if reply.truncated else "STOP"

    def chunk(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
        candidates = []
        for i in range(n):
            candidate: dict[str, Any] = {
                "content": {"parts": parts, "role": "model"},
                "index": i,
            }
            if last:
                candidate["finishReason"] = finish
            candidates.append(candidate)
        so_far = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        return {
            "candidates": candidates,
            "usageMetadata": usage if last else so_far,
            "modelVersion": body["model"],
            "responseId": ident,
        }

    if not body.get("stream"):
        return json_response(chunk(_parts(reply, None), True))
    words = reply.words() if reply.tool is None else [""]
    words = words or [""]
    chunks = [
        chunk(_parts(reply, word), i == len(words) - 1) for i, word in enumerate(words)
    ]
    if body.get("alt") != "sse":  # a JSON array of the chunks
        return json_response(chunks)
    return stream_response([sse(c) for c in chunks])


GEMINI = Dialect(
    request_id_header="x-request-id",
    error_payload=_error_payload,
    limit_headers=_no_limit_headers,
    retry_info=_retry_info,
)


def plan_embed(context: Context, body: dict[str, Any]) -> tuple[int, Build]:
    """``:embedContent`` (one ``content``) and ``:batchEmbedContents``
    (``requests``, each with its ``content``): a vector per content, of
    ``outputDimensionality`` numbers (3 by default); no usage reported, as
    Gemini reports none."""
    batch = body.get("method") == "batchEmbedContents"
    asks = body.get("requests") if batch else [body]
    if not isinstance(asks, list) or not asks:
        raise BadRequest("* BatchEmbedContentsRequest.requests: requests is empty")
    texts: list[str] = []
    for ask in asks:
        if not isinstance(ask, Mapping) or not isinstance(ask.get("content"), Mapping):
            raise BadRequest("* EmbedContentRequest.content: content is not specified")
        texts.append(" ".join(_texts(ask["content"])))
    size = int_or_none(
        _get(asks[0], "outputDimensionality", "output_dimensionality"),
        "outputDimensionality",
    )
    prompt = sum(count_tokens(t) for t in texts)

    def vector(text: str) -> dict[str, Any]:
        seed = [len(text) / 100, count_tokens(text) / 10, 0.5]
        return {"values": [seed[i % 3] for i in range(size or 3)]}

    def build() -> tuple[int, int, int, Callable[[], Response]]:
        if batch:
            payload: dict[str, Any] = {"embeddings": [vector(t) for t in texts]}
        else:
            payload = {"embedding": vector(texts[0])}
        return 0, 0, 0, lambda: json_response(payload)

    return prompt, build


GEMINI_METHODS: dict[str, tuple[Dialect, Plan]] = {
    "generateContent": (GEMINI, plan_generate),
    "streamGenerateContent": (GEMINI, plan_generate),
    "embedContent": (GEMINI, plan_embed),
    "batchEmbedContents": (GEMINI, plan_embed),
}
