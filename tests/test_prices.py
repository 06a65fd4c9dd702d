"""Exact USD prices from genai-prices' bundled data (no network)."""

from __future__ import annotations

import builtins
import sys
from decimal import Decimal, localcontext
from typing import Any

import pytest

from ratebudget import InvalidRequest
from ratebudget.integrations.prices import estimate_cost, price
from ratebudget.integrations.usage import Estimate, Usage, usage_from_json

genai_prices = pytest.importorskip("genai_prices")

USAGE = Usage(1_000, 500, cached_input_tokens=200)


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt-4o", None),
        ("gpt-4o", "openai"),
        ("gpt-4o-2024-08-06", "openai"),
        ("gpt-4o-mini", None),
        ("o3-mini", None),
        ("claude-3-5-sonnet-latest", None),
        ("claude-3-5-haiku-latest", "anthropic"),
    ],
)
def test_same_as_genai_prices(model: str, provider: str | None) -> None:
    usage = Usage(
        12_345,
        678,
        cached_input_tokens=2_000,
        cache_write_tokens=1_000,
        reasoning_tokens=100,
    )
    expected = genai_prices.calc_price(
        genai_prices.Usage(
            input_tokens=12_345,
            output_tokens=678,
            cache_read_tokens=2_000,
            cache_write_tokens=1_000,
            output_reasoning_tokens=100,
        ),
        model,
        provider_id=provider,
    ).total_price
    got = price(model, usage, provider=provider)
    assert isinstance(got, Decimal)
    assert got == expected
    assert got > 0


def test_by_hand_from_per_million_prices() -> None:
    # gpt-4o: $2.50 input, $1.25 cached input, $10 output per million tokens
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1, output_tokens=1), "gpt-4o"
    )
    prices = calc.model_price
    assert (prices.input_mtok, prices.cache_read_mtok, prices.output_mtok) == (
        Decimal("2.5"),
        Decimal("1.25"),
        Decimal(10),
    )
    by_hand = (800 * Decimal("2.5") + 200 * Decimal("1.25") + 500 * Decimal(10)) / 10**6
    assert by_hand == Decimal("0.00725")
    assert price("gpt-4o", USAGE) == by_hand
    # claude-3-5-sonnet: $3 input, $0.30 cache read, $3.75 cache write, $15 output
    usage = Usage(4021, 393, cached_input_tokens=3000, cache_write_tokens=1000)
    assert price("claude-3-5-sonnet-latest", usage) == Decimal("0.010608")
    assert (
        Decimal("0.010608")
        == (
            21 * Decimal(3)
            + 3000 * Decimal("0.3")
            + 1000 * Decimal("3.75")
            + 393 * Decimal(15)
        )
        / 10**6
    )


def test_anthropic_response_priced_from_its_json() -> None:
    body: dict[str, Any] = {
        "model": "claude-3-5-sonnet-20241022",
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 3000,
            "output_tokens": 393,
        },
    }
    usage = usage_from_json("anthropic.messages", body)
    assert usage is not None
    extracted = genai_prices.extract_usage(body, provider_id="anthropic")
    assert price(body["model"], usage) == extracted.calc_price().total_price


def test_cached_tokens_are_cheaper() -> None:
    fresh = Usage(10_000, 100)
    cached = Usage(10_000, 100, cached_input_tokens=8_000)
    for model in ("gpt-4o", "claude-3-5-sonnet-latest", "o3-mini"):
        assert price(model, cached) < price(model, fresh)
    # and Anthropic cache writes dearer
    written = Usage(10_000, 100, cache_write_tokens=8_000)
    assert price("claude-3-5-sonnet-latest", written) > price(
        "claude-3-5-sonnet-latest", fresh
    )


def test_exact_whatever_the_callers_context() -> None:
    usage = Usage(123_456_789, 987_654_321, cached_input_tokens=1)
    expected = price("gpt-4o", usage)
    with localcontext() as ctx:
        ctx.prec = 3
        assert price("gpt-4o", usage) == expected
    assert expected == (
        (123_456_788 * Decimal("2.5") + Decimal("1.25") + 987_654_321 * Decimal(10))
        / 10**6
    )


def test_unknown_model_raises_naming_it() -> None:
    with pytest.raises(InvalidRequest, match="my-finetune-7b"):
        price("my-finetune-7b", USAGE)
    with pytest.raises(InvalidRequest, match="no-such-provider"):
        price("gpt-4o", USAGE, provider="no-such-provider")


def test_zero_usage_is_zero() -> None:
    assert price("gpt-4o", Usage(0, 0)) == 0


USER_RATES = {"input_mtok": "1.25", "output_mtok": "10", "cached_input_mtok": "0.125"}


def test_user_rates_for_unknown_models() -> None:
    got = price("my-finetune-7b", USAGE, unknown=USER_RATES)
    assert got == (800 * Decimal("1.25") + 200 * Decimal("0.125") + 500 * 10) / Decimal(
        10**6
    )
    assert got == Decimal("0.006025")
    # known models keep their genai-prices price
    assert price("gpt-4o", USAGE, unknown=USER_RATES) == Decimal("0.00725")
    # cache reads and writes default to the input rate
    plain = price(
        "x", USAGE, unknown={"input_mtok": Decimal("1.25"), "output_mtok": "10"}
    )
    assert plain == (1000 * Decimal("1.25") + 500 * 10) / Decimal(10**6)


def test_user_rates_add_up_exactly() -> None:
    """A million one-token calls cost exactly a million times one."""
    one = price(
        "tiny", Usage(1, 1), unknown={"input_mtok": "0.1", "output_mtok": "0.3"}
    )
    assert one == Decimal("0.0000004")
    total = sum((one for _ in range(1_000_000)), Decimal(0))
    assert total == Decimal("0.4")
    float_total = sum(0.1 / 1e6 + 0.3 / 1e6 for _ in range(1_000_000))
    assert float_total != 0.4  # what floats would have done


@pytest.mark.parametrize(
    "unknown",
    [
        "zero",
        {"input_mtok": "1"},
        {"output_mtok": "1"},
        {"input_mtok": "1", "output_mtok": "1", "input_per_token": "1"},
        {"input_mtok": 1.25, "output_mtok": "1"},
        {"input_mtok": "abc", "output_mtok": "1"},
        {"input_mtok": "-1", "output_mtok": "1"},
        {"input_mtok": "NaN", "output_mtok": "1"},
        {"input_mtok": True, "output_mtok": "1"},
        ["input_mtok"],
    ],
)
def test_bad_rates_rejected_even_for_known_models(unknown: Any) -> None:
    with pytest.raises(InvalidRequest):
        price("gpt-4o", USAGE, unknown=unknown)


def test_bad_arguments() -> None:
    with pytest.raises(InvalidRequest):
        price("", USAGE)
    with pytest.raises(InvalidRequest):
        price("gpt-4o", {"input_tokens": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        estimate_cost("gpt-4o", Usage(1, 1))  # type: ignore[arg-type]


def test_estimate_cost_is_an_upper_bound() -> None:
    est = Estimate(
        "gpt-4o", input_tokens=1_000, max_output_tokens=256, n=2, stream=False
    )
    cost = estimate_cost("gpt-4o", est)
    assert cost == (1_000 * Decimal("2.5") + 512 * 10) / Decimal(10**6)
    for usage in (Usage(1_000, 512), Usage(1_000, 100, cached_input_tokens=900)):
        assert price("gpt-4o", usage) <= cost
    # Anthropic: the prompt may be written to the cache, at 1.25× input
    claude = estimate_cost("claude-3-5-sonnet-latest", est)
    assert claude == (1_000 * Decimal("3.75") + 512 * 15) / Decimal(10**6)
    worst = Usage(1_000, 512, cache_write_tokens=1_000)
    assert price("claude-3-5-sonnet-latest", worst) == claude
    # unknown models: the user's rates
    assert estimate_cost(
        "mine", est, unknown={"input_mtok": "1", "output_mtok": "2"}
    ) == Decimal("0.002024")
    with pytest.raises(InvalidRequest, match="mine"):
        estimate_cost("mine", est)


def test_missing_genai_prices_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_genai_prices(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "genai_prices" or name.startswith("genai_prices."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "genai_prices")
    monkeypatch.setattr(builtins, "__import__", no_genai_prices)
    with pytest.raises(InvalidRequest, match=r"pip install 'ratebudget\[prices\]'"):
        price("gpt-4o", USAGE)
    with pytest.raises(InvalidRequest, match=r"ratebudget\[prices\]"):
        price("gpt-4o", USAGE, unknown=USER_RATES)


def test_usage_module_does_not_import_genai_prices() -> None:
    import subprocess

    code = (
        "import sys, ratebudget.integrations, ratebudget.integrations.usage; "
        "assert 'genai_prices' not in sys.modules; "
        "import ratebudget.integrations.prices; "
        "assert 'genai_prices' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
