"""Reading LLM requests and responses: classify, estimate, JSON and SSE usage.

The bodies below follow the providers' documented shapes, and each one is
checked against the official SDK's models (``model_validate``), so a typo in
a fixture fails here rather than passing silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ratebudget import InvalidRequest
from ratebudget.integrations.usage import (
    DEFAULT_MAX_OUTPUT,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    Endpoint,
    Estimate,
    StreamUsage,
    Usage,
    azure_deployment,
    classify,
    estimate,
    is_free,
    usage_from_json,
)

# --- real response bodies ------------------------------------------------

CHAT_JSON: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "o3-mini-2025-01-31",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 256,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_44709d6fcb",
}

COMPLETION_JSON: dict[str, Any] = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {
            "text": "\n\nThis is indeed a test",
            "index": 0,
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

EMBEDDINGS_JSON: dict[str, Any] = {
    "object": "list",
    "data": [
        {"object": "embedding", "embedding": [0.0023064255, -0.009327292], "index": 0}
    ],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}

RESPONSES_JSON: dict[str, Any] = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
    "object": "response",
    "created_at": 1741476777,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "gpt-4o-2024-08-06",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "The image depicts a scenic landscape.",
                    "annotations": [],
                }
            ],
        }
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 128, "cache_write_tokens": 0},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 10},
        "total_tokens": 380,
    },
    "user": None,
    "metadata": {},
}

ANTHROPIC_JSON: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-5-sonnet-20241022",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 3000,
        "output_tokens": 393,
    },
}


def sse(events: list[tuple[str | None, Any]]) -> bytes:
    """A server-sent events body: ``event:`` line (if any), ``data:``, blank."""
    out: list[str] = []
    for name, data in events:
        if name is not None:
            out.append(f"event: {name}\n")
        text = data if isinstance(data, str) else json.dumps(data)
        out.append(f"data: {text}\n\n")
    return "".join(out).encode()


def chat_chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
    }


CHAT_CHUNKS: list[dict[str, Any]] = [
    chat_chunk({"role": "assistant", "content": "", "refusal": None}),
    chat_chunk({"content": "Héllo"}),
    chat_chunk({"content": " wörld 🌍"}),
    chat_chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":'},
                }
            ]
        }
    ),
    chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chat_chunk({}, finish="stop"),
    chat_chunk(
        None,
        usage={
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    ),
]
CHAT_TEXT = "Héllo" + " wörld 🌍" + '{"city":' + '"Paris"}'
CHAT_STREAM = sse([(None, c) for c in CHAT_CHUNKS] + [(None, "[DONE]")])

_RESPONSE_BASE = {k: v for k, v in RESPONSES_JSON.items() if k != "usage"}
RESPONSES_EVENTS: list[dict[str, Any]] = [
    {
        "type": "response.created",
        "sequence_number": 0,
        "response": {
            **_RESPONSE_BASE,
            "status": "in_progress",
            "output": [],
            "usage": None,
        },
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_67c",
        "output_index": 0,
        "content_index": 0,
        "delta": "The image",
        "logprobs": [],
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 5,
        "item_id": "msg_67c",
        "output_index": 0,
        "content_index": 0,
        "delta": " depicts…",
        "logprobs": [],
    },
    {
        "type": "response.output_text.done",
        "sequence_number": 6,
        "item_id": "msg_67c",
        "output_index": 0,
        "content_index": 0,
        "text": "The image depicts…",
        "logprobs": [],
    },
    {"type": "response.completed", "sequence_number": 7, "response": RESPONSES_JSON},
]
RESPONSES_STREAM = sse([(e["type"], e) for e in RESPONSES_EVENTS])

ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-3-5-sonnet-20241022",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 2048,
                "output_tokens": 1,
            },
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    },
    {"type": "ping"},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hello"},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "!"},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
]
ANTHROPIC_STREAM = sse([(e["type"], e) for e in ANTHROPIC_EVENTS])

STREAMS: dict[Endpoint, tuple[bytes, Usage, int, str]] = {
    Endpoint.OPENAI_CHAT: (
        CHAT_STREAM,
        Usage(1117, 46, cached_input_tokens=1024),
        len(CHAT_TEXT),
        "gpt-4o-mini-2024-07-18",
    ),
    Endpoint.OPENAI_RESPONSES: (
        RESPONSES_STREAM,
        Usage(328, 52, cached_input_tokens=128, reasoning_tokens=10),
        len("The image depicts…"),
        "gpt-4o-2024-08-06",
    ),
    Endpoint.ANTHROPIC_MESSAGES: (
        ANTHROPIC_STREAM,
        Usage(25 + 2048, 15, cached_input_tokens=2048),
        len("Hello!"),
        "claude-3-5-sonnet-20241022",
    ),
}


# --- the fixtures are what the providers send ------------------------------


def test_json_bodies_are_valid_sdk_objects() -> None:
    ChatCompletion.model_validate(CHAT_JSON)
    Completion.model_validate(COMPLETION_JSON)
    CreateEmbeddingResponse.model_validate(EMBEDDINGS_JSON)
    Response.model_validate(RESPONSES_JSON)
    Message.model_validate(ANTHROPIC_JSON)


def test_stream_events_are_valid_sdk_objects() -> None:
    for chunk in CHAT_CHUNKS:
        ChatCompletionChunk.model_validate(chunk)
    responses = TypeAdapter(ResponseStreamEvent)
    for event in RESPONSES_EVENTS:
        responses.validate_python(event)
    anthropic = TypeAdapter(RawMessageStreamEvent)
    for event in ANTHROPIC_EVENTS:
        if event["type"] != "ping":  # the SDK drops pings before parsing
            anthropic.validate_python(event)


def test_sdk_reads_the_same_usage() -> None:
    """Cross-check our mapping against the SDKs' own parsed fields."""
    chat = ChatCompletion.model_validate(CHAT_JSON).usage
    assert chat is not None
    assert chat.prompt_tokens_details is not None
    assert chat.completion_tokens_details is not None
    assert usage_from_json(Endpoint.OPENAI_CHAT, CHAT_JSON) == Usage(
        chat.prompt_tokens,
        chat.completion_tokens,
        cached_input_tokens=chat.prompt_tokens_details.cached_tokens or 0,
        reasoning_tokens=chat.completion_tokens_details.reasoning_tokens or 0,
    )
    resp = Response.model_validate(RESPONSES_JSON).usage
    assert resp is not None
    assert usage_from_json(Endpoint.OPENAI_RESPONSES, RESPONSES_JSON) == Usage(
        resp.input_tokens,
        resp.output_tokens,
        cached_input_tokens=resp.input_tokens_details.cached_tokens,
        cache_write_tokens=resp.input_tokens_details.cache_write_tokens,
        reasoning_tokens=resp.output_tokens_details.reasoning_tokens,
    )
    msg = Message.model_validate(ANTHROPIC_JSON).usage
    read = msg.cache_read_input_tokens or 0
    write = msg.cache_creation_input_tokens or 0
    assert usage_from_json(Endpoint.ANTHROPIC_MESSAGES, ANTHROPIC_JSON) == Usage(
        msg.input_tokens + read + write, msg.output_tokens, read, write
    )


# --- Usage ------------------------------------------------------------------


def test_usage_json_per_provider() -> None:
    assert usage_from_json("openai.chat", CHAT_JSON) == Usage(
        2006, 300, cached_input_tokens=1920, reasoning_tokens=256
    )
    assert usage_from_json("openai.completions", COMPLETION_JSON) == Usage(5, 7)
    assert usage_from_json("openai.embeddings", EMBEDDINGS_JSON) == Usage(8, 0)
    assert usage_from_json("openai.responses", RESPONSES_JSON) == Usage(
        328, 52, cached_input_tokens=128, reasoning_tokens=10
    )
    # Anthropic's input_tokens exclude the cache: Usage adds them back
    anthropic = usage_from_json("anthropic.messages", ANTHROPIC_JSON)
    assert anthropic == Usage(
        4021, 393, cached_input_tokens=3000, cache_write_tokens=1000
    )
    assert anthropic.total_tokens == 4414


def test_openai_cache_writes() -> None:
    """Recent OpenAI responses report cache writes, inside the prompt total."""
    chat = {
        **CHAT_JSON,
        "usage": {
            **CHAT_JSON["usage"],
            "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 900},
        },
    }
    ChatCompletion.model_validate(chat)
    assert usage_from_json("openai.chat", chat) == Usage(
        2006,
        300,
        cached_input_tokens=1000,
        cache_write_tokens=900,
        reasoning_tokens=256,
    )
    resp = {
        **RESPONSES_JSON,
        "usage": {
            **RESPONSES_JSON["usage"],
            "input_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": 300,
                "cache_write_tokens_details": {
                    "ttl_12h_tokens": 0,
                    "ttl_30m_tokens": 300,
                },
            },
        },
    }
    Response.model_validate(resp)
    assert usage_from_json("openai.responses", resp) == Usage(
        328, 52, cache_write_tokens=300, reasoning_tokens=10
    )


def test_anthropic_thinking_tokens() -> None:
    body = dict(ANTHROPIC_JSON)
    body["usage"] = {
        "input_tokens": 10,
        "output_tokens": 500,
        "output_tokens_details": {"thinking_tokens": 420},
    }
    assert usage_from_json("anthropic.messages", body) == Usage(
        10, 500, reasoning_tokens=420
    )


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("openai.chat", {}),
        ("openai.chat", {"usage": None}),
        ("openai.chat", {"usage": "12"}),
        ("openai.chat", {"usage": {}}),
        ("openai.chat", {"usage": {"prompt_tokens": None, "completion_tokens": "x"}}),
        ("openai.embeddings", {"usage": {"total_tokens": 3}}),
        ("openai.responses", {"usage": []}),
        (
            "anthropic.messages",
            {"type": "error", "error": {"type": "overloaded_error"}},
        ),
    ],
)
def test_no_usage_is_none(endpoint: str, body: dict[str, Any]) -> None:
    assert usage_from_json(endpoint, body) is None


def test_odd_json_never_raises() -> None:
    odd = {
        "usage": {
            "prompt_tokens": -5,
            "completion_tokens": 10.0,
            "prompt_tokens_details": {"cached_tokens": 99},  # more than the total
            "completion_tokens_details": {"reasoning_tokens": True},
        }
    }
    assert usage_from_json("openai.chat", odd) == Usage(0, 10)
    over = {
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 80},
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    }
    assert usage_from_json("openai.chat", over) == Usage(
        50, 5, cached_input_tokens=50, reasoning_tokens=5
    )
    partial = {"usage": {"prompt_tokens_details": None, "prompt_tokens": 7}}
    assert usage_from_json("openai.chat", partial) == Usage(7, 0)


@pytest.mark.parametrize("body", [None, [], "usage", 3])
def test_non_mapping_body_is_our_bug(body: Any) -> None:
    with pytest.raises(InvalidRequest, match="mapping"):
        usage_from_json("openai.chat", body)
    with pytest.raises(InvalidRequest, match="mapping"):
        estimate("openai.chat", body)


def test_unknown_endpoint_raises() -> None:
    with pytest.raises(InvalidRequest, match="unknown endpoint"):
        usage_from_json("openai.audio", {})
    with pytest.raises(InvalidRequest, match="unknown endpoint"):
        StreamUsage("gemini")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_tokens": -1, "output_tokens": 0},
        {"input_tokens": 1.0, "output_tokens": 0},
        {"input_tokens": True, "output_tokens": 0},
        {
            "input_tokens": 10,
            "output_tokens": 0,
            "cached_input_tokens": 8,
            "cache_write_tokens": 3,
        },
        {"input_tokens": 10, "output_tokens": 2, "reasoning_tokens": 3},
    ],
)
def test_inconsistent_usage_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        Usage(**kwargs)


def test_usage_is_frozen_and_totals() -> None:
    usage = Usage(100, 20, cached_input_tokens=60, reasoning_tokens=5)
    assert usage.total_tokens == 120
    with pytest.raises(AttributeError):
        usage.input_tokens = 3  # type: ignore[misc]


# --- classify -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "base", "expected"),
    [
        ("POST", "/v1/chat/completions", "", Endpoint.OPENAI_CHAT),
        ("post", "/v1/chat/completions/", "", Endpoint.OPENAI_CHAT),
        ("POST", "/v1/responses", "", Endpoint.OPENAI_RESPONSES),
        ("POST", "/v1/completions", "", Endpoint.OPENAI_COMPLETIONS),
        ("POST", "/v1/embeddings", "", Endpoint.OPENAI_EMBEDDINGS),
        ("POST", "/v1/messages", "", Endpoint.ANTHROPIC_MESSAGES),
        ("POST", "/v1/messages?beta=true", "", Endpoint.ANTHROPIC_MESSAGES),
        ("POST", "//v1//messages", "", Endpoint.ANTHROPIC_MESSAGES),
        ("POST", "/openai/v1/chat/completions", "/openai/v1", Endpoint.OPENAI_CHAT),
        ("POST", "/openai/v1/chat/completions", "/openai/v1/", Endpoint.OPENAI_CHAT),
        ("POST", "/openai/v1/chat/completions", "/openai", Endpoint.OPENAI_CHAT),
        ("POST", "/api/embeddings", "/api", Endpoint.OPENAI_EMBEDDINGS),
        ("POST", "/api/embeddings", "api", Endpoint.OPENAI_EMBEDDINGS),
        # by its shape, wherever the base path puts it
        ("POST", "/openai/v1/chat/completions", "", Endpoint.OPENAI_CHAT),
        ("POST", "/api/v1/chat/completions", "", Endpoint.OPENAI_CHAT),  # OpenRouter
        ("POST", "/v1beta/openai/chat/completions", "", Endpoint.OPENAI_CHAT),  # Gemini
        (
            "POST",
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
            "",
            Endpoint.OPENAI_CHAT,
        ),  # Azure OpenAI
        ("POST", "/openai/deployments/emb/embeddings", "", Endpoint.OPENAI_EMBEDDINGS),
        ("POST", "/serving/llama/v1/completions", "", Endpoint.OPENAI_COMPLETIONS),
        ("POST", "/v2/chat/completions", "", Endpoint.OPENAI_CHAT),
        ("POST", "/anthropic/v1/messages", "", Endpoint.ANTHROPIC_MESSAGES),
        # not a model call this recognises
        ("GET", "/v1/chat/completions", "", None),
        ("POST", "/v1/chat/completions/abc/messages/x", "", None),
        ("GET", "/v1/responses/resp_123", "", None),
        ("POST", "/v1/responses/resp_123/cancel", "", None),
        ("POST", "/v1/messages/count_tokens", "", None),
        ("POST", "/v1/messages/batches", "", None),
        ("POST", "/v1/threads/thread_1/messages", "", None),
        ("POST", "/v1/files", "", None),
        ("POST", "/v1/audio/transcriptions", "", None),
        ("POST", "/v1/chat/completions", "/openai/v1", None),
        ("POST", "/openaiX/v1/chat/completions", "/openai", None),
        ("POST", "/v1/chat/completionsX", "", None),
        ("POST", "", "", None),
    ],
)
def test_classify(method: str, path: str, base: str, expected: Endpoint | None) -> None:
    assert classify(method, path, base) is expected


@pytest.mark.parametrize(
    ("method", "path", "free"),
    [
        ("GET", "/v1/models", True),
        ("POST", "/v1/messages/count_tokens", True),
        ("POST", "/v1/responses/input_tokens", True),
        ("POST", "/v1/responses/resp_1/cancel", True),
        ("POST", "/v1/batches/batch_1/cancel", True),
        ("POST", "/v1/moderations", True),
        ("POST", "/v1/files", True),
        ("POST", "/v1/uploads/up_1/parts", True),
        ("POST", "/v1beta/models/gemini-2.5-flash:countTokens", True),
        ("POST", "/v1/images/generations", False),
        ("POST", "/v1/audio/transcriptions", False),
        ("POST", "/v1/messages/batches", False),
        ("POST", "/v1/chat/completions", False),
    ],
)
def test_is_free(method: str, path: str, free: bool) -> None:
    assert is_free(method, path) is free


@pytest.mark.parametrize(
    ("path", "deployment"),
    [
        ("/openai/deployments/gpt4o-prod/chat/completions", "gpt4o-prod"),
        ("//openai/deployments/d1/embeddings/", "d1"),
        ("/openai/v1/chat/completions", None),
        ("/v1/deployments/x/chat/completions", None),
        ("/openai/deployments", None),
    ],
)
def test_azure_deployment(path: str, deployment: str | None) -> None:
    assert azure_deployment(path) == deployment


def test_endpoint_is_its_string() -> None:
    assert Endpoint("openai.chat") is Endpoint.OPENAI_CHAT
    assert isinstance(Endpoint.ANTHROPIC_MESSAGES, str)
    assert json.dumps(Endpoint.ANTHROPIC_MESSAGES) == '"anthropic.messages"'
    assert str(Endpoint.OPENAI_RESPONSES) == "openai.responses"


# --- estimate -----------------------------------------------------------


def heuristic(*texts: str) -> int:
    return math.ceil(sum(len(t) for t in texts) / 4)


def test_estimate_chat_counts_every_text() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                },
            },
        }
    ]
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + "A" * 100_000},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city":"Paris"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
        ],
        "tools": tools,
        "max_completion_tokens": 500,
        "n": 3,
        "stream": True,
    }
    est = estimate("openai.chat", body)
    texts = [
        "Be brief.",
        "What is in this image?",
        "get_weather",
        '{"city":"Paris"}',
        "Sunny",
        json.dumps(tools, ensure_ascii=False),
    ]
    assert est == Estimate(
        model="gpt-4o",
        input_tokens=heuristic(*texts) + IMAGE_TOKENS + 4 * MESSAGE_OVERHEAD,
        max_output_tokens=500,
        n=3,
        stream=True,
    )
    assert est.max_total_tokens == est.input_tokens + 1500
    # the same texts, counted by a tokenizer (here: one token per word)
    words = estimate("openai.chat", body, count_tokens=lambda s: len(s.split()))
    assert words.input_tokens == (
        sum(len(t.split()) for t in texts) + IMAGE_TOKENS + 4 * MESSAGE_OVERHEAD
    )


def test_heuristic_bounds() -> None:
    """ceil(chars / 4) plus the overhead, for any text length."""
    for length in range(50):
        text = "x" * length
        est = estimate("openai.chat", {"messages": [{"role": "user", "content": text}]})
        assert est.input_tokens == -(-length // 4) + MESSAGE_OVERHEAD
        assert length / 4 + MESSAGE_OVERHEAD <= est.input_tokens
        assert est.input_tokens < length / 4 + MESSAGE_OVERHEAD + 1


@pytest.mark.parametrize(
    ("endpoint", "body", "max_output", "n"),
    [
        ("openai.chat", {"max_tokens": 100}, 100, 1),
        ("openai.chat", {"max_completion_tokens": 200}, 200, 1),
        ("openai.chat", {"max_tokens": 100, "max_completion_tokens": 200}, 200, 1),
        ("openai.chat", {"max_tokens": None, "n": 2}, DEFAULT_MAX_OUTPUT, 2),
        ("openai.chat", {"max_tokens": "many", "n": 0}, DEFAULT_MAX_OUTPUT, 1),
        ("openai.chat", {"max_tokens": True, "n": None}, DEFAULT_MAX_OUTPUT, 1),
        ("openai.responses", {"max_output_tokens": 300}, 300, 1),
        ("openai.responses", {"max_tokens": 300, "n": 4}, DEFAULT_MAX_OUTPUT, 1),
        ("openai.completions", {"max_tokens": 16, "n": 2}, 16, 2),
        ("openai.completions", {"max_tokens": 16, "n": 2, "best_of": 5}, 16, 5),
        ("openai.embeddings", {"max_tokens": 16, "n": 2}, 0, 1),
        ("anthropic.messages", {"max_tokens": 1024}, 1024, 1),
        ("anthropic.messages", {"max_tokens": 1024, "n": 3}, 1024, 1),
        ("anthropic.messages", {}, DEFAULT_MAX_OUTPUT, 1),
    ],
)
def test_estimate_max_output(
    endpoint: str, body: dict[str, Any], max_output: int, n: int
) -> None:
    est = estimate(endpoint, body)
    assert (est.max_output_tokens, est.n) == (max_output, n)
    assert est.stream is False
    assert est.model is None


def test_default_max_output_is_configurable() -> None:
    assert estimate("openai.chat", {}, default_max_output=64).max_output_tokens == 64
    assert (
        estimate(
            "openai.chat", {"max_tokens": 8}, default_max_output=64
        ).max_output_tokens
        == 8
    )
    with pytest.raises(InvalidRequest):
        estimate("openai.chat", {}, default_max_output=-1)


def test_estimate_responses() -> None:
    body = {
        "model": "gpt-4.1",
        "instructions": "Talk like a pirate.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]},
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
            },
            {
                "type": "function_call_output",
                "call_id": "call_9",
                "output": "42 degrees",
            },
        ],
        "max_output_tokens": 64,
    }
    est = estimate(Endpoint.OPENAI_RESPONSES, body)
    assert est.input_tokens == (
        heuristic("Talk like a pirate.", "Hi there", "42 degrees")
        + IMAGE_TOKENS
        + 3 * MESSAGE_OVERHEAD
    )
    assert estimate("openai.responses", {"input": "Hello!!"}).input_tokens == 2


def test_estimate_anthropic() -> None:
    body = {
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 1024,
        "system": [
            {
                "type": "text",
                "text": "You are a poet.",
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "messages": [
            {"role": "user", "content": "Write a haiku"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "Hmm, seasons",
                        "signature": "EqQBCg" * 50,
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "rhyme",
                        "input": {"word": "moon"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01",
                        "content": "June",
                    },
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBOR" * 1000,
                        },
                    },
                ],
            },
        ],
        "stream": True,
    }
    est = estimate("anthropic.messages", body)
    texts = [
        "You are a poet.",
        "Write a haiku",
        "Hmm, seasons",
        "rhyme",
        "moon",
        "June",
    ]
    assert est == Estimate(
        "claude-3-5-sonnet-latest",
        heuristic(*texts) + IMAGE_TOKENS + 3 * MESSAGE_OVERHEAD,
        1024,
        1,
        True,
    )


def test_estimate_prompts_and_token_ids() -> None:
    assert (
        estimate("openai.completions", {"prompt": "Say this is a test"}).input_tokens
        == 5
    )
    assert (
        estimate("openai.completions", {"prompt": ["abcd", "efgh"]}).input_tokens == 2
    )
    assert estimate("openai.completions", {"prompt": [1, 2, 3]}).input_tokens == 3
    assert (
        estimate("openai.embeddings", {"input": [[1, 2], [3, 4, 5]]}).input_tokens == 5
    )
    emb = estimate(
        "openai.embeddings", {"input": "The food was delicious", "model": "m"}
    )
    assert emb == Estimate("m", 6, 0, 1, False)
    assert emb.max_total_tokens == 6


def test_count_tokens_must_return_a_count() -> None:
    body = {"prompt": "hi"}
    with pytest.raises(InvalidRequest, match="count_tokens"):
        estimate("openai.completions", body, count_tokens=lambda s: -1)
    with pytest.raises(InvalidRequest, match="count_tokens"):
        estimate("openai.completions", body, count_tokens=lambda s: 1.5)  # type: ignore[arg-type,return-value]


# --- streams ----------------------------------------------------------------


def read(endpoint: Endpoint, chunks: list[bytes]) -> StreamUsage:
    meter = StreamUsage(endpoint)
    for chunk in chunks:
        meter.feed(chunk)
    return meter


@pytest.mark.parametrize("endpoint", list(STREAMS))
def test_stream_usage(endpoint: Endpoint) -> None:
    body, usage, chars, model = STREAMS[endpoint]
    meter = read(endpoint, [body])
    assert meter.usage == usage
    assert meter.text_chars == chars
    assert meter.model == model
    assert meter.finished
    assert meter.usage_final


@pytest.mark.parametrize("endpoint", list(STREAMS))
def test_stream_split_at_every_byte(endpoint: Endpoint) -> None:
    body, usage, chars, model = STREAMS[endpoint]
    one_by_one = read(endpoint, [body[i : i + 1] for i in range(len(body))])
    assert (one_by_one.usage, one_by_one.text_chars, one_by_one.model) == (
        usage,
        chars,
        model,
    )
    for cut in range(len(body) + 1):
        meter = read(endpoint, [body[:cut], b"", body[cut:]])
        assert (meter.usage, meter.text_chars, meter.finished) == (
            usage,
            chars,
            True,
        ), cut


@pytest.mark.parametrize("endpoint", list(STREAMS))
@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_stream_any_split_and_line_ending(
    endpoint: Endpoint, newline: bytes, cuts: list[int]
) -> None:
    body, usage, chars, _ = STREAMS[endpoint]
    body = body.replace(b"\n", newline)
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [
        body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)
    ]
    meter = read(endpoint, chunks)
    assert (meter.usage, meter.text_chars) == (usage, chars)


def test_stream_truncated_before_usage() -> None:
    """A stream cut short: no usage yet, but the output seen is counted."""
    body = CHAT_STREAM
    cut = body.index(b'"choices": []')  # the usage chunk, half sent
    meter = read(Endpoint.OPENAI_CHAT, [body[:cut]])
    assert meter.usage is None
    assert meter.text_chars == len(CHAT_TEXT)
    assert not meter.finished
    # a data line without its blank line is not an event yet
    whole_line = body.index(b"\n\n", cut)
    assert read(Endpoint.OPENAI_CHAT, [body[: whole_line + 1]]).usage is None
    assert read(Endpoint.OPENAI_CHAT, [body[: whole_line + 2]]).usage is not None


def test_chat_stream_without_include_usage() -> None:
    body = sse([(None, c) for c in CHAT_CHUNKS[:-1]] + [(None, "[DONE]")])
    meter = read(Endpoint.OPENAI_CHAT, [body])
    assert meter.usage is None
    assert meter.finished
    assert meter.text_chars == len(CHAT_TEXT)


def test_anthropic_stream_reports_input_first() -> None:
    body = ANTHROPIC_STREAM
    cut = body.index(b"event: content_block_start")
    meter = read(Endpoint.ANTHROPIC_MESSAGES, [body[:cut]])
    assert meter.usage == Usage(2073, 1, cached_input_tokens=2048)
    assert not meter.finished


def test_anthropic_message_delta_may_update_input() -> None:
    """Newer API versions repeat cumulative input and cache counts in message_delta."""
    events: list[tuple[str | None, Any]] = [
        (e["type"], e) for e in ANTHROPIC_EVENTS if e["type"] != "message_delta"
    ]
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 30,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": 2048,
            "output_tokens": 87,
            "output_tokens_details": {"thinking_tokens": 40},
        },
    }
    TypeAdapter(RawMessageStreamEvent).validate_python(delta)
    events.insert(-1, ("message_delta", delta))
    meter = read(Endpoint.ANTHROPIC_MESSAGES, [sse(events)])
    assert meter.usage == Usage(2078, 87, cached_input_tokens=2048, reasoning_tokens=40)


def test_anthropic_thinking_and_tool_json_count_as_output() -> None:
    events: list[tuple[str | None, Any]] = [
        ("message_start", ANTHROPIC_EVENTS[0]),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Let me see"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"loc'},
            },
        ),
    ]
    for _, event in events:
        TypeAdapter(RawMessageStreamEvent).validate_python(event)
    assert (
        read(Endpoint.ANTHROPIC_MESSAGES, [sse(events)]).text_chars
        == len("Let me see") + 5
    )


def test_responses_incomplete_reports_usage() -> None:
    response = {
        **RESPONSES_JSON,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    event = {"type": "response.incomplete", "sequence_number": 9, "response": response}
    TypeAdapter(ResponseStreamEvent).validate_python(event)
    meter = read(Endpoint.OPENAI_RESPONSES, [sse([("response.incomplete", event)])])
    assert meter.usage == Usage(328, 52, cached_input_tokens=128, reasoning_tokens=10)
    assert meter.finished


def test_legacy_completions_stream() -> None:
    chunks: list[dict[str, Any]] = [
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [
                {"text": "Hello", "index": 0, "logprobs": None, "finish_reason": None}
            ],
        },
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        },
    ]
    # (the SDK's Completion type wants a finish_reason, streams send null)
    Completion.model_validate(
        {**chunks[0], "choices": [{**chunks[0]["choices"][0], "finish_reason": "stop"}]}
    )
    Completion.model_validate(chunks[1])
    meter = read(
        Endpoint.OPENAI_COMPLETIONS,
        [sse([(None, c) for c in chunks] + [(None, "[DONE]")])],
    )
    assert (meter.usage, meter.text_chars, meter.finished) == (Usage(5, 1), 5, True)


def test_sse_syntax() -> None:
    """Comments, multi-line data, no space after the colon, a BOM, odd JSON."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    body = (
        b"\xef\xbb\xbf: keep-alive comment\n"
        b": another\n\n"
        b"data:not json\n\n"
        b"data: [1, 2]\n\n"
        b"data: null\n\n"
        b"retry: 1000\n"
        b"id: 7\n"
        b'data:{"choices": null,\n'
        b'data: "usage": ' + json.dumps(usage).encode() + b"}\n\n"
        b'data: {"choices": [{"delta": {"content": "\\u00e9t\\u00e9"}}], "usage": null}\n\n'
        b"data: [DONE]\n\n"
    )
    for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
        meter = read(Endpoint.OPENAI_CHAT, chunks)
        assert meter.usage == Usage(3, 2)  # a later null usage keeps it
        assert meter.text_chars == 3
        assert meter.finished


def test_stream_last_usage_wins() -> None:
    """Servers sending cumulative usage in every chunk: the last one counts."""
    body = sse(
        [
            (
                None,
                chat_chunk(
                    {"content": "a"},
                    usage={
                        "prompt_tokens": 9,
                        "completion_tokens": 1,
                        "total_tokens": 10,
                    },
                ),
            ),
            (
                None,
                chat_chunk(
                    {"content": "b"},
                    usage={
                        "prompt_tokens": 9,
                        "completion_tokens": 2,
                        "total_tokens": 11,
                    },
                ),
            ),
        ]
    )
    assert read(Endpoint.OPENAI_CHAT, [body]).usage == Usage(9, 2)


def test_stream_ignores_error_events() -> None:
    body = sse(
        [
            (
                "error",
                {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                },
            )
        ]
    )
    meter = read(Endpoint.ANTHROPIC_MESSAGES, [body])
    assert (meter.usage, meter.text_chars, meter.finished) == (None, 0, False)


def test_usage_from_json_accepts_any_mapping() -> None:
    class Body(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self.data = data

        def __getitem__(self, key: str) -> Any:
            return self.data[key]

        def __iter__(self) -> Any:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    assert usage_from_json("openai.completions", Body(COMPLETION_JSON)) == Usage(5, 7)
