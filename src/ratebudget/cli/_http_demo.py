"""``ratebudget demo --http``: the real ``openai`` SDK, metered, on loopback.

A ``FakeProvider`` (``ratebudget.testing``) is served on 127.0.0.1 with its
own requests-per-minute limit; ``calls`` chat completions fan out through
``AsyncOpenAI`` whose HTTP client carries ``BudgetTransport``. The limiter
keeps them under the provider's limit and under a USD cap; the report says
what the provider saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

import anyio

from .._exceptions import BudgetExceeded, InvalidRequest
from .._limiter import Limiter
from .._limits import Cap, Rate

__all__ = ("HttpDemoReport", "run_http_demo")

# the most one call of the demo may be estimated at: a short prompt, and
# max_tokens=50
_CALL_TOKENS = 100


@dataclass(frozen=True)
class HttpDemoReport:
    calls: int
    answered: int
    refused: int
    sent: int
    throttled: int  # the provider's 429s
    spent: Decimal
    cap: Decimal
    seconds: float
    limits: str  # the limiter's rates, as configured


async def run_http_demo(
    calls: int = 200,
    *,
    cap: Decimal = Decimal("0.0005"),
    rpm: int = 6_000,
    rpm_burst: int = 10,
    tpm: int | None = None,
    tpm_burst: int | None = None,
) -> HttpDemoReport:
    """Fan ``calls`` chat completions out through a limiter that keeps them
    under 80% of the provider's ``rpm`` (and ``tpm``: tokens per minute, when
    given) and under a daily ``cap`` in USD."""
    import httpx2
    from openai import AsyncOpenAI

    from ..integrations.httpx import BudgetTransport
    from ..testing import FakeProvider

    rates = [Rate(requests=max(1, rpm * 4 // 5), per="minute", burst=rpm_burst)]
    if tpm is not None:
        tokens = max(1, tpm * 4 // 5)
        burst = tpm_burst if tpm_burst is not None else max(_CALL_TOKENS, tokens // 6)
        if burst < _CALL_TOKENS:
            raise InvalidRequest(
                f"a tokens burst of {burst:,} cannot hold one call's estimate "
                f"(up to {_CALL_TOKENS} tokens): give --tpm-burst {_CALL_TOKENS} "
                "or more"
            )
        rates.append(Rate(tokens=tokens, per="minute", burst=burst))
    provider = FakeProvider(rpm=rpm, tpm=tpm)
    limiter = Limiter(*rates, Cap(usd=cap, per="day"))
    answered = refused = 0
    started = time.monotonic()
    async with provider.serve() as url:
        client = AsyncOpenAI(
            api_key="sk-demo",
            base_url=url + "/v1",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=BudgetTransport(limiter)),
        )

        async def one(k: int) -> None:
            nonlocal answered, refused
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"prompt {k}: say hello"}],
                    max_tokens=50,
                )
                answered += 1
            except BudgetExceeded:
                refused += 1

        async with anyio.create_task_group() as tg:
            for k in range(calls):
                tg.start_soon(one, k)
        await client.close()
    snap = await limiter.snapshot()
    spent = snap[len(rates)].used  # the cap, after the rates
    assert isinstance(spent, Decimal)
    return HttpDemoReport(
        limits=", ".join(
            f"{r.limit:,} {r.axis}/min (burst {r.burst:,})" for r in rates
        ),
        calls=calls,
        answered=answered,
        refused=refused,
        sent=len(provider.requests),
        throttled=sum(1 for r in provider.requests if r.status == 429),
        spent=spent,
        cap=cap,
        seconds=time.monotonic() - started,
    )


def render(report: HttpDemoReport, out: TextIO) -> None:
    out.write(
        f"{report.calls} chat completions through the openai SDK, metered by "
        "BudgetTransport, against a fake provider on loopback:\n"
        f"  limiter: {report.limits}, cap ${report.cap} a day\n"
        f"  answered {report.answered}, refused before sending {report.refused} "
        f"(the USD cap), in {report.seconds:.1f} s\n"
        f"  the provider saw {report.sent} requests and answered "
        f"{report.throttled} with 429\n"
        f"  spent ${report.spent} of ${report.cap}\n"
    )
