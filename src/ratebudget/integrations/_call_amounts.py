"""The amounts a metered call reserves and commits (shared by the transport and
``limiter.meter()``)."""

from __future__ import annotations

from typing import Any

from .._exceptions import InvalidRequest
from ._estimate import Estimate
from ._parse import Usage

__all__ = ("commit_amounts", "reserve_amounts")


def reserve_amounts(
    est: Estimate,
    *,
    priced: bool,
    model: str | None,
    provider: str,
    unknown: Any,
) -> dict[str, Any]:
    """``requests`` aside, what an estimate reserves on every axis."""
    output = est.max_output_tokens * max(est.n, 1)
    amounts: dict[str, Any] = {
        "tokens": est.input_tokens + output,
        "input_tokens": est.input_tokens,
        "output_tokens": output,
    }
    if priced:
        from .prices import estimate_cost

        if model is None:
            raise InvalidRequest("the request names no model: it cannot be priced")
        amounts["usd"] = estimate_cost(model, est, provider=provider, unknown=unknown)
    return amounts


def commit_amounts(
    usage: Usage,
    *,
    priced: bool,
    model: str | None,
    provider: str,
    unknown: Any,
) -> dict[str, Any]:
    """What a call used, on every axis."""
    amounts: dict[str, Any] = {
        "tokens": usage.total_tokens,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }
    if priced:
        from .prices import price

        if model is None:
            raise InvalidRequest("the response names no model: it cannot be priced")
        amounts["usd"] = price(model, usage, provider=provider, unknown=unknown)
    return amounts
