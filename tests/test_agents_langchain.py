"""LangChain chat models in a tool-calling loop, metered through
``BudgetTransport``: ``tests/agent_runs.py``'s checks with the real
``langchain-openai`` (``ChatOpenAI.bind_tools``, ``ToolMessage``), and
``LangChainRateLimiter`` asked before every model call.

``ChatOpenAI(max_retries=...)`` is the OpenAI SDK's own retry, which lets
``BudgetExceeded`` through; LangChain re-raises what the model raised after
telling its callbacks. ``Runnable.with_retry()`` retries *every* exception
by default, ``BudgetExceeded`` included: give it the errors worth retrying
(``retry_if_exception_type=(openai.APIError,)``), as the loop here does.
LangChain's async calls need asyncio (``asyncio.gather``): the trio runs
are skipped, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("langchain_openai")

import openai
from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from agent_runs import (
    ASK,
    INSTRUCTIONS,
    MAX_TOKENS,
    MODEL,
    Run,
    Team,
    asyncio_only,
    check_a_loop_is_stopped_as_a_runaway,
    check_a_loop_is_stopped_by_its_run_cap,
    check_a_run_is_metered_exactly,
    team,
)
from ratebudget import Cap, Limiter, Rate, Runaway
from ratebudget.integrations.langchain import LangChainRateLimiter

anyio_backend = asyncio_only("LangChain's async model calls run on asyncio only")


def agent_of(t: Team, rate_limiter: LangChainRateLimiter | None = None) -> Run:
    @tool
    def lookup(input: str) -> str:
        """Look a fact up."""
        return t.tool(input)

    model = ChatOpenAI(
        model=MODEL,
        api_key=SecretStr("sk-test"),
        base_url=t.base_url,
        max_completion_tokens=MAX_TOKENS,
        max_retries=5,
        http_async_client=t.http,
        rate_limiter=rate_limiter,
    )
    step = model.bind_tools([lookup]).with_retry(
        retry_if_exception_type=(openai.APIError,), stop_after_attempt=3
    )

    async def run(prompt: str) -> str:
        messages: list[BaseMessage] = [
            SystemMessage(INSTRUCTIONS),
            HumanMessage(prompt),
        ]
        while True:
            reply = await step.ainvoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                return str(reply.content)
            for call in reply.tool_calls:
                output = await lookup.ainvoke(call["args"])
                messages.append(ToolMessage(output, tool_call_id=call["id"]))

    return run


async def test_a_run_is_metered_exactly(anyio_backend: str, tmp_path: Path) -> None:
    async with team(tmp_path, tool_turns=1) as t:
        await check_a_run_is_metered_exactly(t, agent_of(t))


async def test_a_loop_is_stopped_by_its_run_cap(
    anyio_backend: str, tmp_path: Path
) -> None:
    """``LangChainRateLimiter`` on the provider's own request rate counts
    every model call LangChain made: those sent, and the one refused."""
    rpm = Limiter(Rate(requests=500, per="minute"), Cap(requests=1_000))
    async with team(tmp_path, tool_turns=None) as t:
        await check_a_loop_is_stopped_by_its_run_cap(
            t, agent_of(t, LangChainRateLimiter(rpm))
        )
        (_, calls) = (await rpm.snapshot()).limits
        assert calls.used == len(t.attempts) == len(t.provider.requests) + 1
        assert len([a for a in t.attempts if ASK in a]) >= 10


async def test_a_loop_is_stopped_as_a_runaway(
    anyio_backend: str, tmp_path: Path
) -> None:
    rule = Runaway(window="5m", min_usd="0.20", action="block")
    async with team(tmp_path, tool_turns=None, run_limits=(), runaway=rule) as t:
        await check_a_loop_is_stopped_as_a_runaway(t, agent_of(t))
