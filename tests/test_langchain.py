"""The LangChain adapter, with a LangChain chat model asking it before each call."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.language_models.fake_chat_models import FakeListChatModel

from ratebudget import BudgetExceeded, Cap, InvalidRequest, Limiter, Rate
from ratebudget.integrations.langchain import LangChainRateLimiter


def test_each_model_call_takes_one_request() -> None:
    limiter = Limiter(Cap(requests=3), Cap(tokens=10_000))
    model = FakeListChatModel(
        responses=["a", "b", "c", "d"],
        rate_limiter=LangChainRateLimiter(limiter, tokens=100),
    )
    assert [model.invoke("hi").content for _ in range(3)] == ["a", "b", "c"]
    with pytest.raises(BudgetExceeded):  # a hard cap refuses: no fourth call
        model.invoke("hi")
    snap = limiter.sync.snapshot()
    assert (snap[0].used, snap[1].used) == (3, 300)


async def test_async_calls_and_non_blocking_attempts(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("LangChain's async model calls run on asyncio")
    limiter = Limiter(Rate(requests=2, per="hour"))
    adapter = LangChainRateLimiter(limiter)
    model = FakeListChatModel(responses=["x", "y"], rate_limiter=adapter)
    assert (await model.ainvoke("hi")).content == "x"
    assert await adapter.aacquire(blocking=False) is True
    assert await adapter.aacquire(blocking=False) is False  # the hour's two are spent
    assert adapter.acquire(blocking=False) is False


def test_bad_amounts_are_refused_at_construction() -> None:
    with pytest.raises(InvalidRequest):
        LangChainRateLimiter(Limiter(Cap(tokens=1)), tokens=-1)
    with pytest.raises(InvalidRequest):
        LangChainRateLimiter("not a limiter")  # type: ignore[arg-type]
