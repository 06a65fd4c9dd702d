"""A 200-prompt evaluation through the real OpenAI SDK, metered by one line.

The provider is ``ratebudget.testing.FakeProvider`` served on loopback (no
network, no key), with its own limit of 6,000 requests per minute. The
limiter keeps the run under that limit and under a USD budget; the SDK's
client is untouched but for its ``http_client``. Prints a progress bar and a
final spend report::

    python examples/batch_eval.py

(needs the ``openai`` and ``genai-prices`` packages: ``pip install openai
'ratebudget[prices]'``)
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx2
from openai import AsyncOpenAI

from ratebudget import BudgetExceeded, Cap, Limiter, Rate
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.testing import FakeProvider

PROMPTS = [f"Question {k}: is {k} a prime number? Answer briefly." for k in range(200)]
BUDGET = Decimal("0.001")  # USD: not enough for all 200


def bar(done: int, total: int, width: int = 40) -> str:
    filled = width * done // total
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


async def main() -> None:
    provider = FakeProvider(rpm=6_000)
    limiter = Limiter(
        Rate(requests=4_800, per="minute", burst=40),  # under the provider's 6,000
        Cap(usd=BUDGET, per="day"),
    )
    results: dict[int, str] = {}
    refused = 0
    started = time.monotonic()
    async with provider.serve() as url:
        client = AsyncOpenAI(
            api_key="sk-fake",
            base_url=url + "/v1",
            http_client=httpx2.AsyncClient(transport=BudgetTransport(limiter)),
        )

        async def ask(k: int, prompt: str) -> None:
            nonlocal refused
            try:
                reply = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=40,
                )
            except BudgetExceeded:
                refused += 1
            else:
                results[k] = reply.choices[0].message.content or ""
            done = len(results) + refused
            if done % 10 == 0:
                print(f"\r{bar(done, len(PROMPTS))}", end="", flush=True)

        await asyncio.gather(*(ask(k, p) for k, p in enumerate(PROMPTS)))
        await client.close()
    print()
    snap = await limiter.snapshot()
    spent = snap[1].used
    sent = len(provider.requests)
    throttled = sum(1 for r in provider.requests if r.status == 429)
    print(
        f"answered {len(results)} of {len(PROMPTS)} prompts in {time.monotonic() - started:.1f} s"
    )
    print(f"spent ${spent} of ${BUDGET} (refused before sending: {refused})")
    print(f"requests sent: {sent}, answered 429 by the provider: {throttled}")
    assert throttled == 0  # the limiter kept the run under the provider's limit
    assert spent <= BUDGET


if __name__ == "__main__":
    asyncio.run(main())
