"""Exact USD prices of LLM usage, from the genai-prices data.

Needs the optional dependency: ``pip install 'ratebudget[prices]'``.

Prices come from the data bundled with the installed ``genai-prices``
package: nothing is downloaded. (If the application itself runs
``genai_prices.UpdatePrices``, the updated data it installs is used.) Every
amount is a ``decimal.Decimal`` computed exactly, whatever the caller's
decimal context.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Context, Decimal, InvalidOperation, localcontext
from typing import Final, Literal

from .._exceptions import InvalidRequest
from ._estimate import Estimate
from ._parse import Usage

__all__ = ("RATE_KEYS", "estimate_cost", "price")

RATE_KEYS: Final = frozenset(
    {"input_mtok", "output_mtok", "cached_input_mtok", "cache_write_mtok"}
)
"""Keys of a user-given rate mapping: USD per million tokens.

``input_mtok`` and ``output_mtok`` are required. ``cached_input_mtok`` (cache
reads) and ``cache_write_mtok`` default to ``input_mtok``.
"""

_EXACT: Final = Context(prec=100, Emax=10**6, Emin=-(10**6))
"""Products and divisions by a power of ten stay exact in this context."""

_MILLION: Final = Decimal(1_000_000)


_MISSING: Final = "pricing models needs genai-prices: pip install 'ratebudget[prices]'"


def _rate(key: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise InvalidRequest(
            f"rate {key}={value!r}: expected a Decimal or a str "
            "(USD per million tokens; a float is not exact)"
        )
    try:
        rate = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"rate {key}={value!r}: not a number") from None
    if not rate.is_finite() or rate < 0:
        raise InvalidRequest(f"rate {key}={value!r}: expected a finite amount >= 0")
    return rate


def _rates(unknown: object) -> dict[str, Decimal] | None:
    """Validate the ``unknown=`` policy: ``None`` for "raise", else rates."""
    if isinstance(unknown, str):
        if unknown != "raise":
            raise InvalidRequest(
                f"unknown={unknown!r}: expected 'raise' or a mapping of rates"
            )
        return None
    if not isinstance(unknown, Mapping):
        raise InvalidRequest(
            f"unknown={unknown!r}: expected 'raise' or a mapping of rates"
        )
    extra = set(unknown) - RATE_KEYS
    if extra:
        raise InvalidRequest(
            f"unknown rate keys {sorted(extra)}: expected some of {sorted(RATE_KEYS)}"
        )
    missing = {"input_mtok", "output_mtok"} - set(unknown)
    if missing:
        raise InvalidRequest(f"rates need {sorted(missing)} (USD per million tokens)")
    rates = {key: _rate(key, value) for key, value in unknown.items()}
    rates.setdefault("cached_input_mtok", rates["input_mtok"])
    rates.setdefault("cache_write_mtok", rates["input_mtok"])
    return rates


def _at_rates(usage: Usage, rates: Mapping[str, Decimal]) -> Decimal:
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens
    with localcontext(_EXACT):
        total = (
            rates["input_mtok"] * uncached
            + rates["cached_input_mtok"] * usage.cached_input_tokens
            + rates["cache_write_mtok"] * usage.cache_write_tokens
            + rates["output_mtok"] * usage.output_tokens
        )
        return total / _MILLION


def _check(model: object, usage: object) -> None:
    if not isinstance(model, str) or not model:
        raise InvalidRequest(f"model={model!r}: expected a model name")
    if not isinstance(usage, Usage):
        raise InvalidRequest(f"usage={usage!r}: expected a Usage")


def price(
    model: str,
    usage: Usage,
    *,
    provider: str | None = None,
    unknown: Literal["raise"] | Mapping[str, Decimal | str] = "raise",
) -> Decimal:
    """The exact USD price of ``usage`` on ``model``.

    ``model`` is looked up in genai-prices (``"gpt-4o"``,
    ``"gpt-4o-2024-08-06"``, ``"claude-3-5-sonnet-latest"``...); ``provider``
    (a genai-prices provider id: ``"openai"``, ``"anthropic"``, ``"azure"``,
    ``"groq"``...) picks whose price list to use, else genai-prices guesses
    from the model name. Cached input tokens and cache writes are priced at
    the model's cache rates; reasoning tokens as output (unless the model
    prices them apart).

    When the model is unknown to genai-prices (or it knows no token price for
    it), ``unknown`` decides: ``"raise"`` (the default) raises
    ``InvalidRequest`` naming the model; a mapping of USD per million tokens,
    ``{"input_mtok": "1.25", "output_mtok": "10"}`` with optional
    ``"cached_input_mtok"`` and ``"cache_write_mtok"`` (both default to the
    input rate), prices it exactly at those rates. A price is never silently
    zero.
    """
    _check(model, usage)
    rates = _rates(unknown)
    try:
        import genai_prices
    except ImportError:
        raise InvalidRequest(_MISSING) from None
    gp_usage = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
    )
    where = f" (provider {provider!r})" if provider is not None else ""
    try:
        with localcontext(_EXACT):
            calc = genai_prices.calc_price(gp_usage, model, provider_id=provider)
    except LookupError:
        problem = f"genai-prices does not know model {model!r}{where}"
    except ValueError as exc:  # usage the model's price list cannot split
        problem = f"genai-prices cannot price model {model!r}{where}: {exc}"
    else:
        prices = calc.model_price
        if (usage.input_tokens and prices.input_mtok is None) or (
            usage.output_tokens and prices.output_mtok is None
        ):
            problem = (
                f"genai-prices has no token price for model {model!r}{where} "
                f"(it knows {prices})"
            )
        else:
            return calc.total_price
    if rates is None:
        raise InvalidRequest(
            f"{problem}: give it a rate in USD per million tokens, "
            "{'input_mtok': ..., 'output_mtok': ...}, as unknown_model= of "
            "BudgetTransport or limiter.meter() (unknown= of price() and "
            "estimate_cost())"
        )
    return _at_rates(usage, rates)


def estimate_cost(
    model: str,
    estimate: Estimate,
    *,
    provider: str | None = None,
    unknown: Literal["raise"] | Mapping[str, Decimal | str] = "raise",
) -> Decimal:
    """The most a request may cost: an upper bound to reserve before sending.

    Prices ``estimate.input_tokens`` of input and ``max_output_tokens × n``
    of output, like :func:`price` (same ``provider`` and ``unknown``). The
    input is priced at the dearer of the plain input rate and the cache-write
    rate (Anthropic bills prompt-cache writes 1.25× input), so a request that
    writes its prompt to the cache is covered too. The actual usage, once
    known, is usually cheaper: commit ``price(model, usage)``.
    """
    if not isinstance(estimate, Estimate):
        raise InvalidRequest(f"estimate={estimate!r}: expected an Estimate")
    output = estimate.max_output_tokens * estimate.n
    plain = Usage(estimate.input_tokens, output)
    written = Usage(
        estimate.input_tokens, output, cache_write_tokens=estimate.input_tokens
    )
    return max(
        price(model, plain, provider=provider, unknown=unknown),
        price(model, written, provider=provider, unknown=unknown),
    )
