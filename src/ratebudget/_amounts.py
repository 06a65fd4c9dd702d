"""Axis names and exact amounts.

Inside, every amount is an integer number of *units*: tokens and requests
count one unit each, USD counts nano-dollars (10**-9), any other axis
micro-units (10**-6). ``Decimal`` (or ``int``) is used only at the API edge.
An amount finer than its axis' unit is rounded *up*, so spend is never
under-counted. One amount is at most ``MAX_UNITS`` units: a larger one is
refused from its decimal exponent, before any conversion, so however many
digits it has the refusal takes microseconds.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Context, Decimal, InvalidOperation
from typing import Final

from ._exceptions import InvalidRequest

__all__ = (
    "COUNT_AXES",
    "MAX_UNITS",
    "STANDARD_AXES",
    "Amount",
    "brief",
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

MAX_UNITS: Final = 2**63 - 1
"""The most units one amount (a limit, a burst, a request) may hold.

A signed 64-bit count, what SQLite and most counters hold exactly: 9.2e18
tokens or requests, about 9.2 billion USD, 9.2e12 of any other axis.
"""

_MAX_DIGITS: Final = len(str(MAX_UNITS))
"""An amount of this many digits of units, or more, is past ``MAX_UNITS``."""

_SHIFT: Final = {1: 0, USD_SCALE: 9, OTHER_SCALE: 6}
"""Decimal places from a whole amount to units, by scale."""

_NUMERAL: Final = re.compile(r"\s*[+-]?(\d[\d_]*)?(\.\d*)?[eE][+-]?\d+\s*$")
"""What ``Decimal`` refuses only for its exponent: ``1e999999999999999999999``."""

_UNIT_NAMES: Final = {1: "", USD_SCALE: " nano-dollars", OTHER_SCALE: " micro-units"}


def scale_of(axis: str) -> int:
    """Units per whole amount on ``axis``."""
    if axis in COUNT_AXES:
        return 1
    if axis == "usd":
        return USD_SCALE
    return OTHER_SCALE


_KEYWORDS: Final = frozenset({"timeout", "labels"})
"""The keywords of acquire() besides the amounts: never an axis."""


def check_axis(axis: str) -> str:
    """Return ``axis`` if it is a valid axis name, else raise ``InvalidRequest``."""
    if not axis.isidentifier() or axis.startswith("_"):
        raise InvalidRequest(f"invalid axis name {axis!r}: use an identifier")
    if axis in _KEYWORDS:
        raise InvalidRequest(
            f"invalid axis name {axis!r}: it is a keyword of acquire()"
        )
    return axis


def brief(value: object) -> str:
    """``repr(value)`` for a message: short, and quick whatever its size."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"<an int of {value.bit_length()} bits>"  # str() of it is slow
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:30]!r}... ({len(value)} characters)"
    try:  # a list may hold an int too long for str(), or a failing __repr__
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__}>"
    return text if len(text) <= 60 else f"{text[:50]}..."


def _negative(axis: str, value: object) -> InvalidRequest:
    return InvalidRequest(f"{axis}={brief(value)}: amounts must not be negative")


def _too_large(axis: str, value: object) -> InvalidRequest:
    scale = scale_of(axis)
    most = from_units(axis, MAX_UNITS)
    return InvalidRequest(
        f"{axis}={brief(value)}: too large; one amount is at most {most} {axis} "
        f"(2**63 - 1{_UNIT_NAMES[scale]})"
    )


def _to_decimal(axis: str, value: object) -> Decimal:
    if isinstance(value, bool):
        raise InvalidRequest(f"{axis}={value!r}: a bool is not an amount")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):  # a subclass: check before a slow conversion
        if value < 0:
            raise _negative(axis, value)
        if value > MAX_UNITS:
            raise _too_large(axis, value)
        d = Decimal(int(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{axis}={value!r}: amounts must be finite")
        d = Decimal(str(value))
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            what = "exponent out of range" if _NUMERAL.match(value) else "not a number"
            raise InvalidRequest(f"{axis}={brief(value)}: {what}") from None
    else:
        raise InvalidRequest(
            f"{axis}={brief(value)}: expected an int, float, Decimal or str, "
            f"got {type(value).__name__}"
        )
    if not d.is_finite():
        raise InvalidRequest(f"{axis}={brief(value)}: amounts must be finite")
    if d < 0:
        raise _negative(axis, value)
    return d


def to_units(axis: str, value: object) -> int:
    """Convert an API amount to integer units, validating it.

    Raises ``InvalidRequest`` for a bool, a negative, NaN or infinite value,
    a non-number, a fractional count of tokens or requests, or an amount of
    more than ``MAX_UNITS`` units (after rounding up).
    """
    if type(value) is int:  # the hot path: tokens=2_000
        units = value * scale_of(axis)
        if 0 <= units <= MAX_UNITS:
            return units
        raise _negative(axis, value) if value < 0 else _too_large(axis, value)
    d = _to_decimal(axis, value)
    shift = _SHIFT[scale_of(axis)]
    # 10**adjusted() <= d: refuse from the exponent, before a conversion to
    # int that would take minutes for a number of a million digits
    if d and d.adjusted() + shift >= _MAX_DIGITS:
        raise _too_large(axis, value)
    if shift == 0:
        if d != d.to_integral_value():
            raise InvalidRequest(
                f"{axis}={brief(value)}: {axis} are counted in whole units"
            )
        units = int(d)
    else:
        sign, digits, exponent = d.as_tuple()
        assert isinstance(exponent, int)  # finite, checked above
        shifted = Decimal((sign, digits, exponent + shift))
        # exact whatever the caller's decimal context: no precision is applied
        units = int(shifted.to_integral_value(rounding=ROUND_CEILING))
    if units > MAX_UNITS:
        raise _too_large(axis, value)
    return units


def from_units(axis: str, units: int) -> int | Decimal:
    """Convert integer units back to the API's number: ``int`` or ``Decimal``."""
    scale = scale_of(axis)
    if scale == 1:
        return units
    return _EXACT.divide(Decimal(units), scale)
