"""``ratebudget.otel``: the GenAI client metrics and ratebudget's own, read
back with the OpenTelemetry SDK's in-memory reader, and served to a real
HTTP client by the Prometheus exporter.

Calls go through the real transport to ``FakeProvider``; names, units,
bucket boundaries and attributes are checked against the semantic
conventions (gen_ai metrics, as of semantic-conventions 1.37+).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from helpers import settle
from ratebudget import (
    AcquireTimeout,
    BudgetExceeded,
    Cap,
    Limiter,
    Rate,
    Runaway,
)
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.otel import (
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    Instrumentation,
    instrument,
    prometheus,
)
from ratebudget.testing import FakeClock, FakeProvider

# the conventions' attribute sets (required and the conditionally required
# ones these calls have; server.* only for a call with a host)
TOKEN_KEYS = {
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.token.type",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "server.address",
    "server.port",
}


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, Instrumentation]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    made = instrument(provider)
    yield reader, made
    made.close()
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Each metric of the last collection by name: its unit and points."""
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, Any] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "ratebudget"
            for m in sm.metrics:
                out[m.name] = (m.unit, list(m.data.data_points))
    return out


def of(scope: str, found: list[Any]) -> list[Any]:
    """The points of one scope (gauges read every limiter alive)."""
    return [p for p in found if p.attributes["ratebudget.scope"] == scope]


async def chat(http: httpx.AsyncClient, model: str, words: int) -> httpx.Response:
    return await http.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
        },
    )


async def test_metered_calls_make_the_genai_client_metrics(
    otel: tuple[InMemoryMetricReader, Instrumentation],
) -> None:
    reader, _ = otel
    provider = FakeProvider()
    limiter = Limiter(Cap(usd="10", per="day"), name="team")
    transport = BudgetTransport(limiter, transport=httpx.ASGITransport(app=provider))
    async with httpx.AsyncClient(
        transport=transport, base_url="https://api.openai.com"
    ) as http:
        for words in (10, 300):
            assert (await chat(http, "gpt-4o", words)).status_code == 200
        provider.fail_next(429, retry_after=0)
        assert (await chat(http, "gpt-4o", 5)).status_code == 429
        r = await http.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "a b"}
        )
        assert r.status_code == 200
    got = points(reader)

    unit, tokens = got["gen_ai.client.token.usage"]
    assert unit == "{token}"
    for p in tokens:
        assert tuple(p.explicit_bounds) == TOKEN_BUCKETS
        assert set(p.attributes) <= TOKEN_KEYS
        assert p.attributes["gen_ai.provider.name"] == "openai"
        assert p.attributes["server.address"] == "api.openai.com"
        assert p.attributes["server.port"] == 443
    by_kind = {
        (p.attributes["gen_ai.operation.name"], p.attributes["gen_ai.token.type"]): p
        for p in tokens
    }
    ok = [r for r in provider.requests if r.status == 200]
    chats = [r for r in ok if r.path.endswith("/chat/completions")]
    inputs = by_kind["chat", "input"]
    assert (inputs.count, inputs.sum) == (2, sum(r.prompt_tokens for r in chats))
    outputs = by_kind["chat", "output"]
    assert outputs.sum == sum(r.output_tokens for r in chats)
    assert inputs.attributes["gen_ai.request.model"] == "gpt-4o"
    assert by_kind["embeddings", "input"].count == 1

    unit, durations = got["gen_ai.client.operation.duration"]
    assert unit == "s"
    assert {tuple(p.explicit_bounds) for p in durations} == {DURATION_BUCKETS}
    errors = [p for p in durations if "error.type" in p.attributes]
    (failed,) = errors
    assert failed.attributes["error.type"] == "429"
    assert failed.count == 1
    assert sum(p.count for p in durations) == 4
    assert all("gen_ai.token.type" not in p.attributes for p in durations)

    unit, costs = got["ratebudget.cost"]
    assert unit == "{USD}"
    spent = (await limiter.snapshot())[0].used
    assert sum(p.value for p in costs) == pytest.approx(float(spent))
    assert {p.attributes["ratebudget.scope"] for p in costs} == {"team"}


async def test_refusals_waits_and_gauges(
    otel: tuple[InMemoryMetricReader, Instrumentation],
) -> None:
    reader, _ = otel
    org = f"org-{uuid.uuid4().hex[:8]}"  # gauges read every limiter alive
    clock = FakeClock()
    limiter = Limiter(
        Rate(requests=1, per="second", burst=1),
        Cap(usd="5", per="day"),
        name=org,
        clock=clock,
    )
    team = limiter.child(
        "team", runaway=Runaway(window="1m", min_usd="1", action="block")
    )
    async with limiter.acquire(usd="1"):
        pass
    got: list[float] = []

    async def waiter() -> None:
        async with limiter.acquire(usd="0.5"):
            got.append(clock.seconds)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle()
        (waiting,) = of(org, points(reader)["ratebudget.callers.waiting"][1])
        assert waiting.value == 1
        clock.advance(1)
    with pytest.raises(BudgetExceeded):
        await limiter.acquire(usd="10")
    with pytest.raises(AcquireTimeout):
        await limiter.acquire(usd="0.1", timeout=0.1)
    clock.advance(5)
    async with team.acquire(usd="1"):
        pass
    with pytest.raises(BudgetExceeded):
        await team.acquire(usd="0.1")
    m = points(reader)

    (wait,) = m["ratebudget.acquire.wait.duration"][1]
    assert (wait.count, wait.sum, wait.attributes) == (
        1,
        1.0,
        {"ratebudget.scope": org},
    )
    refusals = {
        (p.attributes["ratebudget.scope"], p.attributes["ratebudget.reason"]): p.value
        for p in m["ratebudget.refusals"][1]
        if p.attributes["ratebudget.scope"].startswith(org)
    }
    assert refusals == {
        (org, "cap"): 1,
        (org, "timeout"): 1,
        (f"{org}/team", "runaway"): 1,
    }
    caps = {
        (name, p.attributes["ratebudget.scope"]): p.value
        for name in ("limit", "used", "reserved", "remaining")
        for p in of(org, m[f"ratebudget.cap.{name}"][1])
    }
    assert caps == {
        ("limit", org): 5.0,
        ("used", org): 2.5,
        ("reserved", org): 0.0,
        ("remaining", org): 2.5,
    }
    (cap,) = of(org, m["ratebudget.cap.used"][1])
    assert cap.attributes == {
        "ratebudget.scope": org,
        "ratebudget.axis": "usd",
        "ratebudget.period": "day",
    }


async def test_per_key_scopes_are_counted_under_their_parent(
    otel: tuple[InMemoryMetricReader, Instrumentation],
) -> None:
    reader, _ = otel
    org = Limiter(Cap(usd="100"), name="org2")
    users = org.per_key(Cap(usd="1"))
    for user in ("ann", "bob", "cy"):
        with pytest.raises(BudgetExceeded):
            await users[user].acquire(usd="2")
        async with users[user].acquire(usd="0.5"):
            pass
    m = points(reader)
    refusals = {
        p.attributes["ratebudget.scope"]: p.value
        for p in m["ratebudget.refusals"][1]
        if p.attributes["ratebudget.scope"].startswith("org2")
    }
    assert refusals == {"org2/*": 3}
    scopes = {p.attributes["ratebudget.scope"] for p in m["ratebudget.cap.used"][1]}
    assert "org2" in scopes
    assert not any(s.startswith("org2/") for s in scopes)


async def test_uninstrument_stops_recording() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    made = instrument(provider)
    limiter = Limiter(Cap(usd="1"), name="gone")
    made.uninstrument()
    with pytest.raises(BudgetExceeded):
        await limiter.acquire(usd="2")
    data = reader.get_metrics_data()
    names = {
        m.name
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert "ratebudget.refusals" not in names
    provider.shutdown()


async def test_meter_calls_are_recorded_too(
    otel: tuple[InMemoryMetricReader, Instrumentation],
) -> None:
    reader, _ = otel
    limiter = Limiter(Cap(usd="1"), name="metered")
    reply = {
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }
    async with limiter.meter(model="gpt-4o", prompt="hello") as m:
        await m.settle(reply)
    got = points(reader)
    tokens = {
        p.attributes["gen_ai.token.type"]: p
        for p in got["gen_ai.client.token.usage"][1]
    }
    assert (tokens["input"].sum, tokens["output"].sum) == (12, 30)
    assert tokens["input"].attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert "server.address" not in tokens["input"].attributes
    (cost,) = got["ratebudget.cost"][1]
    assert Decimal(str(cost.value)) == (await limiter.snapshot())[0].used


def test_prometheus_serves_the_metrics_on_metrics() -> None:
    made = prometheus(port=0)
    try:
        limiter = Limiter(Cap(usd="3", per="month"), name="scraped")
        with limiter.sync.acquire(usd="1") as lease:
            lease.commit(usd="1.25")
        with pytest.raises(BudgetExceeded):
            limiter.sync.acquire(usd="5")
        r = httpx.get(f"http://127.0.0.1:{made.port}/metrics", timeout=10)
        assert r.status_code == 200
        lines = r.text.splitlines()

        def sample(prefix: str) -> list[str]:
            return [line for line in lines if line.startswith(prefix)]

        (used,) = [s for s in sample("ratebudget_cap_used") if 'scope="scraped"' in s]
        assert 'ratebudget_axis="usd"' in used
        assert 'ratebudget_period="month"' in used
        assert used.endswith(" 1.25")
        (refused,) = [
            s for s in sample("ratebudget_refusals") if 'scope="scraped"' in s
        ]
        assert 'ratebudget_reason="cap"' in refused
        assert refused.endswith(" 1.0")
    finally:
        made.close()
