"""The pure arithmetic of rates: no I/O, no clock reads, no anyio.

A rate's bucket level is kept in *unit-nanoseconds* (units x ``per_ns``), so
refilling ``limit`` units per ``per_ns`` nanoseconds adds exactly ``limit``
per elapsed nanosecond and every quantity stays an integer: no float drift.
A level below zero is debt (usage committed above its estimate).
"""

from __future__ import annotations

__all__ = ("refill", "wait_ns")


def refill(level: int, last: int, now: int, rate: int, capacity: int) -> int:
    """The level at ``now`` of a bucket that held ``level`` at ``last``.

    ``rate`` is units refilled per nanosecond (in unit-ns per ns, i.e. the
    limit), ``capacity`` the burst in unit-ns. Time running backwards mints
    nothing.
    """
    if now <= last or level >= capacity:
        return level
    level += rate * (now - last)
    return capacity if level > capacity else level


def wait_ns(level: int, need: int, rate: int) -> int:
    """Nanoseconds until a bucket at ``level`` holds ``need`` (0 if it does)."""
    if level >= need:
        return 0
    return -((level - need) // rate)
