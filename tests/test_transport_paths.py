"""Nothing billable passes ``BudgetTransport`` unmetered: calls recognised by
their shape wherever a base URL puts them (OpenRouter, Gemini's OpenAI
endpoint, Azure OpenAI deployments, self-hosted servers), and
``unmetered="raise" | "warn" | "allow"`` for a POST it cannot meter.

The real ``openai`` SDK (``AsyncOpenAI``, ``AsyncAzureOpenAI``) against
``FakeProvider`` serving those paths, in process; its request log is what
went out. The SDKs' async clients run on asyncio only.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest

from ratebudget import (
    BudgetExceeded,
    Cap,
    InvalidRequest,
    Limiter,
    UnmeteredCall,
)
from ratebudget.integrations.httpx import (
    SHRUNK_HEADER,
    BudgetSyncTransport,
    BudgetTransport,
)
from ratebudget.integrations.prices import estimate_cost, price
from ratebudget.integrations.usage import Endpoint, Usage, estimate
from ratebudget.testing import FakeProvider

MESSAGES: Any = [{"role": "user", "content": "one two three"}]


def asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("the SDKs' async clients run on asyncio only")


def client(
    limiter: Limiter, provider: FakeProvider, base_url: str, **kw: Any
) -> openai.AsyncOpenAI:
    transport = BudgetTransport(
        limiter, transport=httpx2.ASGITransport(app=provider), **kw
    )
    return openai.AsyncOpenAI(
        api_key="x",
        base_url=base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def used(provider: FakeProvider) -> tuple[int, int]:
    """Requests and tokens the provider's log says it served."""
    total = provider.usage_total()
    return total.requests, total.prompt_tokens + total.output_tokens


@pytest.mark.parametrize(
    "base",
    [
        "http://fake/api/v1",  # OpenRouter
        "http://fake/v1beta/openai",  # Gemini's OpenAI endpoint
        "http://fake/serving/llama/v1",  # vLLM behind a gateway
        "http://fake/v1",
    ],
)
async def test_a_compatible_base_path_is_metered_by_its_shape(
    base: str, anyio_backend: str
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    limiter = Limiter(Cap(tokens=10**6), Cap(requests=100))
    llm = client(limiter, provider, base)
    await llm.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await llm.embeddings.create(model="text-embedding-3-small", input="one two")
    stream = await llm.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    async for _ in stream:
        pass
    requests, tokens = used(provider)
    assert requests == 3
    snap = await limiter.snapshot()
    tokens_cap, requests_cap = snap[0], snap[1]
    assert (tokens_cap.used, tokens_cap.reserved) == (tokens, 0)
    assert (requests_cap.used, requests_cap.reserved) == (3, 0)


async def test_a_tiny_usd_cap_refuses_an_openrouter_call_before_it_is_sent(
    anyio_backend: str,
) -> None:
    """The reproduction: a $0.0000001 cap and an OpenRouter-style base URL
    let the call through, counted 0."""
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    limiter = Limiter(Cap(usd="0.0000001"))
    llm = client(limiter, provider, "http://fake/api/v1")
    with pytest.raises(BudgetExceeded):
        await llm.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert provider.requests == []


def azure(
    limiter: Limiter, provider: FakeProvider, **kw: Any
) -> openai.AsyncAzureOpenAI:
    transport = BudgetTransport(
        limiter, transport=httpx2.ASGITransport(app=provider), **kw
    )
    return openai.AsyncAzureOpenAI(
        api_key="x",
        api_version="2024-10-21",
        azure_endpoint="http://fake",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def priced(provider: FakeProvider, model: str) -> Decimal:
    (r,) = provider.requests
    return price(model, Usage(r.prompt_tokens, r.output_tokens), provider="openai")


async def test_an_azure_deployment_is_priced_as_the_model_it_maps_to(
    anyio_backend: str,
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider(models={"prod-chat": "gpt-4o-2024-08-06"})
    limiter = Limiter(Cap(usd="10"), Cap(tokens=10**6))
    llm = azure(limiter, provider, models={"prod-chat": "gpt-4o"})
    reply = await llm.chat.completions.create(
        model="prod-chat", messages=MESSAGES, max_tokens=10
    )
    assert reply.model == "gpt-4o-2024-08-06"
    (request,) = provider.requests
    assert request.path == "/openai/deployments/prod-chat/chat/completions"
    snap = await limiter.snapshot()
    usd, tokens = snap[0], snap[1]
    assert usd.used == priced(provider, "gpt-4o")
    assert usd.used > 0
    assert usd.reserved == 0
    assert tokens.used == request.prompt_tokens + request.output_tokens


async def test_an_unmapped_azure_deployment_is_priced_by_the_responses_model(
    anyio_backend: str,
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider(models={"prod-chat": "gpt-4o-mini-2024-07-18"})
    limiter = Limiter(Cap(usd="10"))
    # the reservation needs a price before any response: a rate for a
    # deployment name the price table does not know
    llm = azure(
        limiter, provider, unknown_model={"input_mtok": "100", "output_mtok": "100"}
    )
    await llm.chat.completions.create(model="prod-chat", messages=MESSAGES)
    usd = (await limiter.snapshot())[0]
    assert usd.used == priced(provider, "gpt-4o-mini-2024-07-18")
    assert usd.used > 0
    assert usd.reserved == 0


async def test_an_unknown_azure_deployment_is_refused_before_it_is_sent(
    anyio_backend: str,
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    llm = azure(Limiter(Cap(usd="10")), provider)
    with pytest.raises(InvalidRequest, match="prod-chat") as refused:
        await llm.chat.completions.create(model="prod-chat", messages=MESSAGES)
    assert "unknown_model=" in str(refused.value)  # the transport's keyword
    assert provider.requests == []


async def test_an_unrecognised_post_is_refused_by_default(anyio_backend: str) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    llm = client(Limiter(Cap(usd="10")), provider, "http://fake/v1")
    with pytest.raises(UnmeteredCall, match="unmetered=") as caught:
        await llm.images.generate(model="dall-e-3", prompt="a cat")
    assert (caught.value.method, caught.value.path) == (
        "POST",
        "/v1/images/generations",
    )
    assert "/v1/images/generations" in str(caught.value)
    assert provider.requests == []


@pytest.mark.parametrize(("policy", "warned"), [("warn", True), ("allow", False)])
async def test_warn_or_allow_sends_it(
    policy: str, warned: bool, anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    llm = client(Limiter(Cap(usd="10")), provider, "http://fake/v1", unmetered=policy)
    with caplog.at_level(logging.DEBUG, logger="ratebudget"):
        with pytest.raises(openai.NotFoundError):  # sent: the fake has no images
            await llm.images.generate(model="dall-e-3", prompt="a cat")
    records = [r for r in caplog.records if "unmetered" in r.getMessage()]
    assert [r.levelno for r in records] == ([logging.WARNING] if warned else [])
    if warned:
        assert "/v1/images/generations" in records[0].getMessage()


@pytest.mark.parametrize(
    "path", ["/v1/messages/count_tokens", "/v1/responses/input_tokens", "/v1/files"]
)
async def test_calls_nobody_is_billed_for_pass_under_raise(
    path: str, anyio_backend: str
) -> None:
    provider = FakeProvider()
    transport = BudgetTransport(
        Limiter(Cap(usd="10")), transport=httpx2.ASGITransport(app=provider)
    )
    async with httpx2.AsyncClient(transport=transport, base_url="http://fake") as c:
        response = await c.post(path, json={"model": "gpt-4o"})
    assert response.status_code == 404  # reached the provider


async def test_a_body_that_is_not_json_follows_unmetered(anyio_backend: str) -> None:
    provider = FakeProvider()
    limiter = Limiter(Cap(tokens=100))
    for policy, sent in (("raise", False), ("allow", True)):
        transport = BudgetTransport(
            limiter, transport=httpx2.ASGITransport(app=provider), unmetered=policy
        )
        async with httpx2.AsyncClient(transport=transport, base_url="http://x") as c:
            if sent:
                response = await c.post("/v1/chat/completions", content=b"[1, 2]")
                assert response.status_code == 400
            else:
                with pytest.raises(UnmeteredCall, match="not a JSON object"):
                    await c.post("/v1/chat/completions", content=b"[1, 2]")
    assert len(provider.requests) == 1


def test_the_sync_transport_refuses_too() -> None:
    provider = FakeProvider()
    transport = BudgetSyncTransport(
        Limiter(Cap(usd="10")), transport=httpx2.WSGITransport(app=_no_app)
    )
    with httpx2.Client(transport=transport, base_url="http://fake") as c:
        with pytest.raises(UnmeteredCall):
            c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi"})
    assert provider.requests == []


def _no_app(environ: Any, start_response: Any) -> Any:  # pragma: no cover
    raise AssertionError("nothing may be sent")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"unmetered": "ignore"}, "unmetered='ignore'"),
        ({"unmetered": True}, "unmetered=True"),
        ({"models": {"dep": ""}}, "models="),
        ({"models": {"": "gpt-4o"}}, "models="),
        ({"models": {"dep": 4}}, "models="),
        ({"shrink": "yes"}, "shrink="),
        ({"min_output_tokens": 0}, "min_output_tokens="),
        ({"min_output_tokens": 1.5}, "min_output_tokens="),
        ({"min_output_tokens": True}, "min_output_tokens="),
    ],
)
def test_bad_options_are_refused(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        BudgetTransport(Limiter(Cap(usd="1")), **kw)


# -- shrink=True: the output the budget still allows, instead of a refusal --


def worst_case(endpoint: Endpoint, body: dict[str, Any]) -> Decimal:
    """What the transport reserves for ``body``: its estimate, priced."""
    return estimate_cost("gpt-4o", estimate(endpoint, body), provider="openai")


async def test_a_call_is_sent_with_the_output_the_cap_still_allows(
    anyio_backend: str,
) -> None:
    asyncio_only(anyio_backend)
    cap = Decimal("0.01")  # about 1,000 output tokens of gpt-4o
    limiter, provider = Limiter(Cap(usd=cap)), FakeProvider()
    llm = client(
        limiter, provider, "http://fake/v1", shrink=True, min_output_tokens=256
    )
    raw = await llm.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=4_000
    )
    fits = int(raw.headers[SHRUNK_HEADER])
    (sent,) = provider.requests
    assert sent.body["max_tokens"] == fits
    assert 256 <= fits < 4_000
    # the most that fits, exactly: one more token would cross the cap
    body = dict(sent.body)
    assert worst_case(Endpoint.OPENAI_CHAT, body) <= cap
    body["max_tokens"] = fits + 1
    assert worst_case(Endpoint.OPENAI_CHAT, body) > cap
    (usd,) = (await limiter.snapshot()).limits
    assert usd.reserved == 0
    assert 0 < usd.used <= cap


async def test_every_output_limit_the_body_sets_is_lowered(anyio_backend: str) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    llm = client(Limiter(Cap(usd="0.01")), provider, "http://fake/v1", shrink=True)
    await llm.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, max_completion_tokens=4_000
    )
    await llm.responses.create(model="gpt-4o", input="hello", max_output_tokens=4_000)
    chat, responses = provider.requests
    assert "max_tokens" not in chat.body
    assert 256 <= chat.body["max_completion_tokens"] < 4_000
    assert 256 <= responses.body["max_output_tokens"] < 4_000


@pytest.mark.parametrize(
    ("cap", "kw"),
    [
        ("0.001", {"shrink": True}),  # $0.001 buys about 99 tokens: under 256
        ("0.01", {}),  # without shrink=True
    ],
)
async def test_a_call_that_cannot_shrink_enough_is_refused(
    cap: str, kw: dict[str, Any], anyio_backend: str
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    llm = client(Limiter(Cap(usd=cap)), provider, "http://fake/v1", **kw)
    with pytest.raises(BudgetExceeded):
        await llm.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=4_000
        )
    assert provider.requests == []


async def test_a_call_that_fits_is_sent_as_it_is(anyio_backend: str) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    llm = client(Limiter(Cap(usd="10")), provider, "http://fake/v1", shrink=True)
    raw = await llm.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=4_000
    )
    assert SHRUNK_HEADER not in raw.headers
    assert provider.requests[0].body["max_tokens"] == 4_000


def test_the_sync_transport_shrinks_too() -> None:
    provider = FakeProvider()
    transport = BudgetSyncTransport(Limiter(Cap(usd="0.01")), shrink=True)
    with provider.serve_in_thread() as url:
        with httpx2.Client(transport=transport, base_url=url) as c:
            response = c.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 4_000},
            )
    assert response.status_code == 200
    fits = int(response.headers[SHRUNK_HEADER])
    assert provider.requests[0].body["max_tokens"] == fits
