"""Pure helpers of the benchmark suite: summaries, ratios, windows.

No clocks and no I/O here, so ``tests/test_benchmarks.py`` can check them.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ("Summary", "max_in_window", "ratios", "summarize")


@dataclass(frozen=True)
class Summary:
    """The median of repeated measurements and their spread (min and max)."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, spec: str = ".0f", unit: str = "") -> str:
        """``median (low–high)``, or the median alone for one measurement."""
        if self.n == 1 or self.low == self.high:
            return f"{self.median:{spec}}{unit}"
        return f"{self.median:{spec}}{unit} ({self.low:{spec}}–{self.high:{spec}})"


def summarize(values: Sequence[float]) -> Summary:
    """Median, min and max of ``values`` (at least one)."""
    if not values:
        raise ValueError("nothing to summarize")
    return Summary(statistics.median(values), min(values), max(values), len(values))


def ratios(values: Sequence[float], reference: Sequence[float]) -> Summary:
    """Per-round ratios ``values[i] / reference[i]``, summarized.

    Rounds are interleaved, so a ratio compares two measurements taken a
    moment apart: on a noisy machine the ratio of medians drifts, the median
    of ratios much less.
    """
    if len(values) != len(reference):
        raise ValueError("one measurement per round on both sides")
    return summarize([v / r for v, r in zip(values, reference, strict=True)])


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most events in any closed window ``[t, t + window]``."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        j = bisect.bisect_right(ordered, t + window)
        best = max(best, j - i)
    return best
