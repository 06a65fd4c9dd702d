"""The uncontended grab: ``take_now`` specialised for a plan of rates alone.

The memory store's acquisitions go through ``acquire`` (``_decide``) under
the state's lock. When nobody waits, the plan has no caps and the thread
that made the limiter still holds the lock's bias, ``grabber`` gives a
shortcut that decides the same without taking the lock: ``take_now`` for
several rates, and for one rate ``take_now`` itself, step by step (the
hot path of the hot path). It is decision code, so it lives beside the
core; ``tests/test_uncontended.py`` holds it to a limiter that always
locks, and a change to ``take_now`` or its refund marks must be made here
too.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import get_ident
from typing import Protocol

from ._decide import Plan, State, take_now


class BiasedLock(Protocol):
    """The memory store's lock as the grab reads it: the thread it is
    biased to (``None``: no longer), and whether that thread is inside."""

    owner: int | None
    busy: bool


__all__ = ("grabber",)


def grabber(
    lock: BiasedLock, st: State, plan: Plan, monotonic_ns: Callable[[], int]
) -> Callable[[tuple[int, ...]], int] | None:
    """``MemoryBinding.grab`` for a plan of rates alone (``None`` for one
    with caps): ``acquire``'s path when nobody waits, taken only while this
    thread holds the lock's bias (``BiasedLock.enter``, inlined). It runs
    ``take_now``, inlined for one rate: the hot path of the hot path."""
    if plan.caps or not plan.rates:
        return None
    queue = st.queue  # never replaced

    if len(plan.rates) > 1:

        def grab_rates(req: tuple[int, ...]) -> int:
            if lock.owner != get_ident():
                return 0
            lock.busy = True
            try:
                if lock.owner is None or queue:  # the bias went meanwhile
                    return 0
                now = monotonic_ns()
                if now < st.clock:
                    return 0
                st.clock = now
                return take_now(st, plan, req, now)
            finally:
                lock.busy = False

        return grab_rates

    ((i, b),) = plan.rates
    rate, per, cap = b.rate, b.per, b.cap  # a bucket's key fixes them
    mark = b.mark

    def grab(req: tuple[int, ...]) -> int:
        if lock.owner != get_ident():
            return 0
        lock.busy = True
        try:
            n = req[i]
            if lock.owner is None or queue or not n:
                return 0
            now = monotonic_ns()
            if now < st.clock:
                return 0
            st.clock = now
            # ``take_now`` for one rate, step by step
            take = st.take + 1
            # (refilled even when full: a grab finds it full only after a
            # reset, and time read under the lock never runs back)
            level = b.level + rate * (now - b.last)
            if level < cap:
                b.level = level
                mark(take)
            else:  # full: no grant before this one gets a refund
                level = cap
                b.full = take
                if b.peaks:
                    b.peaks.clear()
            b.last = now
            need = n * per
            if level < need:
                b.level = level
                return 0
            b.level = level - need
            st.take = take
            return take
        finally:
            lock.busy = False

    return grab
