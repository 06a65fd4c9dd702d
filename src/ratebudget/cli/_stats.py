"""What the demo measures: peaks in a sliding window, percentiles, a rate's report."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RateReport:
    """What one rate allowed, measured from the recorded timestamps.

    ``peak`` is the most granted in any closed window of ``window`` simulated
    seconds; ``peak_bound`` is the contract's ``burst + limit/per * window``.
    ``mean`` is per simulated minute over ``span`` seconds (first grant to
    last grant, or to last commit for tokens); ``mean_bound`` the same bound
    spread over ``span``.  Tokens count as charged: the estimate at grant,
    less the refund at commit.
    """

    axis: str
    limit: int
    burst: int
    window: float
    peak: int
    peak_bound: float
    mean: float
    mean_bound: float
    span: float


def peak_in_window(events: Sequence[tuple[float, int]], window: float) -> int:
    """Largest sum of ``amount`` over ``(time, amount)`` in any closed window.

    The sum only changes where a window edge crosses an event, so it suffices
    to try the windows whose start or end sits on an event, each with that
    edge's event in and out (amounts may be negative).  ``O(n log n)``.
    """
    if not events:
        return 0
    ordered = sorted(events)
    times = [t for t, _ in ordered]
    prefix = [0]
    for _, amount in ordered:
        prefix.append(prefix[-1] + amount)
    left, right = bisect.bisect_left, bisect.bisect_right
    best = 0
    for t in times:
        end = right(times, t + window)
        best = max(best, prefix[end] - prefix[left(times, t)])  # [t, t + w]
        best = max(best, prefix[end] - prefix[right(times, t)])  # (t, t + w]
        start = left(times, t - window)
        best = max(best, prefix[right(times, t)] - prefix[start])  # [t - w, t]
        best = max(best, prefix[left(times, t)] - prefix[start])  # [t - w, t)
    return best


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in ``[0, 1]``; ``0.0`` when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rate_report(
    axis: str, limit: int, burst: int, events: Sequence[tuple[float, int]]
) -> RateReport:
    """The :class:`RateReport` of one rate from its ``(time, amount)`` grants."""
    per = 60.0
    if events:
        times = [t for t, _ in events]
        span = max(times) - min(times)
    else:
        span = 0.0
    total = sum(amount for _, amount in events)
    mean = total / span * per if span > 0 else 0.0
    mean_bound = (burst + limit * span / per) / span * per if span > 0 else math.inf
    return RateReport(
        axis=axis,
        limit=limit,
        burst=burst,
        window=per,
        peak=peak_in_window(events, per),
        peak_bound=burst + limit,
        mean=mean,
        mean_bound=mean_bound,
        span=span,
    )
