"""What a metered call charges, and which limiter (shared by the transport and
``limiter.meter()``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidRequest
from .._scope import current_scope, labels_of
from ._estimate import Estimate
from ._parse import Usage

if TYPE_CHECKING:
    from .. import Limiter

__all__ = ("charged", "commit_amounts", "priced", "reserve_amounts")


def priced(limiter: Limiter) -> bool:
    """Whether ``limiter`` (or a scope it is charged with) counts ``usd``:
    its calls must be priced."""
    return any(limit.axis == "usd" for limit in limiter._limits)


def charged(
    limiter: Limiter,
    labels: Mapping[str, str] | None = None,
    **call: str | None,
) -> tuple[Limiter, Mapping[str, str]]:
    """The limiter a metered call charges (the current ``ratebudget.scope``'s,
    else ``limiter``) and its labels: the scope's, then the call's own
    (``operation``, ``provider``, ``model``; those not ``None``), then
    ``labels``, each replacing the ones before of the same key."""
    merged: dict[str, str] = {}
    current = current_scope()
    if current is not None:
        limiter = current.limiter or limiter
        merged.update(current.labels)
    merged.update((k, v[:256]) for k, v in call.items() if v)
    merged.update(labels_of(labels))
    return limiter, labels_of(merged)


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
    booked: bool = False,
) -> dict[str, Any]:
    """What a call used, on every axis. ``booked``: its limiter counts no
    USD but keeps a ledger, so the call is priced if it can be (else the
    ledger counts it unpriced: never $0)."""
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
    elif booked and model is not None:
        from .prices import price

        try:
            amounts["usd"] = price(model, usage, provider=provider, unknown=unknown)
        except InvalidRequest:  # an unknown model, no price table: unpriced
            pass
    return amounts
