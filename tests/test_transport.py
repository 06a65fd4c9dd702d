"""``BudgetTransport`` with the real ``openai`` and ``anthropic`` SDKs.

The provider is ``ratebudget.testing.FakeProvider``, in process (its ASGI
app behind the client package's own ``ASGITransport``); its request log is
what went out. The SDKs' async clients run on asyncio only; the transport
itself is also checked on trio with a bare client.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import anthropic
import anyio
import httpx
import httpx2
import openai
import pytest

from ratebudget import BudgetExceeded, Cap, Limiter, Rate
from ratebudget.integrations.httpx import BudgetSyncTransport, BudgetTransport
from ratebudget.integrations.prices import price
from ratebudget.integrations.usage import Usage
from ratebudget.testing import FakeProvider

PACKAGES = [httpx, httpx2]


def asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("the SDKs' async clients run on asyncio only")


def openai_client(pkg: Any, limiter: Limiter, provider: FakeProvider, **kw: Any) -> Any:
    transport = BudgetTransport(
        limiter, transport=pkg.ASGITransport(app=provider), **kw
    )
    return openai.AsyncOpenAI(
        api_key="x",
        base_url="http://fake/v1",
        max_retries=2,
        http_client=pkg.AsyncClient(transport=transport),
    )


def anthropic_client(limiter: Limiter, provider: FakeProvider) -> Any:
    transport = BudgetTransport(limiter, transport=httpx2.ASGITransport(app=provider))
    return anthropic.AsyncAnthropic(
        api_key="x",
        base_url="http://fake",
        max_retries=2,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def logged_cost(provider: FakeProvider) -> Decimal:
    """What the provider's own log says was used, priced by genai-prices."""
    total = Decimal(0)
    for r in provider.requests:
        if r.status == 200:
            usage = Usage(
                input_tokens=r.prompt_tokens,
                output_tokens=r.output_tokens,
                cached_input_tokens=r.cached_tokens,
                reasoning_tokens=r.reasoning_tokens,
            )
            family = "anthropic" if r.path.endswith("/messages") else "openai"
            total += price(str(r.model), usage, provider=family)
    return total


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.__name__)
async def test_openai_usage_is_committed_token_for_token(
    pkg: Any, anyio_backend: str
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider(cached_tokens=1)
    limiter = Limiter(Cap(tokens=10**6), Cap(usd="10"))
    client = openai_client(pkg, limiter, provider)
    messages = [{"role": "user", "content": "say something about tokens please"}]
    await client.chat.completions.create(
        model="gpt-4o", messages=messages, max_tokens=20
    )
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=messages, max_tokens=20, stream=True
    )
    async for _ in stream:
        pass
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    reply = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "use the tool now"}],
        tools=tools,
        max_tokens=20,
    )
    assert reply.choices[0].message.tool_calls
    await client.embeddings.create(
        model="text-embedding-3-small", input="some words here"
    )
    snap = await limiter.snapshot()
    assert snap[0].used == provider.usage_total().total_tokens
    assert snap[0].reserved == 0
    assert snap[1].used == logged_cost(provider)
    assert snap[1].used > 0


async def test_anthropic_usage_is_committed_token_for_token(anyio_backend: str) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider(cached_tokens=2)
    limiter = Limiter(Cap(tokens=10**6), Cap(usd="10"))
    client = anthropic_client(limiter, provider)
    messages = [{"role": "user", "content": "tell me a short story about cats"}]
    model = "claude-3-5-sonnet-latest"
    await client.messages.create(model=model, max_tokens=30, messages=messages)
    async with client.messages.stream(
        model=model, max_tokens=30, messages=messages
    ) as s:
        await s.get_final_message()
    snap = await limiter.snapshot()
    assert snap[0].used == provider.usage_total().total_tokens
    assert snap[1].used == logged_cost(provider)
    assert (snap[0].reserved, snap[1].reserved) == (0, 0)


async def test_a_usd_cap_stops_a_fan_out_before_the_crossing_call(
    anyio_backend: str,
) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    cap = Decimal("0.01")
    limiter = Limiter(Cap(usd=cap))
    client = openai_client(httpx2, limiter, provider)
    refused = 0

    async def one(k: int) -> None:
        nonlocal refused
        try:
            await client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": f"question number {k} " * 20}],
                max_tokens=200,
            )
        except BudgetExceeded:
            refused += 1

    async with anyio.create_task_group() as tg:
        for k in range(100):
            tg.start_soon(one, k)
    sent = len(provider.requests)
    assert refused > 0
    assert sent + refused == 100  # a refusal was never retried into a request
    assert logged_cost(provider) <= cap  # nothing went out past the cap
    assert (await limiter.snapshot())[0].used == logged_cost(provider)


async def test_a_429_holds_every_caller_for_its_retry_after(anyio_backend: str) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider()
    limiter = Limiter(Rate(requests=1000, per="minute"))
    client = openai_client(httpx2, limiter, provider)
    client = client.with_options(max_retries=0)
    provider.fail_next(status=429, retry_after=1)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=messages)
    refused_at = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(
                lambda: client.chat.completions.create(
                    model="gpt-4o", messages=messages
                )
            )
    started = [r.time for r in provider.requests[1:]]
    assert len(started) == 3
    assert min(started) >= refused_at + 0.95  # all of them waited it out


async def test_cancelling_mid_stream_commits_what_was_used(anyio_backend: str) -> None:
    asyncio_only(anyio_backend)
    provider = FakeProvider(stream_delay=0.05)
    limiter = Limiter(Cap(tokens=10**6))
    messages: Any = [
        {"role": "user", "content": "one two three four five six seven eight"}
    ]
    async with provider.serve() as url:  # a real stream, over loopback
        client = openai.AsyncOpenAI(
            api_key="x",
            base_url=url + "/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=BudgetTransport(limiter)),
        )
        got = 0
        with anyio.move_on_after(0.2):
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=messages, max_tokens=50, stream=True
            )
            async with stream:
                async for _ in stream:
                    got += 1
        assert 0 < got < 9  # cut short mid-stream
    snap = await limiter.snapshot()
    assert snap[0].reserved == 0
    (request,) = provider.requests
    assert snap[0].used >= request.prompt_tokens  # at least the input


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.__name__)
async def test_the_transport_runs_on_any_backend(pkg: Any) -> None:
    provider = FakeProvider()
    limiter = Limiter(Cap(tokens=10**6))
    transport = BudgetTransport(limiter, transport=pkg.ASGITransport(app=provider))
    async with pkg.AsyncClient(transport=transport, base_url="http://fake") as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "a b c"}]},
        )
        assert r.status_code == 200
        passed = await client.get("/v1/models")  # not an LLM call: untouched
        assert passed.status_code != 200 or "data" in passed.json()
    snap = await limiter.snapshot()
    assert snap[0].used == provider.usage_total().total_tokens
    assert len(provider.requests) == 2 or len(provider.requests) == 1


def test_the_sync_transport_with_the_sync_sdks() -> None:
    provider = FakeProvider()
    limiter = Limiter(Cap(tokens=10**6), Cap(usd="10"))
    broke = Limiter(Cap(usd="0.0000001"))
    messages: Any = [{"role": "user", "content": "count these few words"}]
    with (
        provider.serve_in_thread() as url,
        httpx2.Client(transport=BudgetSyncTransport(limiter)) as http,
        httpx2.Client(transport=BudgetSyncTransport(broke)) as poor_http,
    ):
        oa = openai.OpenAI(
            api_key="x", base_url=url + "/v1", max_retries=2, http_client=http
        )
        oa.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=20)
        with oa.chat.completions.create(
            model="gpt-4o", messages=messages, max_tokens=20, stream=True
        ) as stream:
            for _ in stream:
                pass
        an = anthropic.Anthropic(
            api_key="x", base_url=url, max_retries=2, http_client=http
        )
        an.messages.create(
            model="claude-3-5-sonnet-latest", max_tokens=20, messages=messages
        )
        sent = len(provider.requests)
        poor = openai.OpenAI(
            api_key="x", base_url=url + "/v1", max_retries=2, http_client=poor_http
        )
        with pytest.raises(BudgetExceeded):
            poor.chat.completions.create(
                model="gpt-4o", messages=messages, max_tokens=20
            )
        assert len(provider.requests) == sent  # refused before anything went out
    snap = limiter.sync.snapshot()
    assert snap[0].used == provider.usage_total().total_tokens
    assert snap[1].used == logged_cost(provider)
    assert (snap[0].reserved, snap[1].reserved) == (0, 0)


async def chat(client: Any) -> int:
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    return int(r.status_code)


@pytest.mark.parametrize("adapt", [True, False])
async def test_clients_sharing_a_key_converge_on_the_providers_headers(
    adapt: bool,
) -> None:
    from ratebudget import AcquireTimeout

    provider = FakeProvider(rpm=20)
    statuses: list[int] = []
    timeouts = 0

    def client(limiter: Limiter) -> Any:
        transport = BudgetTransport(
            limiter,
            transport=httpx2.ASGITransport(app=provider),
            timeout=0,
            adapt=adapt,
        )
        return httpx2.AsyncClient(transport=transport, base_url="http://fake")

    # two processes, one API key: each thinks it has all 20 requests a minute
    a, b = (Limiter(Rate(requests=20, per="minute")) for _ in range(2))
    async with client(a) as first, client(b) as second:
        statuses.extend([await chat(first) for _ in range(15)])
        for _ in range(11):
            try:
                statuses.append(await chat(second))
            except AcquireTimeout:  # it would have to wait: the budget is spent
                timeouts += 1
    if adapt:
        # b read what remains from its first answer, and waits instead of
        # getting the provider's 429s
        assert 429 not in statuses
        assert statuses.count(200) == 20
        assert timeouts == 6
    else:
        # b sends until the provider refuses; the 429's Retry-After then
        # holds its other calls, which fail at once with timeout=0
        assert statuses.count(429) == 1
        assert timeouts == 5


async def test_lower_only_ever_lowers_the_matching_rates(tmp_path: Any) -> None:
    from ratebudget.testing import FakeClock

    clock = FakeClock()
    limiter = Limiter(
        Rate(tokens=100, per="minute"), Rate(tokens=1_000, per="hour"), clock=clock
    )
    limiter.lower(per=60, tokens=30)
    snap = await limiter.snapshot()
    assert (snap[0].tokens, snap[1].tokens) == (30, 1_000)
    limiter.lower(per=60, tokens=80)  # never raised
    assert (await limiter.snapshot())[0].tokens == 30
    clock.advance(6)  # refills as usual: 100 per minute
    assert (await limiter.snapshot())[0].tokens == 40
    limiter.lower(tokens=5)  # every period
    snap = await limiter.snapshot()
    assert (snap[0].tokens, snap[1].tokens) == (5, 5)
    shared = Limiter(
        Rate(tokens=100, per="minute"), store=f"sqlite:///{tmp_path}/b.db", name="x"
    )
    shared.lower(tokens=1)  # a shared bucket too: sent with the next store call
    assert (await shared.snapshot())[0].tokens == 1
