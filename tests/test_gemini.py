"""Gemini's own API metered: ``generateContent`` and ``streamGenerateContent``.

Reading (classify, estimate, ``usageMetadata`` in JSON and SSE) against
bodies checked with the ``google-genai`` SDK's own models, then the real SDK
(``genai.Client``, async on asyncio and trio, and sync) through
``BudgetTransport`` against ``FakeProvider``'s Gemini routes; its request log
is what went out.
"""

from __future__ import annotations

import json
import logging
import math
from decimal import Decimal
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from google import genai
from google.genai import types

from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    Rate,
)
from ratebudget.integrations.httpx import (
    SHRUNK_HEADER,
    BudgetSyncTransport,
    BudgetTransport,
)
from ratebudget.integrations.prices import estimate_cost, price
from ratebudget.integrations.usage import (
    DEFAULT_MAX_OUTPUT,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    Endpoint,
    StreamUsage,
    Usage,
    classify,
    estimate,
    gemini_model,
    is_free,
    usage_from_json,
)
from ratebudget.testing import FakeProvider

MODEL = "gemini-2.5-flash"
EMBED = "gemini-embedding-001"

GEMINI_JSON: dict[str, Any] = {
    "candidates": [
        {
            "content": {"parts": [{"text": "Hello there"}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 2412,
        "candidatesTokenCount": 35,
        "totalTokenCount": 2567,
        "cachedContentTokenCount": 2048,
        "thoughtsTokenCount": 100,
        "toolUsePromptTokenCount": 20,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2412}],
        "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 2048}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mAitaLmkHPPlz7IPvtfUqQ4",
}
# thoughts are output, but not in candidatesTokenCount; tool-use prompts input
GEMINI_USAGE = Usage(
    2412 + 20, 35 + 100, cached_input_tokens=2048, reasoning_tokens=100
)


def chunk(parts: list[Any], usage: dict[str, Any], finish: str | None = None) -> Any:
    candidate: dict[str, Any] = {
        "content": {"parts": parts, "role": "model"},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    }


SO_FAR = {"promptTokenCount": 9, "totalTokenCount": 9}
FINAL = {
    "promptTokenCount": 9,
    "candidatesTokenCount": 12,
    "thoughtsTokenCount": 30,
    "totalTokenCount": 51,
}
GEMINI_CHUNKS = [
    chunk([{"text": "Héllo"}], SO_FAR),
    chunk([{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}], SO_FAR),
    chunk([{"text": " wörld 🌍"}], FINAL, "STOP"),
]
GEMINI_TEXT_CHARS = len("Héllo") + len(json.dumps({"city": "Paris"})) + len(" wörld 🌍")
GEMINI_STREAM = b"".join(
    f"data: {json.dumps(c)}\r\n\r\n".encode() for c in GEMINI_CHUNKS
)


# --- reading ----------------------------------------------------------------


def test_fixtures_are_what_the_sdk_parses() -> None:
    """The SDK's own model reads the same counts we do."""
    parsed = types.GenerateContentResponse.model_validate(GEMINI_JSON)
    meta = parsed.usage_metadata
    assert meta is not None
    assert usage_from_json(Endpoint.GEMINI_GENERATE, GEMINI_JSON) == Usage(
        (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0),
        (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
        cached_input_tokens=meta.cached_content_token_count or 0,
        reasoning_tokens=meta.thoughts_token_count or 0,
    )
    for c in GEMINI_CHUNKS:
        types.GenerateContentResponse.model_validate(c)


def test_usage_from_json_and_from_the_sdks_model_dump() -> None:
    assert usage_from_json("gemini.generate_content", GEMINI_JSON) == GEMINI_USAGE
    # limiter.meter().settle() gets the SDK's object: snake_case keys
    dumped = types.GenerateContentResponse.model_validate(GEMINI_JSON).model_dump()
    assert "usage_metadata" in dumped
    assert usage_from_json(Endpoint.GEMINI_GENERATE, dumped) == GEMINI_USAGE
    assert usage_from_json(Endpoint.GEMINI_GENERATE, {"candidates": []}) is None
    odd = {"usageMetadata": {"promptTokenCount": -3, "candidatesTokenCount": "x"}}
    assert usage_from_json(Endpoint.GEMINI_GENERATE, odd) == Usage(0, 0)


@pytest.mark.parametrize(
    ("path", "endpoint", "model"),
    [
        (f"/v1beta/models/{MODEL}:generateContent", Endpoint.GEMINI_GENERATE, MODEL),
        (
            f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            Endpoint.GEMINI_STREAM,
            MODEL,
        ),
        (  # Vertex AI
            f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}"
            ":generateContent",
            Endpoint.GEMINI_GENERATE,
            MODEL,
        ),
        (  # a tuned model's endpoint: map its id with models=
            "/v1/projects/p/locations/l/endpoints/1234:streamGenerateContent",
            Endpoint.GEMINI_STREAM,
            "1234",
        ),
        (f"/v1beta/models/{MODEL}:countTokens", None, MODEL),
        (f"/v1beta/models/{EMBED}:embedContent", Endpoint.GEMINI_EMBED, EMBED),
        (f"/v1beta/models/{EMBED}:batchEmbedContents", Endpoint.GEMINI_EMBED, EMBED),
        (f"/v1beta/models/{MODEL}:predict", None, MODEL),  # Vertex's embeddings
        (f"/v1beta/models/{MODEL}", None, None),
    ],
)
def test_classify_and_model(
    path: str, endpoint: Endpoint | None, model: str | None
) -> None:
    assert classify("POST", path) is endpoint
    assert classify("GET", path) is None
    assert gemini_model(path) == model


def test_counting_tokens_is_free_embedding_is_not() -> None:
    assert is_free("POST", f"/v1beta/models/{MODEL}:countTokens")
    assert not is_free("POST", f"/v1beta/models/{EMBED}:embedContent")
    assert not is_free("POST", f"/v1beta/models/{MODEL}:generateContent")


def test_embeddings_estimate_every_content_and_no_output() -> None:
    one = {"content": {"parts": [{"text": "abcd" * 3}]}, "title": "abcd"}
    est = estimate(Endpoint.GEMINI_EMBED, one)
    assert (est.input_tokens, est.max_output_tokens, est.n) == (4, 0, 1)
    batch = {
        "requests": [
            {"model": f"models/{EMBED}", "content": {"parts": [{"text": "abcd"}]}},
            {"model": f"models/{EMBED}", "content": {"parts": [{"text": "ab"}]}},
        ]
    }
    assert estimate(Endpoint.GEMINI_EMBED, batch).input_tokens == 2  # 6 chars
    # Gemini's embeddings report no usage: the estimate is committed
    assert usage_from_json(Endpoint.GEMINI_EMBED, {"embeddings": []}) is None
    counted = {"usageMetadata": {"promptTokenCount": 7}}
    assert usage_from_json(Endpoint.GEMINI_EMBED, counted) == Usage(7, 0)


def test_estimate_reads_every_text_and_the_output_limit() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "abcd" * 3}]},  # 3 tokens
        "contents": [
            {"role": "user", "parts": [{"text": "abcd" * 5}]},  # 5
            {
                "role": "model",
                "parts": [
                    {"functionCall": {"name": "f", "args": {"q": "abcd"}}},
                    {"thoughtSignature": "c2lnbmF0dXJl" * 100},  # not read
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"inlineData": {"mimeType": "image/png", "data": "QUJD" * 10_000}},
                    {"fileData": {"mimeType": "video/mp4", "fileUri": "gs://b/v.mp4"}},
                ],
            },
        ],
        "generationConfig": {"maxOutputTokens": 300, "candidateCount": 2},
    }
    est = estimate(Endpoint.GEMINI_GENERATE, body)
    chars = 12 + 20 + len("f") + len("abcd")
    assert est.input_tokens == 3 * MESSAGE_OVERHEAD + 2 * IMAGE_TOKENS + math.ceil(
        chars / 4
    )
    assert (est.max_output_tokens, est.n, est.stream, est.model) == (
        300,
        2,
        False,
        None,
    )
    assert est.max_total_tokens == est.input_tokens + 600
    assert estimate(Endpoint.GEMINI_STREAM, body).stream


def test_estimate_reads_snake_case_and_schemas() -> None:
    schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}
    snake = {
        "system_instruction": {"parts": [{"text": "x" * 40}]},
        "contents": [{"parts": [{"text": "y" * 40}]}],
        "generation_config": {
            "max_output_tokens": 77,
            "candidate_count": 3,
            "response_schema": schema,
        },
    }
    est = estimate(Endpoint.GEMINI_GENERATE, snake)
    assert (est.max_output_tokens, est.n) == (77, 3)
    schema_chars = len(json.dumps(schema, ensure_ascii=False))
    assert est.input_tokens == MESSAGE_OVERHEAD + math.ceil((80 + schema_chars) / 4)
    bare = estimate(Endpoint.GEMINI_GENERATE, {"contents": []})
    assert (bare.max_output_tokens, bare.n) == (DEFAULT_MAX_OUTPUT, 1)


def read(chunks: list[bytes]) -> StreamUsage:
    meter = StreamUsage(Endpoint.GEMINI_STREAM)
    for piece in chunks:
        meter.feed(piece)
    return meter


def test_stream_usage_split_anywhere() -> None:
    whole = Usage(9, 42, reasoning_tokens=30)
    for cut in range(len(GEMINI_STREAM) + 1):
        meter = read([GEMINI_STREAM[:cut], GEMINI_STREAM[cut:]])
        assert (meter.usage, meter.text_chars, meter.model) == (
            whole,
            GEMINI_TEXT_CHARS,
            MODEL,
        ), cut
        assert meter.finished
        assert meter.usage_final


def test_a_stream_cut_before_its_last_chunk_reports_a_count_so_far() -> None:
    end = GEMINI_STREAM.index(b"data:", 10)  # the first chunk only
    meter = read([GEMINI_STREAM[:end]])
    assert meter.usage == Usage(9, 0)
    assert not meter.usage_final
    assert not meter.finished
    assert meter.text_chars == len("Héllo")


# --- the real SDK through the transport -------------------------------------


def gemini(
    limiter: Limiter,
    provider: FakeProvider,
    retry: types.HttpRetryOptions | None = None,
    **kw: Any,
) -> genai.Client:
    transport = BudgetTransport(
        limiter, transport=httpx2.ASGITransport(app=provider), **kw
    )
    options = types.HttpOptions(
        base_url="http://fake",
        httpx_async_client=httpx2.AsyncClient(transport=transport),
        retry_options=retry or types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key="x", http_options=options)


def logged(provider: FakeProvider) -> tuple[int, Decimal]:
    """Tokens and USD of what the provider's log says it served."""
    tokens, usd = 0, Decimal(0)
    for r in provider.requests:
        if r.status == 200:
            used = Usage(
                r.prompt_tokens,
                r.output_tokens,
                cached_input_tokens=r.cached_tokens,
                reasoning_tokens=r.reasoning_tokens,
            )
            tokens += used.total_tokens
            usd += price(r.model or "", used, provider="google")
    return tokens, usd


async def test_the_sdk_is_metered_exactly() -> None:
    provider = FakeProvider(cached_tokens=2, reasoning_tokens=3)
    limiter = Limiter(Cap(usd="1"), Cap(tokens=10**6), Cap(requests=10))
    client = gemini(limiter, provider)
    config = types.GenerateContentConfig(
        system_instruction="be brief", max_output_tokens=64
    )
    reply = await client.aio.models.generate_content(
        model=MODEL, contents="one two three", config=config
    )
    assert reply.text == "echo: one two three"
    texts = [
        c.text
        async for c in await client.aio.models.generate_content_stream(
            model=MODEL, contents="four five"
        )
    ]
    assert "".join(t or "" for t in texts) == "echo: four five"
    first, second = provider.requests
    assert (first.model, first.stream, second.stream) == (MODEL, False, True)
    tokens, usd = logged(provider)
    usd_cap, tokens_cap, requests_cap = (await limiter.snapshot()).limits
    assert (usd_cap.used, usd_cap.reserved) == (usd, 0)
    assert usd > 0
    assert (tokens_cap.used, tokens_cap.reserved) == (tokens, 0)
    assert requests_cap.used == 2


async def test_a_tiny_cap_refuses_before_anything_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """... and the SDK, retrying as it does by default, does not retry it."""
    provider = FakeProvider()
    client = gemini(
        Limiter(Cap(usd="0.0000001")), provider, retry=types.HttpRetryOptions()
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(BudgetExceeded):
        await client.aio.models.generate_content(model=MODEL, contents="hello")
    assert provider.requests == []
    assert not [r for r in caplog.records if "etry" in r.getMessage()]


async def test_counting_tokens_passes_under_raise() -> None:
    """``:countTokens`` is free: sent (the fake serves it not: a 404), not refused."""
    provider = FakeProvider()
    limiter = Limiter(Cap(requests=1))
    client = gemini(limiter, provider)
    with pytest.raises(genai.errors.ClientError, match="404"):
        await client.aio.models.count_tokens(model=MODEL, contents="hello")
    assert (await limiter.snapshot())[0].used == 0


async def test_shrink_lowers_max_output_tokens() -> None:
    cap = Decimal("0.001")  # 400 output tokens of gemini-2.5-flash
    provider, limiter = FakeProvider(), Limiter(Cap(usd=cap))
    client = gemini(limiter, provider, shrink=True, min_output_tokens=64)
    config = types.GenerateContentConfig(max_output_tokens=8_000, temperature=0.5)
    raw = await client.aio.models.generate_content(
        model=MODEL, contents="one two", config=config
    )
    assert raw.sdk_http_response is not None
    headers = raw.sdk_http_response.headers or {}
    fits = int(headers[SHRUNK_HEADER])
    (sent,) = provider.requests
    assert sent.body["generationConfig"] == {
        "maxOutputTokens": fits,
        "temperature": 0.5,
    }
    body = dict(sent.body)
    worst = estimate_cost(
        MODEL, estimate(Endpoint.GEMINI_GENERATE, body), provider="google"
    )
    assert worst <= cap
    body["generationConfig"] = {"maxOutputTokens": fits + 1}
    worse = estimate_cost(
        MODEL, estimate(Endpoint.GEMINI_GENERATE, body), provider="google"
    )
    assert worse > cap


async def test_an_unknown_model_is_refused_unless_mapped() -> None:
    provider = FakeProvider()
    client = gemini(Limiter(Cap(usd=1)), provider)
    with pytest.raises(InvalidRequest, match="my-tuned-model"):
        await client.aio.models.generate_content(model="my-tuned-model", contents="hi")
    assert provider.requests == []
    limiter = Limiter(Cap(usd=1))
    client = gemini(limiter, provider, models={"my-tuned-model": MODEL})
    await client.aio.models.generate_content(model="my-tuned-model", contents="hi")
    (r,) = provider.requests
    expected = price(MODEL, Usage(r.prompt_tokens, r.output_tokens), provider="google")
    assert (await limiter.snapshot())[0].used == expected


def test_the_sync_sdk_is_metered() -> None:
    provider = FakeProvider()
    limiter = Limiter(Cap(tokens=10**6))
    with (
        provider.serve_in_thread() as url,
        httpx2.Client(transport=BudgetSyncTransport(limiter)) as http,
    ):
        options = types.HttpOptions(base_url=url, httpx_client=http)
        client = genai.Client(api_key="x", http_options=options)
        client.models.generate_content(model=MODEL, contents="one two")
        for _ in client.models.generate_content_stream(model=MODEL, contents="three"):
            pass
    tokens, _ = logged(provider)
    assert len(provider.requests) == 2
    assert limiter.sync.snapshot()[0].used == tokens


# --- the transport alone, on asyncio and trio --------------------------------


@pytest.mark.parametrize("pkg", [httpx, httpx2], ids=lambda p: p.__name__)
@pytest.mark.parametrize("alt", ["?alt=sse", ""])
async def test_a_stream_is_metered_as_sse_or_as_a_json_array(
    pkg: Any, alt: str
) -> None:
    provider = FakeProvider(reasoning_tokens=2)
    limiter = Limiter(Cap(tokens=10**6), Rate(tokens=10**6, per=60))
    transport = BudgetTransport(limiter, transport=pkg.ASGITransport(app=provider))
    body = {"contents": [{"role": "user", "parts": [{"text": "a b c"}]}]}
    async with pkg.AsyncClient(transport=transport, base_url="http://fake") as client:
        url = f"/v1beta/models/{MODEL}:streamGenerateContent{alt}"
        async with client.stream("POST", url, json=body) as response:
            assert response.status_code == 200
            kind = response.headers["content-type"]
            assert ("event-stream" in kind) == bool(alt)
            async for _ in response.aiter_bytes():
                pass
    tokens, _ = logged(provider)
    snap = await limiter.snapshot()
    assert (snap[0].used, snap[0].reserved) == (tokens, 0)
    assert tokens == 3 + 2 + len("echo: a b c".split())


# leaving a response mid-stream leaves httpx's own async generators to the
# garbage collector, which trio reports; the lease is settled all the same
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_stream_cut_short_commits_at_least_what_was_seen() -> None:
    provider = FakeProvider(stream_delay=0.02)
    limiter = Limiter(Cap(tokens=10**6))
    words = " ".join(["word"] * 40)
    body = {"contents": [{"parts": [{"text": words}]}]}
    async with provider.serve() as url:
        transport = BudgetTransport(limiter)
        async with httpx2.AsyncClient(transport=transport, base_url=url) as client:
            path = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
            seen = b""
            with anyio.move_on_after(5):
                async with client.stream("POST", path, json=body) as response:
                    async for piece in response.aiter_bytes():
                        seen += piece
                        if seen.count(b"data:") >= 20:
                            break
    (request,) = provider.requests
    snap = await limiter.snapshot()
    assert snap[0].reserved == 0
    # the input, and the output seen (a token per 4 characters of it), at
    # most all of it
    least = math.ceil(len("echo:" + " word" * 19) / 4)
    most = math.ceil(len("echo:" + " word" * 40) / 4)
    assert least <= snap[0].used - request.prompt_tokens <= most


async def test_meter_settles_the_sdks_response() -> None:
    """Without the transport: ``limiter.meter()`` and the SDK's own object."""
    provider = FakeProvider(reasoning_tokens=4)
    limiter = Limiter(Cap(usd=1))
    options = types.HttpOptions(
        base_url="http://fake",
        httpx_async_client=httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=provider)
        ),
    )
    client = genai.Client(api_key="x", http_options=options)
    async with limiter.meter(
        model=MODEL, provider="google", prompt="one two three", max_tokens=100
    ) as m:
        reply = await client.aio.models.generate_content(
            model=MODEL, contents="one two three"
        )
        usage = await m.settle(reply)
    (r,) = provider.requests
    assert usage == Usage(r.prompt_tokens, r.output_tokens, reasoning_tokens=4)
    _, usd = logged(provider)
    assert (await limiter.snapshot())[0].used == usd


# -- a 429 says when to retry in its body ---------------------------------------


@pytest.mark.parametrize("pkg", [httpx, httpx2], ids=lambda p: p.__name__)
async def test_a_429s_retry_delay_in_the_body_holds_later_callers(pkg: Any) -> None:
    """Gemini puts a 429's delay in ``error.details`` (RetryInfo), not in
    ``Retry-After``: the transport reads it there (a hold longer than the
    timeout fails at once), and the caller still gets the error body."""
    provider = FakeProvider()
    provider.fail_next(429, retry_after=30)
    limiter = Limiter(Rate(requests=100, per=1))
    transport = BudgetTransport(
        limiter, transport=pkg.ASGITransport(app=provider), timeout=5
    )
    body = {"contents": [{"parts": [{"text": "hello"}]}]}
    url = f"/v1beta/models/{MODEL}:generateContent"
    async with pkg.AsyncClient(transport=transport, base_url="http://fake") as client:
        first = await client.post(url, json=body)
        assert first.status_code == 429
        assert "retry-after" not in first.headers
        (detail,) = first.json()["error"]["details"]
        assert detail["retryDelay"] == "30s"
        with pytest.raises(AcquireTimeout) as held:
            await client.post(url, json=body)
    assert held.value.retry_after is not None
    assert 25 < held.value.retry_after <= 30
    assert len(provider.requests) == 1  # the second never left


def test_the_sync_transport_reads_it_too() -> None:
    provider = FakeProvider()
    provider.fail_next(429, retry_after=30)
    body = {"contents": [{"parts": [{"text": "hello"}]}]}
    url = f"/v1beta/models/{MODEL}:generateContent"
    with provider.serve_in_thread() as base:
        transport = BudgetSyncTransport(Limiter(Rate(requests=100, per=1)), timeout=5)
        with httpx2.Client(transport=transport, base_url=base) as client:
            assert client.post(url, json=body).status_code == 429
            with pytest.raises(AcquireTimeout):
                client.post(url, json=body)


async def test_the_sdk_sees_the_429_and_then_the_hold() -> None:
    provider = FakeProvider()
    provider.fail_next(429, retry_after=30, message="Resource exhausted")
    client = gemini(Limiter(Rate(requests=100, per=1)), provider, timeout=5)
    with pytest.raises(genai.errors.ClientError) as refused:
        await client.aio.models.generate_content(model=MODEL, contents="hi")
    assert refused.value.code == 429
    assert "Resource exhausted" in str(refused.value)
    with pytest.raises(AcquireTimeout):
        await client.aio.models.generate_content(model=MODEL, contents="hi")
    assert len(provider.requests) == 1


@pytest.mark.parametrize("exact", [True, False])
async def test_embeddings_through_the_sdk_are_metered(exact: bool) -> None:
    """No usage in the answer: what is committed is the estimate, exact when
    the transport counts tokens as the provider does (``count_tokens=``)."""
    provider = FakeProvider()
    limiter = Limiter(Cap(usd=1), Cap(tokens=10**6))
    counter = FakeProvider.count_tokens if exact else None
    client = gemini(limiter, provider, count_tokens=counter)
    texts: list[Any] = ["one two three", "four five"]
    reply = await client.aio.models.embed_content(model=EMBED, contents=texts)
    assert reply.embeddings is not None
    assert len(reply.embeddings) == 2
    (request,) = provider.requests
    assert request.model == EMBED
    usd, tokens = (await limiter.snapshot()).limits
    expected = (
        request.prompt_tokens
        if exact
        else estimate(Endpoint.GEMINI_EMBED, request.body).input_tokens
    )
    assert (tokens.used, tokens.reserved) == (expected, 0)
    assert usd.used == price(EMBED, Usage(expected, 0), provider="google")
