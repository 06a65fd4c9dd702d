"""FakeProvider: the fake OpenAI / Anthropic server the other tests lean on.

In-process through ``httpx.ASGITransport`` on asyncio and trio (shapes,
usage, the provider's own limits, forced errors), over loopback with its
HTTP/1.1 server, and with the real SDKs against ``serve_in_thread()``.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest

from ratebudget.testing import FakeProvider
from ratebudget.testing._provider_openai import _go_duration

tokens = FakeProvider.count_tokens

SYSTEM = "You are a terse assistant."
QUESTION = "what is   the capital of France"
REPLY = "echo: what is the capital of France"
CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "earlier question"},
    {"role": "assistant", "content": "earlier answer here"},
    {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
]
CHAT_PROMPT = tokens(SYSTEM) + 2 + 3 + tokens(QUESTION)
CHAT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]
ANTHROPIC_TOOLS = [{"name": "lookup", "input_schema": {"type": "object"}}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
async def client(provider: FakeProvider) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as c:
        yield c


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body."""
    out: list[tuple[str | None, str]] = []
    for block in text.strip().split("\n\n"):
        event = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        out.append((event, "\n".join(data)))
    return out


def test_count_tokens_is_whitespace_words() -> None:
    assert tokens("") == 0
    assert tokens("  a  b\nc\t") == 3
    assert tokens('{"input": "x y"}') == 3


def test_go_duration_format() -> None:
    assert _go_duration(0) == "0s"
    assert _go_duration(0.0201) == "21ms"
    assert _go_duration(1) == "1s"
    assert _go_duration(8.64) == "8.64s"
    assert _go_duration(360) == "6m0s"
    assert _go_duration(3725.5) == "1h2m5.5s"


# -- OpenAI, in process -------------------------------------------------------


async def test_chat_json(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    r = await client.post(
        "/v1/chat/completions", json={"model": "gpt-x", "messages": CHAT}
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-x"
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": REPLY, "refusal": None}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == CHAT_PROMPT
    assert usage["completion_tokens"] == tokens(REPLY) == 7
    assert usage["total_tokens"] == CHAT_PROMPT + 7
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    [record] = provider.requests
    assert (record.path, record.model, record.stream, record.status) == (
        "/v1/chat/completions",
        "gpt-x",
        False,
        200,
    )
    assert (record.prompt_tokens, record.output_tokens) == (CHAT_PROMPT, 7)
    assert "x-request-id" in r.headers
    assert not any(h.startswith("x-ratelimit") for h in r.headers)  # no limits set


async def test_chat_stream_with_usage(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "m",
            "messages": CHAT,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    *with_choices, last = chunks
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == CHAT_PROMPT
    assert last["usage"]["completion_tokens"] == tokens(REPLY)
    assert all(c["usage"] is None for c in with_choices)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices)
    assert text == REPLY
    assert with_choices[0]["choices"][0]["delta"]["role"] == "assistant"
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_without_usage(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": CHAT, "stream": True},
    )
    chunks = [json.loads(data) for _, data in sse(r.text)[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


async def test_chat_n_choices_and_length_limit(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": CHAT, "n": 3, "max_completion_tokens": 2},
    )
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in body["choices"]} == {"echo: what"}
    assert {c["finish_reason"] for c in body["choices"]} == {"length"}
    assert body["usage"]["completion_tokens"] == 3 * 2
    assert provider.requests[-1].output_tokens == 6


async def test_chat_tool_call(client: httpx.AsyncClient) -> None:
    question = "please call the Tool now"
    messages = [{"role": "user", "content": question}]
    arguments = json.dumps({"input": question})
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": messages, "tools": CHAT_TOOLS},
    )
    [choice] = r.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "lookup", "arguments": arguments}
    usage = r.json()["usage"]
    assert usage["completion_tokens"] == tokens("lookup") + tokens(arguments)
    # "tools" is not the word "tool"; without tools there is no call either
    for body in (
        {"messages": [{"role": "user", "content": "no tools"}], "tools": CHAT_TOOLS},
        {"messages": messages},
        {"messages": messages, "tools": CHAT_TOOLS, "tool_choice": "none"},
    ):
        r = await client.post("/v1/chat/completions", json={"model": "m", **body})
        assert r.json()["choices"][0]["finish_reason"] == "stop"
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": messages, "tools": CHAT_TOOLS, "stream": True},
    )
    chunks = [json.loads(data) for _, data in sse(r.text)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["tool_calls"][0]["function"]["name"] == "lookup"
    streamed = "".join(
        d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d
    )
    assert streamed == arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


class TestToolTurns:
    """By default a conversation asking for the tool gets a call on every
    turn (an agent loop that never ends); ``tool_turns=N`` answers with the
    echo once the request carries N tool results, in every dialect."""

    ASK = "look it up with the tool"
    CHAT = (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": ASK}], "tools": CHAT_TOOLS},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        "messages",
    )
    RESPONSES = (
        "/v1/responses",
        {
            "input": [{"role": "user", "content": ASK}],
            "tools": [{"type": "function", "name": "lookup", "parameters": {}}],
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
        "input",
    )
    MESSAGES = (
        "/v1/messages",
        {
            "max_tokens": 50,
            "messages": [{"role": "user", "content": ASK}],
            "tools": ANTHROPIC_TOOLS,
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
                {"type": "text", "text": ASK},
            ],
        },
        "messages",
    )
    GEMINI = (
        "/v1beta/models/gemini-2.0-flash:generateContent",
        {
            "contents": [{"role": "user", "parts": [{"text": ASK}]}],
            "tools": [{"functionDeclarations": [{"name": "lookup"}]}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "lookup", "response": {"x": 1}}},
                {"text": ASK},
            ],
        },
        "contents",
    )

    @staticmethod
    def called(body: Any) -> bool:
        text = json.dumps(body)
        return any(
            marker in text
            for marker in (
                '"tool_calls"',
                '"function_call"',
                '"tool_use"',
                '"functionCall"',
            )
        )

    @pytest.mark.parametrize("api", [CHAT, RESPONSES, MESSAGES, GEMINI])
    async def test_a_call_on_every_turn_until_tool_turns(
        self, api: tuple[str, dict[str, Any], dict[str, Any], str]
    ) -> None:
        path, body, result, key = api
        body = {"model": "gpt-4o", **body}
        for turns, calls in (
            (None, [True] * 4),
            (0, [False] * 4),
            (2, [True, True, False, False]),
        ):
            provider = FakeProvider(tool_turns=turns)
            transport = httpx.ASGITransport(app=provider)
            async with httpx.AsyncClient(transport=transport, base_url="http://f") as c:
                seen = []
                for done in range(4):
                    sent = {**body, key: [*body[key], *[result] * done]}
                    r = await c.post(path, json=sent)
                    assert r.status_code == 200, r.text
                    seen.append(self.called(r.json()))
            assert seen == calls, (path, turns)

    def test_tool_turns_is_checked(self) -> None:
        for bad in (-1, 1.5, True):
            with pytest.raises(ValueError, match="tool_turns"):
                FakeProvider(tool_turns=bad)  # type: ignore[arg-type]


async def test_cached_and_reasoning_tokens() -> None:
    provider = FakeProvider(cached_tokens=4, reasoning_tokens=3)
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://f") as client:
        r = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": CHAT}
        )
        usage = r.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 4
        assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
        assert usage["completion_tokens"] == tokens(REPLY) + 3
        # reasoning comes out of the limit first
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": CHAT, "max_tokens": 5},
        )
        [choice] = r.json()["choices"]
        assert choice["message"]["content"] == "echo: what"
        assert choice["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == 5
        r = await client.post(
            "/v1/messages",
            json={"model": "c", "max_tokens": 100, "messages": CHAT[1:]},
        )
        usage = r.json()["usage"]
        prompt = CHAT_PROMPT - tokens(SYSTEM)
        assert usage["input_tokens"] == prompt - 4
        assert usage["cache_read_input_tokens"] == 4
        assert usage["output_tokens"] == tokens(REPLY) + 3
    assert provider.usage_total().cached_tokens == 12
    assert provider.usage_total().reasoning_tokens == 9


async def test_responses_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/responses",
        json={"model": "m", "input": QUESTION, "instructions": SYSTEM},
    )
    body = r.json()
    assert body["object"] == "response"
    assert body["status"] == "completed"
    [item] = body["output"]
    assert item["type"] == "message"
    assert item["content"][0] == {
        "type": "output_text",
        "text": REPLY,
        "annotations": [],
    }
    prompt = tokens(QUESTION) + tokens(SYSTEM)
    assert body["usage"]["input_tokens"] == prompt
    assert body["usage"]["output_tokens"] == tokens(REPLY)
    assert body["usage"]["total_tokens"] == prompt + tokens(REPLY)
    r = await client.post(
        "/v1/responses",
        json={
            "model": "m",
            "input": [
                {"role": "user", "content": "a b"},
                {"role": "user", "content": [{"type": "input_text", "text": "c d e"}]},
            ],
            "max_output_tokens": 2,
        },
    )
    body = r.json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["content"][0]["text"] == "echo: c"
    assert body["usage"]["input_tokens"] == 5


async def test_responses_stream(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/responses", json={"model": "m", "input": QUESTION, "stream": True}
    )
    events = sse(r.text)
    kinds = [event for event, _ in events]
    datas = [json.loads(data) for _, data in events]
    assert [d["type"] for d in datas] == kinds
    assert [d["sequence_number"] for d in datas] == list(range(len(datas)))
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    deltas = [d["delta"] for d in datas if d["type"] == "response.output_text.delta"]
    assert "".join(deltas) == REPLY
    assert len(deltas) == tokens(REPLY)
    assert datas[-1]["response"]["usage"]["output_tokens"] == tokens(REPLY)
    assert datas[-1]["response"]["usage"]["input_tokens"] == tokens(QUESTION)


async def test_responses_tool_call(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {}}]
    r = await client.post(
        "/v1/responses", json={"model": "m", "input": "a tool", "tools": tools}
    )
    [item] = r.json()["output"]
    assert item["type"] == "function_call"
    assert item["name"] == "lookup"
    assert json.loads(item["arguments"]) == {"input": "a tool"}


async def test_completions(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/completions", json={"model": "m", "prompt": ["one two", "three"]}
    )
    body = r.json()
    assert body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == ["echo: one two", "echo: three"]
    assert body["usage"]["prompt_tokens"] == 3
    assert body["usage"]["completion_tokens"] == 5
    r = await client.post(
        "/v1/completions",
        json={"model": "m", "prompt": "one two", "stream": True, "max_tokens": 2},
    )
    chunks = [json.loads(data) for _, data in sse(r.text)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "echo: one"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_embeddings(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    r = await client.post(
        "/v1/embeddings", json={"model": "e", "input": ["a b c", "d"], "dimensions": 4}
    )
    body = r.json()
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert [len(d["embedding"]) for d in body["data"]] == [4, 4]
    r = await client.post(
        "/v1/embeddings",
        json={"model": "e", "input": "a b c", "encoding_format": "base64"},
    )
    [item] = r.json()["data"]
    vector = struct.unpack("<8f", base64.b64decode(item["embedding"]))
    assert all(-1 <= v <= 1 for v in vector)
    r = await client.post("/v1/embeddings", json={"model": "e", "input": [1, 2, 3]})
    assert r.json()["usage"]["prompt_tokens"] == 3
    assert [q.output_tokens for q in provider.requests] == [0, 0, 0]


# -- Anthropic, in process ----------------------------------------------------


async def test_messages_json(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/messages",
        json={
            "model": "claude-x",
            "max_tokens": 100,
            "system": [{"type": "text", "text": SYSTEM}],
            "messages": CHAT[1:],
        },
    )
    body = r.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": REPLY}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"] == {
        "input_tokens": CHAT_PROMPT,
        "output_tokens": tokens(REPLY),
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert "request-id" in r.headers


async def test_messages_stream(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/messages",
        json={"model": "c", "max_tokens": 3, "messages": CHAT[1:], "stream": True},
    )
    events = sse(r.text)
    kinds = [event for event, _ in events if event != "ping"]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = {event: json.loads(data) for event, data in events}
    start = datas["message_start"]["message"]["usage"]
    assert start["input_tokens"] == CHAT_PROMPT - tokens(SYSTEM)
    assert start["output_tokens"] == 1
    text = "".join(
        json.loads(data)["delta"]["text"]
        for event, data in events
        if event == "content_block_delta"
    )
    assert text == "echo: what is"
    assert datas["message_delta"]["usage"] == {"output_tokens": 3}
    assert datas["message_delta"]["delta"]["stop_reason"] == "max_tokens"


async def test_messages_tool_use(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "use a tool"}]
    r = await client.post(
        "/v1/messages",
        json={
            "model": "c",
            "max_tokens": 1,
            "messages": messages,
            "tools": ANTHROPIC_TOOLS,
        },
    )
    body = r.json()
    assert body["stop_reason"] == "tool_use"
    [block] = body["content"]
    assert block["type"] == "tool_use"
    assert block["name"] == "lookup"
    assert block["input"] == {"input": "use a tool"}
    arguments = json.dumps({"input": "use a tool"})
    assert body["usage"]["output_tokens"] == tokens("lookup") + tokens(arguments)


async def test_bad_requests(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    r = await client.post("/v1/messages", json={"model": "c", "messages": []})
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = await client.post("/v1/chat/completions", content=b"not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = await client.post("/v1/nothing", json={})
    assert r.status_code == 404
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 405
    assert [q.status for q in provider.requests] == [400, 400]
    assert provider.usage_total().requests == 0


# -- the provider's own limits and forced errors -------------------------------


async def test_rpm_limit_and_headers() -> None:
    clock = Clock()
    provider = FakeProvider(rpm=3, tpm=1000, clock=clock)
    body = {"model": "m", "messages": [{"role": "user", "content": "a b"}]}
    cost = 2 + 3
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://f") as client:
        remaining = []
        for step in range(3):
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-limit-tokens"] == "1000"
            assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
            remaining.append(
                (
                    int(r.headers["x-ratelimit-remaining-requests"]),
                    int(r.headers["x-ratelimit-remaining-tokens"]),
                )
            )
            clock.now += 10 * (step < 2)
        assert remaining == [
            (2, 1000 - cost),
            (1, 1000 - 2 * cost),
            (0, 1000 - 3 * cost),
        ]
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "40"  # the first request leaves at +60
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        error = r.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        clock.now += 39.5
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        clock.now += 0.5
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert [q.status for q in provider.requests] == [200, 200, 200, 429, 429, 200]
    assert provider.usage_total().requests == 4
    assert provider.usage_total().total_tokens == 4 * cost


async def test_tpm_limit() -> None:
    clock = Clock()
    provider = FakeProvider(tpm=20, clock=clock)
    question = "one two three four"  # prompt 4 + reply 5 = 9 tokens
    body = {"model": "m", "messages": [{"role": "user", "content": question}]}
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://f") as client:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.headers["x-ratelimit-remaining-tokens"] == "11"
        assert "x-ratelimit-limit-requests" not in r.headers
        clock.now += 15
        r = await client.post("/v1/chat/completions", json=body)
        assert r.headers["x-ratelimit-remaining-tokens"] == "2"
        assert r.headers["x-ratelimit-reset-tokens"] == "1m0s"
        clock.now += 1.5
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "tokens"
        assert r.headers["retry-after"] == "44"  # ceil(60 - 16.5)
        assert r.headers["x-ratelimit-reset-tokens"] == "58.5s"
        # a request bigger than the whole limit never fits
        big = {"model": "m", "messages": [{"role": "user", "content": "w " * 30}]}
        r = await client.post("/v1/chat/completions", json=big)
        assert (r.status_code, r.headers["retry-after"]) == (429, "60")
        clock.now += 44
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200


async def test_anthropic_limits_and_429() -> None:
    clock = Clock()
    provider = FakeProvider(rpm=1, tpm=100, clock=clock)
    body = {
        "model": "c",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://f") as client:
        r = await client.post("/v1/messages", json=body)
        assert r.status_code == 200
        assert r.headers["anthropic-ratelimit-requests-limit"] == "1"
        assert r.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert r.headers["anthropic-ratelimit-tokens-limit"] == "100"
        assert r.headers["anthropic-ratelimit-tokens-remaining"] == str(100 - 1 - 2)
        reset = r.headers["anthropic-ratelimit-requests-reset"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", reset)
        moment = datetime.fromisoformat(reset.replace("Z", "+00:00"))
        ahead = (moment - datetime.now(timezone.utc)).total_seconds()
        assert 55 <= ahead <= 61
        r = await client.post("/v1/messages", json=body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "60"
        assert r.json() == {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": r.json()["error"]["message"],
            },
        }


async def test_fail_next(client: httpx.AsyncClient, provider: FakeProvider) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    provider.fail_next(500, times=2)
    provider.fail_next(429, retry_after=2.5, message="slow down")
    statuses = []
    for _ in range(4):
        r = await client.post("/v1/chat/completions", json=body)
        statuses.append(r.status_code)
        if r.status_code == 500:
            assert r.json()["error"]["type"] == "server_error"
            assert "retry-after" not in r.headers
        if r.status_code == 429:
            assert r.headers["retry-after"] == "3"
            assert r.json()["error"]["message"] == "slow down"
    assert statuses == [500, 500, 429, 200]
    provider.fail_next(529)
    r = await client.post(
        "/v1/messages",
        json={"model": "c", "max_tokens": 5, "messages": body["messages"]},
    )
    assert r.status_code == 529
    assert r.json()["error"]["type"] == "overloaded_error"
    assert [q.status for q in provider.requests] == [500, 500, 429, 200, 529]
    assert [q.output_tokens for q in provider.requests] == [0, 0, 0, 2, 0]
    assert provider.usage_total().requests == 1
    with pytest.raises(ValueError, match="status"):
        provider.fail_next(200)


async def test_latency_sleeps_on_the_running_loop() -> None:
    provider = FakeProvider(latency=0.05, stream_delay=0.01)
    transport = httpx.ASGITransport(app=provider)
    async with httpx.AsyncClient(transport=transport, base_url="http://f") as client:
        started = anyio.current_time()
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": CHAT, "stream": True},
        )
        elapsed = anyio.current_time() - started
    assert r.status_code == 200
    assert elapsed >= 0.05 + 0.01 * (len(sse(r.text)) - 1)


# -- the loopback HTTP/1.1 server -----------------------------------------------


async def test_serve_keep_alive_and_chunked(provider: FakeProvider) -> None:
    provider.stream_delay = 0.005
    async with provider.serve() as url, httpx.AsyncClient(base_url=url) as client:
        assert url.startswith("http://127.0.0.1:")
        r = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": CHAT}
        )
        assert r.json()["choices"][0]["message"]["content"] == REPLY
        assert r.headers["content-length"] == str(len(r.content))
        pieces = []
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": CHAT, "stream": True},
        ) as r:
            assert r.headers["transfer-encoding"] == "chunked"
            pieces = [chunk async for chunk in r.aiter_raw()]
        assert len(pieces) > 1  # the chunks came one by one
        text = b"".join(pieces).decode()
        assert sse(text)[-1] == (None, "[DONE]")
        r = await client.post("/v1/embeddings", json={"model": "e", "input": "q"})
        assert r.status_code == 200
    assert len(provider.requests) == 3


async def test_serve_raw_http(provider: FakeProvider) -> None:
    """A chunked request body, two requests on one connection, then close."""
    async with provider.serve() as url:
        port = int(url.rsplit(":", 1)[1])
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            payload = json.dumps({"model": "e", "input": "a b"}).encode()
            half = len(payload) // 2
            chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                half,
                payload[:half],
                len(payload) - half,
                payload[half:],
            )
            await stream.send(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunked
            )
            await stream.send(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            received = b""
            with anyio.fail_after(5):
                while True:
                    try:
                        received += await stream.receive()
                    except anyio.EndOfStream:
                        break
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b"connection: close" in received
    assert [q.prompt_tokens for q in provider.requests] == [2, 2]


def test_serve_in_thread_with_sync_httpx(provider: FakeProvider) -> None:
    with provider.serve_in_thread() as url, httpx.Client(base_url=url) as client:
        r = client.post(
            "/v1/messages",
            json={"model": "c", "max_tokens": 9, "messages": CHAT[1:]},
        )
        assert r.json()["content"][0]["text"] == REPLY
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + "/v1/messages", json={}, timeout=2)


# -- the real SDKs on loopback ------------------------------------------------


@pytest.fixture
def served(provider: FakeProvider) -> Iterator[str]:
    with provider.serve_in_thread() as url:
        yield url


@pytest.fixture
def oai(served: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(served: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=served, api_key="x", max_retries=0) as c:
        yield c


def test_openai_sdk_chat(oai: openai.OpenAI, provider: FakeProvider) -> None:
    completion = oai.chat.completions.create(
        model="gpt-x",
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
        ],
    )
    assert completion.choices[0].message.content == REPLY
    usage = completion.usage
    assert usage is not None
    record = provider.requests[-1]
    assert (
        usage.prompt_tokens == record.prompt_tokens == tokens(SYSTEM + " " + QUESTION)
    )
    assert usage.completion_tokens == record.output_tokens == tokens(REPLY)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == record.cached_tokens == 0


def test_openai_sdk_chat_stream(oai: openai.OpenAI, provider: FakeProvider) -> None:
    stream = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    with stream:
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
    assert text == REPLY
    assert usage is not None
    [record] = provider.requests
    assert record.stream
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        record.prompt_tokens,
        record.output_tokens,
    )


def test_openai_sdk_tool_call(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "look it up with a tool"}],
        tools=[
            {
                "type": "function",
                "function": {"name": "lookup", "parameters": {"type": "object"}},
            }
        ],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"input": "look it up with a tool"}


def test_openai_sdk_responses_and_embeddings(
    oai: openai.OpenAI, provider: FakeProvider
) -> None:
    response = oai.responses.create(model="m", input=QUESTION, instructions=SYSTEM)
    assert response.output_text == REPLY
    assert response.usage is not None
    record = provider.requests[-1]
    assert response.usage.input_tokens == record.prompt_tokens
    assert response.usage.output_tokens == record.output_tokens == tokens(REPLY)
    with oai.responses.stream(model="m", input=QUESTION) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == REPLY == final.output_text
    assert final.usage is not None
    assert final.usage.output_tokens == provider.requests[-1].output_tokens
    embedded = oai.embeddings.create(model="e", input=["a b c", "d e"])
    assert len(embedded.data) == 2
    assert len(embedded.data[0].embedding) == 8
    assert embedded.usage.prompt_tokens == provider.requests[-1].prompt_tokens == 5
    assert provider.usage_total().requests == 3


def test_openai_sdk_rate_limit_error() -> None:
    provider = FakeProvider(rpm=1)
    with (
        provider.serve_in_thread() as url,
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        messages: Any = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=messages)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "60"
    assert caught.value.code == "rate_limit_exceeded"
    assert [q.status for q in provider.requests] == [200, 429]


def test_anthropic_sdk_messages(
    claude: anthropic.Anthropic, provider: FakeProvider
) -> None:
    message = claude.messages.create(
        model="claude-x",
        max_tokens=100,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == REPLY
    record = provider.requests[-1]
    assert message.usage.input_tokens == record.prompt_tokens
    assert message.usage.output_tokens == record.output_tokens == tokens(REPLY)
    with claude.messages.stream(
        model="claude-x",
        max_tokens=4,
        messages=[{"role": "user", "content": QUESTION}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: what is the"
    assert final.stop_reason == "max_tokens"
    record = provider.requests[-1]
    assert record.stream
    assert final.usage.input_tokens == record.prompt_tokens == tokens(QUESTION)
    assert final.usage.output_tokens == record.output_tokens == 4


def test_anthropic_sdk_tool_use(claude: anthropic.Anthropic) -> None:
    for streamed in (False, True):
        kwargs: Any = {
            "model": "c",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "call a tool"}],
            "tools": ANTHROPIC_TOOLS,
        }
        if streamed:
            with claude.messages.stream(**kwargs) as stream:
                message = stream.get_final_message()
        else:
            message = claude.messages.create(**kwargs)
        assert message.stop_reason == "tool_use"
        [block] = message.content
        assert block.type == "tool_use"
        assert block.name == "lookup"
        assert block.input == {"input": "call a tool"}


def test_anthropic_sdk_rate_limit_error(
    claude: anthropic.Anthropic, provider: FakeProvider
) -> None:
    provider.fail_next(429, retry_after=7)
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert provider.requests[-1].status == 429


# -- the async SDK clients (asyncio only) -----------------------------------------


@pytest.fixture
def asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("the openai/anthropic async clients run on asyncio only")


@pytest.mark.usefixtures("asyncio_only")
async def test_async_sdks(provider: FakeProvider) -> None:
    async with (
        provider.serve() as url,
        openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as oai,
        anthropic.AsyncAnthropic(base_url=url, api_key="x", max_retries=0) as claude,
    ):
        stream = await oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": QUESTION}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async with stream:
            async for chunk in stream:
                usage = chunk.usage or usage
        assert usage is not None
        assert usage.completion_tokens == provider.requests[-1].output_tokens
        async with claude.messages.stream(
            model="c", max_tokens=50, messages=[{"role": "user", "content": QUESTION}]
        ) as messages:
            final = await messages.get_final_message()
        assert final.content[0].type == "text"
        assert final.content[0].text == REPLY
        assert final.usage.output_tokens == provider.requests[-1].output_tokens
        provider.fail_next(429, retry_after=1)
        with pytest.raises(openai.RateLimitError):
            await oai.embeddings.create(model="e", input="x")
    assert [q.status for q in provider.requests] == [200, 200, 429]


def test_sdk_timing_is_quick(provider: FakeProvider) -> None:
    """Twenty SDK calls over one kept-alive connection well under a second each."""
    with (
        provider.serve_in_thread() as url,
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        started = time.monotonic()
        for _ in range(20):
            client.embeddings.create(model="e", input="x", encoding_format="float")
        assert time.monotonic() - started < 5
    assert provider.usage_total().requests == 20
