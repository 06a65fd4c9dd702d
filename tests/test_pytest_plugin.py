"""The pytest plugin (``--llm-max-usd``), run with ``pytester``: a session
whose tests make metered calls through the real OpenAI SDK, the metering
transport and ``FakeProvider``."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import anyio
import pytest

from ratebudget import Ledger

pytest_plugins = ["pytester"]

TESTS = """
import httpx2
import openai
import pytest

from ratebudget import Limiter, Rate
from ratebudget.integrations.httpx import BudgetTransport
from ratebudget.testing import FakeProvider

provider = FakeProvider()
limiter = Limiter(Rate(requests=1000, per="minute"))  # its own: no USD cap


def client():
    transport = BudgetTransport(limiter, transport=httpx2.ASGITransport(app=provider))
    return openai.AsyncOpenAI(
        api_key="x",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


async def ask(model, n, max_tokens):
    messages = [{"role": "user", "content": "tell me about budgets, briefly"}]
    for _ in range(n):
        await client().chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens
        )


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_cheap():
    await ask("gpt-4o-mini", 1, 5)


@pytest.mark.anyio
async def test_dear():
    await ask("gpt-4o", 3, 60)


def test_no_calls():
    pass
"""

LINE = re.compile(r"^\s+(\$[\d.]+|unpriced)\s+(\d+) calls  (\S+)$")


def costs(lines: list[str]) -> dict[str, tuple[str, int]]:
    """The plugin's lines: test id -> (its cost, its calls)."""
    got = {}
    for line in lines:
        m = LINE.match(line)
        if m:
            got[m[3]] = (m[1], int(m[2]))
    return got


def test_off_unless_asked_for(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_calls=TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    assert "LLM spend" not in result.stdout.str()


def test_each_tests_cost_and_the_sessions(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_calls=TESTS)
    ledger = f"sqlite:///{pytester.path / 'llm.db'}"
    result = pytester.runpytest("--llm-max-usd", "5", "--llm-ledger", ledger)
    result.assert_outcomes(passed=3)
    out = result.stdout.lines
    got = costs(out)
    assert set(got) == {"test_calls.py::test_cheap", "test_calls.py::test_dear"}
    assert got["test_calls.py::test_dear"][1] == 3
    # the printed costs are the ledger's, each call labelled with its test
    report = anyio.run(lambda: Ledger(ledger).report(by=("test",)))
    for row in report.rows:
        assert got[str(row.group["test"])] == (f"${row.usd}", row.requests)
    assert Decimal(got["test_calls.py::test_dear"][0][1:]) > Decimal(
        got["test_calls.py::test_cheap"][0][1:]
    )
    assert any(
        line.startswith(f"total ${report.total.usd} in 4 calls: within $5")
        for line in out
    )


def test_over_the_cap_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_calls=TESTS)
    # room for the cheap test's call, not for three of the dear one's
    result = pytester.runpytest("--llm-max-usd", "0.0001")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1  # test_dear: BudgetExceeded before sending
    result.stdout.fnmatch_lines(["*BudgetExceeded*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_session_over_with_every_test_passing_fails(
    pytester: pytest.Pytester,
) -> None:
    """A call that cost more than its estimate is counted past the hard cap
    (an overrun, not a refusal): every test passes, the session fails."""
    pytester.makepyfile(
        test_over="""
import ratebudget


def test_overrun():
    limiter = ratebudget.current_scope().limiter
    with limiter.sync.acquire(usd="0.3") as lease:
        lease.commit(usd="0.5")  # dearer than its estimate: counted past the cap
"""
    )
    result = pytester.runpytest("--llm-max-usd", "0.4")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["total $0.5 in 1 calls: OVER the $0.4 cap*"])


def test_a_baseline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_calls=TESTS)
    baseline = pytester.path / "costs.json"
    result = pytester.runpytest("--llm-max-usd", "5", "--llm-baseline", str(baseline))
    result.stdout.fnmatch_lines([f"baseline written: {baseline}"])
    written = json.loads(baseline.read_text())
    assert set(written) == {"test_calls.py::test_cheap", "test_calls.py::test_dear"}
    written["test_calls.py::test_dear"] = "0.000001"
    baseline.write_text(json.dumps(written))
    result = pytester.runpytest("--llm-max-usd", "5", "--llm-baseline", str(baseline))
    result.stdout.fnmatch_lines(
        ["costs more than its baseline: test_calls.py::test_dear: $0.000001 -> $*"]
    )
    assert "test_cheap: $" not in result.stdout.str()


def test_a_bad_cap_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--llm-max-usd", "lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-max-usd 'lots': expected an amount of USD*"])
