"""What every agent framework's test checks, one framework at a time.

A framework's test module builds, for a ``Team``, an agent whose model calls
go through ``BudgetTransport(team.limiter)`` to ``FakeProvider`` on
loopback, with one tool (``Tool``), and hands ``run(prompt) -> output`` to
the checks here:

* ``check_a_run_is_metered_exactly``: an agent that calls its tool once
  and answers; the run's scope, the team's rates and caps and the ledger's
  group of the run count exactly what the provider's own log says it
  served, priced call by call.
* ``check_a_loop_is_stopped_by_its_run_cap``: an agent that calls its tool
  forever, in ``ratebudget.scope(runs[run_id])``, stops with the very
  ``BudgetExceeded`` the transport raised, before the next call is sent,
  within one call of its cap, while other runs of the team proceed.
* ``check_a_loop_is_stopped_as_a_runaway``: the same with no cap on the
  run, only ``per_key(runaway=Runaway(...))``.

The team's clock is a ``FakeClock`` that never moves, so its rates never
refill during a test: what a rate took is exactly what the calls used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import anyio
import httpx2
import pytest

import ratebudget
from ratebudget import BudgetExceeded, Cap, Keys, Ledger, Limiter, Rate, Runaway
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.integrations.prices import price
from ratebudget.integrations.usage import Usage
from ratebudget.testing import FakeClock, FakeProvider

MODEL = "gpt-4o"
MAX_TOKENS = 100
INSTRUCTIONS = "Answer briefly. " + "context " * 8_000  # ~ $0.02 a call
"""A long system prompt: each call of an agent costs about $0.02 in input."""
ASK = "look it up with the tool please"
"""A prompt that makes ``FakeProvider`` answer with a call of the tool."""
CHAT = "what is a token bucket"
"""A prompt answered at once, without the tool."""
TOOL_OUTPUT = "42"

Run = Callable[[str], Awaitable[str]]
"""Runs the framework's agent on a prompt, in the current ``ratebudget.scope``,
and returns its final output."""


def asyncio_only(reason: str) -> Callable[[pytest.FixtureRequest], str]:
    """An ``anyio_backend`` fixture for a framework that runs on asyncio
    only: its trio runs skip, saying ``reason``."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request: pytest.FixtureRequest) -> str:
        if request.param == "trio":
            pytest.skip(reason)
        return str(request.param)

    return anyio_backend


@dataclass
class Tool:
    """The agent's tool: ``lookup(input) -> "42"``, counting its calls."""

    calls: list[str] = field(default_factory=list)

    def __call__(self, input: str) -> str:
        self.calls.append(input)
        return TOOL_OUTPUT


@dataclass
class Team:
    """A team's limiter on a ledger, its per-run scopes, and an HTTP client
    metered by it for the framework's SDK client."""

    provider: FakeProvider
    base_url: str
    """The provider's OpenAI API root, ``http://127.0.0.1:PORT/v1``."""
    limiter: Limiter
    runs: Keys
    ledger: Ledger
    tool: Tool
    http: httpx2.AsyncClient
    """``httpx2.AsyncClient(transport=BudgetTransport(limiter))``."""
    attempts: list[str] = field(default_factory=list)
    """The body of every request ``http`` was asked to send, refused or not
    (a retry of a refused call shows here, never in the provider's log)."""


@asynccontextmanager
async def team(
    tmp_path: Path,
    *,
    tool_turns: int | None,
    run_limits: tuple[Rate | Cap, ...] = (Cap(usd="0.50"), Cap(requests=30)),
    runaway: Runaway | None = None,
) -> AsyncIterator[Team]:
    """A ``FakeProvider`` served on loopback and a team budget for it:
    ``runs = team.per_key(Cap(usd="0.50"), Cap(requests=30))`` by default."""
    provider = FakeProvider(tool_turns=tool_turns)
    ledger = Ledger(f"sqlite:///{tmp_path / 'usage.db'}")
    limiter = Limiter(
        Rate(requests=10_000, per="minute"),
        Rate(tokens=100_000_000, per="minute"),
        Cap(usd="100", per="day"),
        name="team",
        clock=FakeClock(),
        ledger=ledger,
    )
    runs = limiter.per_key(*run_limits, runaway=runaway)
    attempts: list[str] = []

    async def attempted(request: httpx2.Request) -> None:
        attempts.append(request.content.decode())

    try:
        async with (
            provider.serve() as base_url,
            httpx2.AsyncClient(
                transport=BudgetTransport(limiter),
                event_hooks={"request": [attempted]},
            ) as http,
        ):
            yield Team(
                provider,
                base_url + "/v1",
                limiter,
                runs,
                ledger,
                Tool(),
                http,
                attempts,
            )
    finally:
        ledger.close()


def cost(provider: FakeProvider, first: int = 0, last: int | None = None) -> Decimal:
    """What the provider's log says its served calls cost, priced one by one."""
    return sum(
        (
            price(MODEL, Usage(r.prompt_tokens, r.output_tokens))
            for r in provider.requests[first:last]
            if r.status == 200
        ),
        Decimal(0),
    )


def used(snapshot: ratebudget.Snapshot, axis: str) -> Decimal:
    (limit,) = (x for x in snapshot.limits if x.axis == axis)
    return Decimal(limit.used)


async def check_a_run_is_metered_exactly(team: Team, run: Run) -> None:
    """One run: a tool call, then the answer; every count matches the log."""
    with ratebudget.scope(team.runs["run-1"]):
        output = await run(ASK)
    assert "echo:" in output
    provider = team.provider
    served = provider.requests
    assert [r.status for r in served] == [200, 200]
    assert team.tool.calls, "the tool was never called"
    assert provider.usage_total().requests == 2
    # the second call carries the tool's output back to the model
    assert TOOL_OUTPUT in str(served[1].body)
    usd = cost(provider)
    tokens = provider.usage_total().total_tokens
    run_snap = await team.runs["run-1"].snapshot()
    assert used(run_snap, "usd") == usd
    assert used(run_snap, "requests") == 2
    team_snap = await team.limiter.snapshot()
    assert used(team_snap, "usd") == usd
    assert used(team_snap, "tokens") == tokens  # the clock never moved
    assert used(team_snap, "requests") == 2
    await team.ledger.flush()
    report = await team.ledger.report(by=("scope", "model"))
    (row,) = report.rows  # the run's spend: one group
    assert row.group == {"scope": "team/run-1", "model": MODEL}
    assert (row.requests, row.tokens, row.usd) == (2, tokens, usd)
    assert row.input_tokens == sum(r.prompt_tokens for r in served)


async def check_a_loop_is_stopped_by_its_run_cap(team: Team, run: Run) -> None:
    """A run calling its tool forever is stopped by its $0.50 before the
    next call is sent, the error unchanged; the other runs go on."""
    stopped: list[BaseException] = []
    answers: list[str] = []

    async def looping() -> None:
        with ratebudget.scope(team.runs["loop"]):
            try:
                await run(ASK)
            except BudgetExceeded as e:
                stopped.append(e)

    async def other(n: int) -> None:
        with ratebudget.scope(team.runs[f"other-{n}"]):
            answers.append(await run(CHAT))

    async with anyio.create_task_group() as tg:
        tg.start_soon(looping)
        for n in range(3):
            tg.start_soon(other, n)
    (e,) = stopped
    assert type(e) is BudgetExceeded  # the transport's own, not wrapped
    assert (e.scope, e.axis, e.reason) == ("team/loop", "usd", "cap")
    assert Decimal(e.limit) == Decimal("0.50")
    provider = team.provider
    loop_calls = [r for r in provider.requests if ASK in str(r.body)]
    assert all(r.status == 200 for r in provider.requests)
    assert len(loop_calls) >= 10  # it looped, and was stopped...
    snap = await team.runs["loop"].snapshot()
    spent = used(snap, "usd")
    assert used(snap, "requests") == len(loop_calls) < 30  # ...by its USD cap
    assert spent == sum(
        (price(MODEL, Usage(r.prompt_tokens, r.output_tokens)) for r in loop_calls),
        Decimal(0),
    )
    # within one call of the cap: the call refused would have crossed it
    assert spent <= Decimal("0.50") < spent + Decimal(e.requested)
    # the other runs were answered, before and after the loop was stopped
    assert len(answers) == 3
    assert all("echo:" in a for a in answers)
    after = team.runs["after"]
    with ratebudget.scope(after):
        assert "echo:" in await run(CHAT)
    # one refused attempt: neither the SDK nor the framework retried it
    assert len([a for a in team.attempts if ASK in a]) == len(loop_calls) + 1
    await team.ledger.flush()
    report = await team.ledger.report(by=("scope",))
    groups = {row.group["scope"]: row for row in report.rows}
    assert groups["team/loop"].usd == spent
    assert groups["team/loop"].requests == len(loop_calls)
    assert set(groups) == {"team/loop", "team/after"} | {
        f"team/other-{n}" for n in range(3)
    }


async def check_a_loop_is_stopped_as_a_runaway(team: Team, run: Run) -> None:
    """No cap on the run, only ``per_key(runaway=Runaway(min_usd="0.20",
    action="block"))``: the loop is refused as a runaway within one call of
    the floor; a new run of the team goes on."""
    with ratebudget.scope(team.runs["loop"]):
        try:
            await run(ASK)
        except BudgetExceeded as e:
            stopped = e
        else:  # pragma: no cover - the check fails
            raise AssertionError("the loop was never stopped")
    assert type(stopped) is BudgetExceeded
    assert (stopped.reason, stopped.scope) == ("runaway", "team/loop")
    spent = used(await team.limiter.snapshot(), "usd")  # the loop's alone
    assert spent == cost(team.provider)
    assert len(team.attempts) == len(team.provider.requests) + 1  # no retry
    # the call that crossed the floor was the last one let through
    assert spent - cost(team.provider, -1) < Decimal("0.20") <= spent
    with ratebudget.scope(team.runs["next"]):
        assert "echo:" in await run(CHAT)
