"""``limiter.meter()``: the manual API, with the real SDKs' response objects."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import openai
import pytest

from ratebudget import BudgetExceeded, Cap, InvalidRequest, Limiter
from ratebudget.integrations.prices import price
from ratebudget.integrations.usage import Usage
from ratebudget.testing import FakeProvider


def clients(provider: FakeProvider) -> tuple[Any, Any]:
    oa = openai.AsyncOpenAI(
        api_key="x",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=provider)),
    )
    an = anthropic.AsyncAnthropic(
        api_key="x",
        base_url="http://fake",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=provider)),
    )
    return oa, an


@pytest.fixture
def asyncio_only(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("the SDKs' async clients run on asyncio only")


@pytest.mark.usefixtures("asyncio_only")
async def test_settle_commits_what_an_sdk_response_reports() -> None:
    provider = FakeProvider(cached_tokens=1)
    limiter = Limiter(Cap(tokens=10**6), Cap(usd="1"))
    oa, an = clients(provider)
    messages: Any = [{"role": "user", "content": "a few words for the model"}]
    async with limiter.meter(model="gpt-4o", messages=messages, max_tokens=30) as m:
        reply = await oa.chat.completions.create(
            model="gpt-4o", messages=messages, max_tokens=30
        )
        usage = await m.settle(reply)
    assert usage.input_tokens == reply.usage.prompt_tokens
    assert usage.cached_input_tokens == 1
    async with limiter.meter(
        model="claude-3-5-sonnet-latest",
        provider="anthropic",
        messages=messages,
        max_tokens=30,
    ) as m:
        message = await an.messages.create(
            model="claude-3-5-sonnet-latest", max_tokens=30, messages=messages
        )
        await m.settle(message)
    snap = await limiter.snapshot()
    assert snap[0].used == provider.usage_total().total_tokens
    a, b = provider.requests
    expected = price(
        "gpt-4o",
        Usage(a.prompt_tokens, a.output_tokens, cached_input_tokens=a.cached_tokens),
        provider="openai",
    ) + price(
        "claude-3-5-sonnet-latest",
        Usage(b.prompt_tokens, b.output_tokens, cached_input_tokens=b.cached_tokens),
        provider="anthropic",
    )
    assert snap[1].used == expected
    assert (snap[0].reserved, snap[1].reserved) == (0, 0)


async def test_the_estimate_is_reserved_and_a_cap_refuses_before_the_call() -> None:
    limiter = Limiter(Cap(usd="0.001"))
    with pytest.raises(BudgetExceeded):
        # up to 1,000 output tokens of gpt-4o: $0.01, past the cap
        async with limiter.meter(model="gpt-4o", prompt="hi", max_tokens=1_000):
            pytest.fail("the call would have been made")
    async with limiter.meter(model="gpt-4o", prompt="hi", max_tokens=10):
        snap = await limiter.snapshot()
        assert snap[0].reserved > 0
    snap = await limiter.snapshot()  # left without settle: the estimate counts
    assert snap[0].reserved == 0
    assert snap[0].used > 0


async def test_an_exception_releases_and_bad_input_is_refused() -> None:
    limiter = Limiter(Cap(tokens=10**6))
    with pytest.raises(RuntimeError):
        async with limiter.meter(model="m", prompt="hello", max_tokens=5):
            raise RuntimeError("the call failed")
    snap = await limiter.snapshot()
    assert (snap[0].used, snap[0].reserved) == (0, 0)
    with pytest.raises(InvalidRequest):
        limiter.meter(model="", prompt="x")
    with pytest.raises(InvalidRequest):
        limiter.meter(model="m", prompt="x", n=0)
    async with limiter.meter(model="m", prompt="x", max_tokens=5) as m:
        with pytest.raises(InvalidRequest):
            await m.settle(object())
        with pytest.raises(InvalidRequest):
            await m.settle({"object": "chat.completion"})  # no usage in it
    assert (await limiter.snapshot())[0].used == m.estimate.input_tokens + 5
