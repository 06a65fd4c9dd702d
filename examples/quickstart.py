"""A small fan-out of LLM calls through one limiter.

Thirty prompts are sent concurrently to a simulated provider (no network)
through a limiter that enforces the provider's requests and tokens per minute
and a hard daily USD budget. Each call reserves an estimate, then commits the
real usage; the calls that would cross the budget are refused before they
spend anything. Runs in about a second::

    python examples/quickstart.py
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from decimal import Decimal

import anyio

from ratebudget import AcquireTimeout, Alert, BudgetExceeded, Cap, Limiter, Rate

PRICE_PER_1K_TOKENS = Decimal("0.002")  # USD
MAX_OUTPUT_TOKENS = 1_000


@dataclass(frozen=True)
class Usage:
    tokens: int
    usd: Decimal


def cost(tokens: int) -> Decimal:
    return tokens * PRICE_PER_1K_TOKENS / 1_000


def estimate(prompt: str) -> int:
    """Tokens a call may use at most: its prompt plus the longest reply."""
    return len(prompt.split()) * 2 + MAX_OUTPUT_TOKENS


class FakeProvider:
    """Stands in for an LLM API: a little latency, a reply of random length."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    async def complete(self, prompt: str) -> Usage:
        await anyio.sleep(self._random.uniform(0.01, 0.05))
        tokens = len(prompt.split()) * 2 + self._random.randint(200, MAX_OUTPUT_TOKENS)
        return Usage(tokens, cost(tokens))


def on_alert(alert: Alert) -> None:
    print(f"  ALERT: {alert.threshold:.0%} of the daily budget spent (${alert.used})")


limiter = Limiter(
    Rate(requests=1_200, per="minute", burst=10),  # RPM: 20 per second, 10 at once
    Rate(tokens=1_000_000, per="minute", burst=20_000),  # TPM
    Cap(usd="0.025", per="day", alert_at=(0.5, 0.9)),  # finance: a hard daily cap
    on_alert=on_alert,
)


async def ask(
    provider: FakeProvider, prompt: str, outcomes: dict[str, list[str]]
) -> None:
    tokens = estimate(prompt)
    try:
        async with limiter.acquire(tokens, usd=cost(tokens), timeout=5) as lease:
            usage = await provider.complete(prompt)
            await lease.commit(tokens=usage.tokens, usd=usage.usd)
    except BudgetExceeded as exc:
        outcomes["refused: budget"].append(prompt)
        if len(outcomes["refused: budget"]) == 1:
            print(f"  first refusal: {exc}")
    except AcquireTimeout:
        outcomes["refused: busy"].append(prompt)
    else:
        outcomes["answered"].append(prompt)


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # alerts are also logged (at INFO)
    provider = FakeProvider(seed=7)
    prompts = [f"Summarise document number {i} in three sentences." for i in range(30)]
    outcomes: dict[str, list[str]] = {
        "answered": [],
        "refused: budget": [],
        "refused: busy": [],
    }

    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for prompt in prompts:
            tg.start_soon(ask, provider, prompt, outcomes)
    elapsed = time.monotonic() - start
    await limiter.flush_alerts()  # on_alert runs off the callers' path

    snap = await limiter.snapshot()
    print(f"{len(prompts)} prompts in {elapsed:.2f}s")
    for outcome, names in outcomes.items():
        print(f"  {outcome:16} {len(names)}")
    for limit in snap.limits:
        if limit.kind == "cap":
            print(
                f"  spent ${limit.used} of ${limit.limit_amount} today, ${limit.remaining} left"
            )
    assert outcomes["answered"], "some calls should have been answered"
    assert outcomes["refused: budget"], "the budget should have run out"


if __name__ == "__main__":
    anyio.run(main)
