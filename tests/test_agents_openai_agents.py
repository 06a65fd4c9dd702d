"""OpenAI Agents SDK runs, metered through ``BudgetTransport``:
``tests/agent_runs.py``'s checks with the real ``openai-agents``, on its
Responses model (its default) with an ``AsyncOpenAI`` client of our own.

The SDK retries a model call only when asked (``ModelSettings(retry=
ModelRetrySettings(...))``), and then only what its policy accepts: its own
policies (provider advice, network errors, ``Retry-After``, HTTP statuses)
turn ``BudgetExceeded`` down, so it reaches the caller of ``Runner.run``
unchanged, after one log line at ERROR ("Error getting response"). The SDK
runs on asyncio only (``asyncio.create_task``, ``asyncio.gather``): the
trio runs are skipped, saying why. Tracing is off (``RunConfig``): nothing
leaves the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("agents")

from agents import (
    Agent,
    ModelRetrySettings,
    ModelSettings,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
    retry_policies,
)
from openai import AsyncOpenAI

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
    "the OpenAI Agents SDK runs on asyncio only (asyncio.create_task)"
)


def agent_of(t: Team, *, retries: int = 0) -> Run:
    client = AsyncOpenAI(
        api_key="sk-test", base_url=t.base_url, max_retries=5, http_client=t.http
    )

    @function_tool
    def lookup(input: str) -> str:
        """Look a fact up."""
        return t.tool(input)

    retry = None
    if retries:  # every policy the SDK ships, any of them may retry
        policy = retry_policies.any(
            retry_policies.provider_suggested(),
            retry_policies.network_error(),
            retry_policies.retry_after(),
            retry_policies.http_status([408, 429, 500, 502, 503]),
        )
        retry = ModelRetrySettings(
            max_retries=retries, backoff={"initial_delay": 0.01}, policy=policy
        )
    agent = Agent(
        name="researcher",
        instructions=INSTRUCTIONS,
        tools=[lookup],
        model=OpenAIResponsesModel(MODEL, openai_client=client),
        model_settings=ModelSettings(max_tokens=MAX_TOKENS, retry=retry),
    )

    async def run(prompt: str) -> str:
        result = await Runner.run(
            agent,
            prompt,
            max_turns=1_000,  # the budget stops a loop, not the turn limit
            run_config=RunConfig(tracing_disabled=True),
        )
        return str(result.final_output)

    return run


async def test_a_run_is_metered_exactly(anyio_backend: str, tmp_path: Path) -> None:
    async with team(tmp_path, tool_turns=1) as t:
        await check_a_run_is_metered_exactly(t, agent_of(t))


async def test_a_loop_is_stopped_by_its_run_cap(
    anyio_backend: str, tmp_path: Path
) -> None:
    """With the runner's retries on (every policy the SDK ships) and the
    client's too: still one refused attempt."""
    async with team(tmp_path, tool_turns=None) as t:
        await check_a_loop_is_stopped_by_its_run_cap(t, agent_of(t, retries=3))


async def test_a_loop_is_stopped_as_a_runaway(
    anyio_backend: str, tmp_path: Path
) -> None:
    rule = Runaway(window="5m", min_usd="0.20", action="block")
    async with team(tmp_path, tool_turns=None, run_limits=(), runaway=rule) as t:
        await check_a_loop_is_stopped_as_a_runaway(t, agent_of(t, retries=3))
