"""PydanticAI agents, metered through ``BudgetTransport``: ``tests/agent_runs.py``'s
checks with the real ``pydantic-ai-slim`` and its OpenAI chat model.

PydanticAI does not retry a model request that failed (``FallbackModel`` is
opt-in, and falls back on ``ModelAPIError`` only), and lets an exception of
the HTTP client through as it is: ``BudgetExceeded`` reaches the caller of
``agent.run`` unchanged. Its runs need asyncio (2.x waits on
``asyncio.create_task`` tasks around every run), so the trio runs are
skipped, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pydantic_ai")

from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.models.fallback import FallbackModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from agent_runs import (
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
from ratebudget import Runaway

anyio_backend = asyncio_only(
    "PydanticAI's Agent.run needs asyncio (it waits on asyncio.create_task "
    "tasks around every run; RuntimeError: no running event loop on trio)"
)


def agent_of(t: Team, *, max_retries: int = 2, fallback: bool = False) -> Run:
    client = AsyncOpenAI(
        api_key="sk-test",
        base_url=t.base_url,
        max_retries=max_retries,
        http_client=t.http,
    )
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))
    agent = Agent(
        FallbackModel(model, model) if fallback else model,
        instructions=INSTRUCTIONS,
        model_settings={"max_tokens": MAX_TOKENS},
    )

    @agent.tool_plain
    def lookup(input: str) -> str:
        """Look a fact up."""
        return t.tool(input)

    async def run(prompt: str) -> str:
        return (await agent.run(prompt)).output

    return run


async def test_a_run_is_metered_exactly(anyio_backend: str, tmp_path: Path) -> None:
    async with team(tmp_path, tool_turns=1) as t:
        await check_a_run_is_metered_exactly(t, agent_of(t))


async def test_a_loop_is_stopped_by_its_run_cap(
    anyio_backend: str, tmp_path: Path
) -> None:
    """With the SDK's retries up and a fallback model, still one refusal:
    neither retries nor falls back on ``BudgetExceeded``."""
    async with team(tmp_path, tool_turns=None) as t:
        run = agent_of(t, max_retries=5, fallback=True)
        await check_a_loop_is_stopped_by_its_run_cap(t, run)


async def test_a_loop_is_stopped_as_a_runaway(
    anyio_backend: str, tmp_path: Path
) -> None:
    rule = Runaway(window="5m", min_usd="0.20", action="block")
    async with team(tmp_path, tool_turns=None, run_limits=(), runaway=rule) as t:
        await check_a_loop_is_stopped_as_a_runaway(t, agent_of(t))
