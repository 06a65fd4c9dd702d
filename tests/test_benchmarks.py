"""The benchmark suite's own arithmetic (no timing is asserted anywhere).

``benchmarks/stats.py`` turns measurements into the figures the docs
publish: medians with their spread, per-round ratios and the busiest
window. Wrong arithmetic there would publish wrong numbers, so it is tested
like the library. The suite itself runs in CI as ``--quick``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.report import README_END, README_START, update_readme
from benchmarks.run import Config, Results
from benchmarks.stats import max_in_window, ratios, summarize


class TestSummaries:
    def test_median_and_spread(self) -> None:
        s = summarize([3.0, 1.0, 2.0, 10.0])
        assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)
        assert s.fmt(".1f", " ns") == "2.5 ns (1.0–10.0)"

    def test_one_measurement_has_no_spread_to_show(self) -> None:
        assert summarize([7.0]).fmt(".0f") == "7"

    def test_nothing_to_summarize_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="nothing"):
            summarize([])

    def test_ratios_pair_rounds_not_medians(self) -> None:
        """A slow round slows both sides: its ratio is still 2."""
        r = ratios([2.0, 20.0, 4.0], [1.0, 10.0, 2.0])
        assert (r.median, r.low, r.high) == (2.0, 2.0, 2.0)

    def test_ratios_need_one_measurement_per_round_on_each_side(self) -> None:
        with pytest.raises(ValueError, match="per round"):
            ratios([1.0], [1.0, 2.0])


class TestBusiestWindow:
    def test_counts_events_in_a_closed_window(self) -> None:
        assert max_in_window([0.0, 0.05, 0.1, 0.2], 0.1) == 3
        assert max_in_window([0.0, 0.11, 0.22], 0.1) == 1
        assert max_in_window([], 0.1) == 0

    @given(st.lists(st.floats(0, 10, allow_nan=False), max_size=60))
    def test_matches_counting_every_window_by_brute_force(
        self, times: list[float]
    ) -> None:
        window = 0.5
        brute = max(
            (sum(t <= x <= t + window for x in times) for t in times), default=0
        )
        assert max_in_window(times, window) == brute


class TestReadmeHeadlines:
    def _results(self) -> Results:
        return Results(Config.smoke(), peers=[], baselines=[])

    def test_the_block_between_the_markers_is_replaced_and_nothing_else(
        self, tmp_path: Path
    ) -> None:
        readme = tmp_path / "README.md"
        readme.write_text(f"intro\n{README_START}\nold numbers\n{README_END}\noutro\n")
        update_readme(readme, self._results())
        text = readme.read_text()
        assert text.startswith(f"intro\n{README_START}\n")
        assert text.endswith(f"{README_END}\noutro\n")
        assert "old numbers" not in text
        assert "docs/benchmarks.md" in text

    def test_a_readme_without_the_markers_is_an_error(self, tmp_path: Path) -> None:
        readme = tmp_path / "README.md"
        readme.write_text("no markers\n")
        with pytest.raises(ValueError, match="benchmarks:start"):
            update_readme(readme, self._results())
        assert readme.read_text() == "no markers\n"

    def test_the_real_readme_has_the_block(self) -> None:
        text = (Path(__file__).parent.parent / "README.md").read_text()
        assert text.index(README_START) < text.index(README_END)


class TestStoreArithmetic:
    """``benchmarks/stores.py``: the per-acquisition figures of the store runs."""

    def test_processes_add_up_each_over_its_own_window(self) -> None:
        from benchmarks.stores import Shot, combine

        s = combine(
            [Shot(100, 2.0, 0.5, 0.0), Shot(300, 1.5, 0.25, 0.01)],
            server_cpu=0.2,
            requests=50,
        )
        assert (s.acquisitions, s.per_second, s.client_cpu) == (400, 250.0, 0.75)
        assert s.late == 0.01
        assert s.client_us == pytest.approx(1875.0)
        assert s.server_us == pytest.approx(500.0)
        assert s.round_trips == 0.125

    def test_no_server_no_server_figures(self) -> None:
        from benchmarks.stores import Shot, combine

        s = combine([Shot(10, 1.0, 0.001, 0.0)], server_cpu=None, requests=None)
        assert s.server_us is None
        assert s.round_trips is None
        assert s.client_us == pytest.approx(100.0)

    def test_no_acquisitions_is_not_a_division_error(self) -> None:
        from benchmarks.stores import Shot, combine

        s = combine([Shot(0, 0.0, 0.1, 0.0)], server_cpu=0.1, requests=3)
        assert s.per_second == 0
        assert math.isnan(s.client_us)
        assert s.round_trips is not None
        assert math.isnan(s.round_trips)

    def test_server_delta_leaves_out_the_second_info_request(self) -> None:
        from benchmarks.stores import server_delta

        before = {
            "used_cpu_sys": 1.5,
            "used_cpu_user": 2.0,
            "total_reads_processed": 1000,
        }
        after = {
            "used_cpu_sys": 1.75,
            "used_cpu_user": 2.5,
            "total_reads_processed": 1101,
        }
        cpu, reads = server_delta(before, after)
        assert cpu == pytest.approx(0.75)
        assert reads == 100

    def test_best_ratio_is_to_each_rounds_best(self) -> None:
        from benchmarks.stores import best_ratios

        r = best_ratios([20.0, 30.0, 40.0], [[10.0, 15.0, 5.0], [5.0, 20.0, 10.0]])
        assert (r.median, r.low, r.high) == (2.0, 1.5, 4.0)
        with pytest.raises(ValueError, match="no one"):
            best_ratios([1.0], [])

    def test_percentile_is_nearest_rank(self) -> None:
        from benchmarks.stores import percentile

        values = [float(x) for x in range(100, 0, -1)]  # 100 .. 1
        assert percentile(values, 99) == 99.0
        assert percentile(values, 100) == 100.0
        assert percentile(values, 50) == 50.0
        assert percentile([3.0], 99) == 3.0
        with pytest.raises(ValueError, match="no values"):
            percentile([], 50)
        with pytest.raises(ValueError, match="q="):
            percentile([1.0], 0)
