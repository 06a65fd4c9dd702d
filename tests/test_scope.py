"""Labels on acquisitions, and ``ratebudget.scope()``: one shared SDK client
charges each task's calls to the limiter of its scope, with its labels.

The store-dependent parts run on memory, SQLite and Redis; everything runs
on asyncio and trio. The transport is driven by bare httpx2 clients against
``FakeProvider`` in process (the SDKs' own tests are in test_transport*.py).
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import pytest

import ratebudget
from conftest import Make
from ratebudget import BudgetExceeded, Cap, InvalidRequest, Limiter, Rate
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.testing import FakeProvider

# -- labels ------------------------------------------------------------------------


async def test_a_lease_keeps_its_labels() -> None:
    limiter = Limiter(Rate(tokens=100, per=1), Cap(tokens=1_000))
    lease = await limiter.acquire(10, labels={"feature": "summarise", "user": "a"})
    assert dict(lease.labels) == {"feature": "summarise", "user": "a"}
    with pytest.raises(TypeError):
        lease.labels["feature"] = "x"  # type: ignore[index]
    await lease.release()
    plain = await limiter.acquire(10)  # the fast path: no labels
    assert dict(plain.labels) == {}
    await plain.release()
    got = await limiter.try_acquire(5, labels={"k": "v"})
    assert got is not None
    assert dict(got.labels) == {"k": "v"}
    await got.release()
    with limiter.sync.acquire(5, labels={"k": "sync"}) as lease2:
        assert dict(lease2.labels) == {"k": "sync"}


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ("feature", "mapping"),
        (dict.fromkeys(range(3), "x"), "label key"),
        ({f"k{i}": "v" for i in range(17)}, "at most 16"),
        ({"": "v"}, "label key"),
        ({"a b": "v"}, "label key"),
        ({"k" * 65: "v"}, "label key"),
        ({"k": 3}, "label k="),
        ({"k": "v" * 257}, "label k="),
        ({"k": "line\nbreak"}, "label k="),
    ],
)
async def test_bad_labels_are_refused_at_the_call(labels: Any, match: str) -> None:
    limiter = Limiter(Cap(tokens=100))
    with pytest.raises(InvalidRequest, match=match):
        limiter.acquire(1, labels=labels)
    with pytest.raises(InvalidRequest, match=match):
        await limiter.try_acquire(1, labels=labels)
    with pytest.raises(InvalidRequest, match=match):
        await limiter.record(1, labels=labels)
    with pytest.raises(InvalidRequest, match=match):
        limiter.sync.record(1, labels=labels)
    assert (await limiter.snapshot())[0].used == 0


@pytest.mark.parametrize("axis", ["labels", "timeout"])
def test_labels_and_timeout_are_no_axes(axis: str) -> None:
    with pytest.raises(InvalidRequest, match="keyword"):
        Cap(**{axis: 1})  # type: ignore[arg-type]


async def test_a_refusal_names_its_limiter_and_labels(make: Make) -> None:
    limiter = make(Cap(tokens=10), name="acme")
    with pytest.raises(BudgetExceeded) as acquiring:
        await limiter.acquire(11, labels={"feature": "chat"})
    assert acquiring.value.scope == limiter.name
    assert dict(acquiring.value.labels) == {"feature": "chat"}
    assert repr(limiter.name) in str(acquiring.value)
    with pytest.raises(BudgetExceeded) as trying:
        await limiter.try_acquire(11, labels={"feature": "try"})
    assert dict(trying.value.labels) == {"feature": "try"}
    with pytest.raises(BudgetExceeded) as recording:
        await limiter.record(11, labels={"feature": "batch"})
    assert (recording.value.scope, dict(recording.value.labels)) == (
        limiter.name,
        {"feature": "batch"},
    )
    with pytest.raises(BudgetExceeded) as blocking:
        limiter.sync.acquire(11, labels={"feature": "sync"})
    assert dict(blocking.value.labels) == {"feature": "sync"}


async def test_a_waiter_refused_later_keeps_its_labels(make: Make) -> None:
    limiter = make(Cap(tokens=10), name="wait")
    held = await limiter.acquire(6)
    refused: list[BudgetExceeded] = []

    async def waiter() -> None:
        try:
            await limiter.acquire(5, labels={"who": "waiter"})
        except BudgetExceeded as e:
            refused.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await held.commit(tokens=6)
        await limiter.record(1)  # 7 used: 5 more can never fit
    (error,) = refused
    assert dict(error.labels) == {"who": "waiter"}


# -- the scope ---------------------------------------------------------------------


async def test_scopes_nest_and_end() -> None:
    org, alice = Limiter(Cap(tokens=10)), Limiter(Cap(tokens=10))
    assert ratebudget.current_scope() is None
    with ratebudget.scope(org, team="search"):
        outer = ratebudget.current_scope()
        assert outer is not None
        assert outer.limiter is org
        async with ratebudget.scope(alice, user="alice", team="web") as inner:
            assert inner.limiter is alice
            assert dict(inner.labels) == {"team": "web", "user": "alice"}
            with ratebudget.scope(feature="chat") as labels_only:
                assert labels_only.limiter is alice
                assert dict(labels_only.labels) == {
                    "team": "web",
                    "user": "alice",
                    "feature": "chat",
                }
        assert ratebudget.current_scope() is outer
    assert ratebudget.current_scope() is None


def test_a_scope_takes_a_limiter_and_string_labels() -> None:
    with pytest.raises(InvalidRequest, match="Limiter"):
        ratebudget.scope("alice")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="label"):
        ratebudget.scope(None, user=3)  # type: ignore[arg-type]
    entered = ratebudget.scope(user="a")
    with entered, pytest.raises(InvalidRequest, match="already entered"):
        entered.__enter__()


async def test_each_task_has_its_own_scope() -> None:
    seen: dict[str, str | None] = {}

    async def request(user: str) -> None:
        with ratebudget.scope(user=user):
            await anyio.sleep(0.01)  # the other task runs in its own scope
            current = ratebudget.current_scope()
            seen[user] = None if current is None else current.labels["user"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "alice")
        tg.start_soon(request, "bob")
    assert seen == {"alice": "alice", "bob": "bob"}


# -- the transport and meter() in a scope -------------------------------------------

CHAT = "/v1/chat/completions"


def chat(text: str, model: str = "gpt-4o") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


async def test_one_client_charges_each_tasks_scope() -> None:
    provider = FakeProvider()
    app = Limiter(Cap(tokens=10**6))  # the transport's own: used outside scopes
    users = {u: Limiter(Cap(tokens=10**6), name=u) for u in ("alice", "bob")}
    transport = BudgetTransport(app, transport=httpx2.ASGITransport(app=provider))
    async with httpx2.AsyncClient(transport=transport, base_url="http://fake") as c:

        async def request(user: str, words: str) -> None:
            with ratebudget.scope(users[user], feature="chat"):
                await anyio.lowlevel.checkpoint()
                (await c.post(CHAT, json=chat(words))).raise_for_status()

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "alice", "one two three")
            tg.start_soon(request, "bob", "four")
        (await c.post(CHAT, json=chat("outside"))).raise_for_status()
    served = {
        r.body["messages"][0]["content"]: r.total_tokens for r in provider.requests
    }
    assert (await users["alice"].snapshot())[0].used == served["one two three"]
    assert (await users["bob"].snapshot())[0].used == served["four"]
    assert (await app.snapshot())[0].used == served["outside"]


async def test_a_scope_refusal_carries_the_call_labels() -> None:
    provider = FakeProvider()
    transport = BudgetTransport(
        Limiter(Cap(tokens=10**6)), transport=httpx2.ASGITransport(app=provider)
    )
    poor = Limiter(Cap(tokens=5), name="poor")
    async with httpx2.AsyncClient(transport=transport, base_url="http://fake") as c:
        with ratebudget.scope(poor, user="poor"), pytest.raises(BudgetExceeded) as e:
            await c.post(CHAT, json=chat("a long prompt " * 20))
    assert provider.requests == []
    assert e.value.scope == "poor"
    assert dict(e.value.labels) == {
        "user": "poor",
        "operation": "chat",
        "provider": "openai",
        "model": "gpt-4o",
    }


async def test_meter_charges_the_scope() -> None:
    mine, theirs = Limiter(Cap(tokens=10**6)), Limiter(Cap(tokens=10), name="t")
    with ratebudget.scope(theirs, user="t"):
        with pytest.raises(BudgetExceeded) as e:
            async with mine.meter(model="gpt-4o", prompt="hello", max_tokens=100):
                pass
    assert e.value.scope == "t"
    assert e.value.labels["user"] == "t"
    assert e.value.labels["model"] == "gpt-4o"
    assert (await mine.snapshot())[0].used == 0
