"""Axis names and exact amounts.

Inside, every amount is an integer number of *units*: tokens and requests
count one unit each, USD counts nano-dollars (10**-9), any other axis
micro-units (10**-6). ``Decimal`` (or ``int``) is used only at the API edge.
An amount finer than its axis' unit is rounded *up*, so spend is never
under-counted.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Context, Decimal, InvalidOperation
from typing import Final

from ._exceptions import InvalidRequest

__all__ = (
    "COUNT_AXES",
    "STANDARD_AXES",
    "Amount",
    "check_axis",
    "from_units",
    "scale_of",
    "to_units",
)

Amount = int | float | Decimal | str
"""What callers may pass as an amount: ``0.1`` means one tenth (via ``str``)."""

COUNT_AXES: Final = frozenset({"requests", "tokens", "input_tokens", "output_tokens"})
STANDARD_AXES: Final = COUNT_AXES | {"usd"}

_EXACT: Final = Context(prec=100, Emax=10**6, Emin=-(10**6))
"""Division by a power of ten is exact with this context, unlike the caller's."""

USD_SCALE: Final = 10**9
OTHER_SCALE: Final = 10**6


def scale_of(axis: str) -> int:
    """Units per whole amount on ``axis``."""
    if axis in COUNT_AXES:
        return 1
    if axis == "usd":
        return USD_SCALE
    return OTHER_SCALE


def check_axis(axis: str) -> str:
    """Return ``axis`` if it is a valid axis name, else raise ``InvalidRequest``."""
    if not axis.isidentifier() or axis.startswith("_"):
        raise InvalidRequest(f"invalid axis name {axis!r}: use an identifier")
    return axis


def _to_decimal(axis: str, value: object) -> Decimal:
    if isinstance(value, bool):
        raise InvalidRequest(f"{axis}={value!r}: a bool is not an amount")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{axis}={value!r}: amounts must be finite")
        d = Decimal(str(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidRequest(f"{axis}={value!r}: not a number") from None
    else:
        raise InvalidRequest(
            f"{axis}={value!r}: expected an int, float, Decimal or str, "
            f"got {type(value).__name__}"
        )
    if not d.is_finite():
        raise InvalidRequest(f"{axis}={value!r}: amounts must be finite")
    if d < 0:
        raise InvalidRequest(f"{axis}={value!r}: amounts must not be negative")
    return d


def to_units(axis: str, value: object) -> int:
    """Convert an API amount to integer units, validating it.

    Raises ``InvalidRequest`` for a bool, a negative, NaN or infinite value,
    a non-number, or a fractional count of tokens or requests.
    """
    if type(value) is int:  # the hot path: tokens=2_000
        if value < 0:
            raise InvalidRequest(f"{axis}={value!r}: amounts must not be negative")
        return value * scale_of(axis)
    d = _to_decimal(axis, value)
    if axis in COUNT_AXES:
        if d != d.to_integral_value():
            raise InvalidRequest(f"{axis}={value!r}: {axis} are counted in whole units")
        return int(d)
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    shifted = Decimal((sign, digits, exponent + (9 if axis == "usd" else 6)))
    # exact whatever the caller's decimal context: no precision is applied
    return int(shifted.to_integral_value(rounding=ROUND_CEILING))


def from_units(axis: str, units: int) -> int | Decimal:
    """Convert integer units back to the API's number: ``int`` or ``Decimal``."""
    scale = scale_of(axis)
    if scale == 1:
        return units
    return _EXACT.divide(Decimal(units), scale)
