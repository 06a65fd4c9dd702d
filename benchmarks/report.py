"""Turn a run's ``Results`` into ``benchmarks.md`` and PNG charts."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from benchmarks.run import BACKENDS, Results
from benchmarks.stats import Summary, ratios, summarize

__all__ = ("headlines", "update_readme", "write")

REF = "ratebudget"
AIOLIMITER = "aiolimiter"
FIFO_REF = "anyio.CapacityLimiter"


def _find(names: list[str], prefix: str) -> str | None:
    return next((n for n in names if n.startswith(prefix)), None)


def _ratio(s: Summary) -> str:
    return s.fmt(".2f", "×")


def headlines(res: Results) -> list[str]:
    """The three ratios the README quotes, as sentences."""
    out: list[str] = []
    names = [p.name for p in res.peers]
    aio = _find(names, AIOLIMITER)
    if aio and ("asyncio", aio) in res.hot:
        r = res.hot_ratio("asyncio", REF, aio)
        out.append(
            f"uncontended `async with limiter.acquire(1)`: {_ratio(r)} "
            f"aiolimiter's time per acquisition (asyncio)"
        )
    cap = _find(names, FIFO_REF)
    n = max(res.config.contended_n)
    if cap and (n, "asyncio", cap) in res.contended:
        ours = [x.cpu_per_grant_us(n) for x in res.contended[n, "asyncio", REF]]
        theirs = [x.cpu_per_grant_us(n) for x in res.contended[n, "asyncio", cap]]
        out.append(
            f"{n:,} waiters: {_ratio(ratios(ours, theirs))} the CPU per grant "
            f"of anyio.CapacityLimiter's FIFO hand-off"
        )
    if ("asyncio", REF) in res.accuracy:
        acc = res.accuracy["asyncio", REF]
        achieved = summarize([a.achieved_ratio for a in acc])
        worst = max(a.max_window for a in acc)
        out.append(
            f"accuracy: {achieved.median:.2%} of the configured rate; at most "
            f"{worst} grants in any 100 ms window (bound "
            f"{acc[0].window_bound:g})"
        )
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _hot_section(res: Results, img: Path, rel: str) -> str:
    names = [p.name for p in res.peers if p.hot is not None] + [
        b.name for b in res.baselines
    ]
    rows = []
    for name in names:
        row = [name]
        for backend in BACKENDS:
            if (backend, name) in res.hot:
                s = res.hot_summary(backend, name)
                r = res.hot_ratio(backend, name, REF)
                row += [s.fmt(".0f", " ns"), _ratio(r)]
            else:
                row += ["—", "—"]
        rows.append(row)
    header = ["", "asyncio", "ratio to ratebudget", "trio", "ratio to ratebudget"]
    _chart_hot(res, names, img / "bench-uncontended.png")
    return (
        "## 1. Uncontended\n\n"
        f"One task, an effectively infinite rate, {res.config.hot_n:,} "
        "`async with` per round, each peer used the way its docs show. ns "
        "per acquisition (median, min–max over rounds) and the median of "
        "per-round ratios to ratebudget (below 1: faster than ratebudget).\n\n"
        + _table(header, rows)
        + f"\n\n![uncontended]({rel}/bench-uncontended.png)\n"
    )


def _multi_section(res: Results) -> str:
    if not res.multi:
        return ""
    first = "ratebudget: RPM + TPM + USD cap"
    names = sorted(
        {n for _, n in res.multi},
        key=lambda n: (n != first, not n.startswith(REF), n),
    )
    ref = names[0]
    rows = []
    for name in names:
        row = [name]
        for backend in BACKENDS:
            if (backend, name) in res.multi and (backend, ref) in res.multi:
                s = summarize(res.multi[backend, name])
                r = ratios(res.multi[backend, name], res.multi[backend, ref])
                row += [s.fmt(".0f", " ns"), _ratio(r)]
            else:
                row += ["—", "—"]
        rows.append(row)
    header = ["", "asyncio", f"ratio to {ref}", "trio", "ratio"]
    # the cost of a path itself: three scopes against one limiter holding
    # the same six limits
    path = "ratebudget: 3 scopes down a path, RPM + USD cap at each"
    flat = "ratebudget: one limiter with the same 3 RPM rates + 3 USD caps"

    def per_backend(name: str, against: str) -> str:
        """``name``'s ratio to ``against``, on each backend that ran both."""
        out = ""
        for backend in BACKENDS:
            if (backend, name) in res.multi and (backend, against) in res.multi:
                r = ratios(res.multi[backend, name], res.multi[backend, against])
                out += f" {backend}: {_ratio(r)};"
        return out

    note = per_backend(path, flat)
    if note:
        note = (
            "\n\nA scope three levels deep costs, against one limiter with the "
            f"same six limits (the same counting, in one state):{note[:-1]}.\n"
        )
    booked = "ratebudget: RPM + TPM + USD cap, a row per commit in a SQLite ledger"
    ledger = per_backend(booked, ref)
    on_file = per_backend(
        "ratebudget on a SQLite store: RPM + USD cap, ledger in its file",
        "ratebudget on a SQLite store: RPM + USD cap",
    )
    if on_file:
        ledger += f" on a SQLite store, the row in the commit's transaction:{on_file}"
    if ledger:
        note += (
            "\nA ledger row per commit (written by the ledger's own thread, "
            "beside the timed loop) costs the caller, against the same limiter "
            f"without a ledger:{ledger[:-1]}.\n"
        )
    return (
        "## 7. Several limits in one acquisition\n\n"
        "RPM + TPM (+ a USD cap), one acquisition of 100 tokens (and "
        "$0.0001), uncontended. The peers have no spend cap and no atomic "
        "acquisition over several limits; the nearest is one limiter per "
        "limit, acquired in sequence.\n\n" + _table(header, rows) + note + "\n"
    )


def _contended_section(res: Results, img: Path, rel: str) -> str:
    cfg = res.config
    rows = []
    for peer in res.peers:
        for backend in BACKENDS:
            if backend not in peer.backends:
                continue
            row = [peer.name, backend]
            per_n = []
            for n in cfg.contended_n:
                runs = res.contended.get((n, backend, peer.name), [])
                if not runs:
                    row += ["—", "—"]
                    continue
                ideal = n / cfg.contended_rate
                if not all(r.finished for r in runs):
                    row += ["did not finish", "—"]
                    per_n.append(math.nan)
                    continue
                wall = summarize([r.wall / ideal for r in runs])
                cpu = summarize([r.cpu_per_grant_us(n) for r in runs])
                per_n.append(cpu.median)
                row += [_ratio(wall), cpu.fmt(".1f", " µs")]
            growth = (
                f"{per_n[-1] / per_n[0]:.2f}×"
                if len(per_n) > 1 and not any(math.isnan(x) for x in per_n)
                else "—"
            )
            rows.append([*row, growth])
    header = ["", "backend"]
    for n in cfg.contended_n:
        header += [f"wall / ideal, {n:,}", f"CPU per grant, {n:,}"]
    header.append("CPU growth")
    _chart_contended(res, img / "bench-contended.png")
    return (
        "## 2. Contended\n\n"
        f"N tasks started at once, one acquisition each, "
        f"{cfg.contended_rate:,.0f}/s with a burst of {cfg.contended_burst}. "
        "Wall time over the ideal N / rate; CPU per grant "
        "(`time.process_time()`) net of spawning and finishing the same N "
        "tasks doing nothing; and how CPU per grant grows from the smaller N "
        "to the larger (a thundering herd shows as growth).\n\n"
        + _table(header, rows)
        + f"\n\n![contended]({rel}/bench-contended.png)\n"
    )


def _accuracy_section(res: Results, img: Path, rel: str) -> str:
    cfg = res.config
    rows = []
    for peer in res.peers:
        for backend in BACKENDS:
            runs = res.accuracy.get((backend, peer.name))
            if not runs:
                continue
            achieved = summarize([r.achieved_ratio for r in runs])
            window = summarize([float(r.max_window) for r in runs])
            over = sum(r.max_window > r.window_bound for r in runs)
            rows.append(
                [
                    peer.name,
                    backend,
                    achieved.fmt(".3f"),
                    window.fmt(".0f"),
                    f"{runs[0].window_bound:g}",
                    f"{over} of {len(runs)}",
                ]
            )
    header = [
        "",
        "backend",
        "achieved / configured",
        "most grants in 100 ms",
        "bound",
        "runs over the bound",
    ]
    _chart_accuracy(res, img / "bench-accuracy.png")
    return (
        "## 3. Accuracy\n\n"
        f"{cfg.accuracy_tasks} tasks acquire 1 unit in a loop for "
        f"{cfg.accuracy_s:g} s at {cfg.accuracy_rate:g}/s, burst "
        f"{cfg.accuracy_burst}. Achieved rate (grants beyond the first burst, "
        "per second) over the configured rate, and the most grants in any "
        "100 ms window against `burst + rate × 0.1`. Grant times are taken "
        "when the task resumes, so scheduling delay counts against every "
        "library alike.\n\n"
        + _table(header, rows)
        + f"\n\n![accuracy]({rel}/bench-accuracy.png)\n"
    )


def _fairness_section(res: Results) -> str:
    cfg = res.config
    rows = []
    expected = None
    for peer in res.peers:
        for backend in BACKENDS:
            runs = res.fairness.get((backend, peer.name))
            if not runs:
                continue
            expected = runs[0].expected_first
            firsts = [r.first_big for r in runs]
            served = [f for f in firsts if f is not None]
            first = (
                summarize(served).fmt(".2f", " s")
                + (
                    ""
                    if len(served) == len(runs)
                    else f" ({len(runs) - len(served)} never)"
                )
                if served
                else "never"
            )
            share = summarize([r.big_share for r in runs])
            rows.append([peer.name, backend, first, f"{share.median:.0%}"])
    header = ["", "backend", "big task first served", "its share of units"]
    return (
        "## 4. Fairness\n\n"
        f"{cfg.fair_small} tasks want 1 unit each in a loop; then one task "
        f"wants {cfg.fair_big} ({cfg.fair_rate:g}/s, burst {cfg.fair_burst}, "
        f"{cfg.fair_s:g} s). The small tasks take the burst and queue again "
        "before the big one arrives, so first come, first served grants it "
        f"after one more unit for each of them: at "
        f"{expected if expected is not None else math.nan:.2f} s.\n\n"
        + _table(header, rows)
        + "\n"
    )


def _cancellation_section(res: Results) -> str:
    cfg = res.config
    rows = []
    for peer in [*res.peers, *res.store_peers]:
        for backend in BACKENDS:
            runs = res.cancellation.get((backend, peer.name))
            if not runs:
                continue
            if not all(r.finished for r in runs):
                rows.append([peer.name, backend, "did not finish", "—"])
                continue
            lost = summarize([r.lost for r in runs])
            rate = summarize([r.survivors_rate / r.rate for r in runs])
            rows.append([peer.name, backend, lost.fmt(".1f"), rate.fmt(".3f")])
    header = ["", "backend", "capacity lost (units)", "survivors' rate / configured"]
    return (
        "## 5. Cancellation\n\n"
        f"{cfg.cancel_waiters} waiters on a drained bucket "
        f"({cfg.cancel_rate:g}/s, burst 10, drained first); at "
        f"{cfg.cancel_at:g} s half of "
        "those still waiting are cancelled. Capacity lost: the units the "
        "bucket refilled from the drain to the last grant, minus the units "
        "granted (about 0 when cancelled waiters take nothing; one unit is "
        "timing noise). Then the survivors' rate over the configured rate. "
        "ratebudget runs on its three stores: the waiters behind a cancelled "
        "one move up at once on every store.\n\n" + _table(header, rows) + "\n"
    )


def _threads_section(res: Results) -> str:
    cfg = res.config
    rows = []
    for label, runs in res.threads.items():
        errors = sorted({e for r in runs for e in r.errors})
        ps = summarize([r.per_second for r in runs])
        achieved = summarize([r.achieved_ratio for r in runs])
        window = max(r.max_window for r in runs)
        rows.append(
            [
                label,
                ps.fmt(",.0f"),
                achieved.fmt(".3f"),
                f"{window} (bound {runs[0].burst + runs[0].rate * 0.1:g})",
                "; ".join(errors)[:80] or "none",
            ]
        )
    header = [
        "",
        "grants per second",
        "achieved / configured",
        "most in 100 ms",
        "errors",
    ]
    return (
        "## 6. Threads\n\n"
        f"One limiter, {cfg.threads_rate:,.0f}/s, burst {cfg.threads_burst}, "
        f"{cfg.threads_s:g} s: 8 plain threads through each library's "
        "blocking API, and 4 threads each running its own event loop (5 "
        "tasks each) through ratebudget.\n\n" + _table(header, rows) + "\n"
    )


def _cannot_section(res: Results) -> str:
    rows = [
        [p.name, ", ".join(p.backends), p.cannot] for p in [*res.peers, *res.baselines]
    ]
    return (
        "## What each one can and cannot express\n\n"
        + _table(["", "runs on", "notes"], rows)
        + "\n"
    )


# -- charts ------------------------------------------------------------------------


def _plt() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _chart_hot(res: Results, names: list[str], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    height = 0.38
    for k, backend in enumerate(BACKENDS):
        ys, xs, errs = [], [], []
        for i, name in enumerate(names):
            if (backend, name) in res.hot:
                s = res.hot_summary(backend, name)
                ys.append(i + (k - 0.5) * height)
                xs.append(s.median)
                errs.append([[s.median - s.low], [s.high - s.median]])
        if xs:
            err = [[e[0][0] for e in errs], [e[1][0] for e in errs]]
            ax.barh(ys, xs, height=height, xerr=err, label=backend)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ns per acquisition (log scale; lower is better)")
    ax.set_title("Uncontended acquisition")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_contended(res: Results, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for peer in res.peers:
        xs, ys = [], []
        for n in res.config.contended_n:
            runs = res.contended.get((n, "asyncio", peer.name), [])
            if runs and all(r.finished for r in runs):
                xs.append(n)
                ys.append(summarize([r.cpu_per_grant_us(n) for r in runs]).median)
        if xs:
            ax.plot(xs, ys, marker="o", label=peer.name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("waiters")
    ax.set_ylabel("CPU µs per grant (log; lower is better)")
    ax.set_title("Contended, asyncio")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_accuracy(res: Results, path: Path) -> None:
    plt = _plt()
    labels, achieved, windows = [], [], []
    bound = None
    for peer in res.peers:
        runs = res.accuracy.get(("asyncio", peer.name))
        if runs:
            labels.append(peer.name)
            achieved.append(summarize([r.achieved_ratio for r in runs]).median)
            windows.append(max(r.max_window for r in runs))
            bound = runs[0].window_bound
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.45 * len(labels) + 1.5))
    a1.barh(labels, achieved)
    a1.axvline(1.0, color="black", linewidth=1)
    a1.set_xlabel("achieved / configured rate (1 is exact)")
    a1.invert_yaxis()
    a2.barh(labels, windows)
    if bound is not None:
        a2.axvline(bound, color="red", linewidth=1, label="bound")
        a2.legend()
    a2.set_xlabel("most grants in any 100 ms window")
    a2.set_yticks([])
    a2.invert_yaxis()
    fig.suptitle("Accuracy, asyncio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_READING = """## Reading the numbers

- A rate limiter that finishes the contended workload **faster than the
  ideal** (wall / ideal below 1) or posts a tiny CPU per grant has granted
  more than the rate allows, not worked faster: limits keeps windows of
  whole seconds, so it lets a second's worth through at once (see its
  most-grants-in-100-ms column). Read CPU per grant next to accuracy.
- `anyio.CapacityLimiter (FIFO hand-off)` is no rate limiter: it is the
  cost of one fair hand-off between tasks, the least a FIFO limiter can
  spend per grant. Its wall time means nothing.
- throttled-py's waiters sleep at least 0.2 s between tries, and its token
  bucket refills in whole seconds: under contention it passes about a
  burst per 0.2 s (GCRA) or per second (token bucket), whatever the rate.
- ratebudget also counts one request per acquisition, keeps a lease per
  acquisition for reserve/commit, and is thread-safe; aiolimiter, its
  closest peer on the uncontended path, does none of that.
"""

README_START = "<!-- benchmarks:start -->"
README_END = "<!-- benchmarks:end -->"


def update_readme(readme: Path, res: Results) -> None:
    """Replace the headline block of README.md with this run's headlines."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} block")
    when = dt.datetime.fromtimestamp(res.started, dt.timezone.utc)
    lines = [
        README_START,
        f"In the run published in [docs/benchmarks.md](docs/benchmarks.md) "
        f"({when:%Y-%m-%d}, `python -m benchmarks`, ratios measured in one "
        "run):",
        "",
        *[f"- {h}" for h in headlines(res)],
        "",
    ]
    readme.write_text(text[:start] + "\n".join(lines) + text[end:])


def write(
    res: Results, out: Path, *, command: str, machine: str, versions: dict[str, str]
) -> Path:
    """Write ``out/benchmarks.md`` and ``out/img/bench-*.png``; return the page."""
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    when = dt.datetime.fromtimestamp(res.started, dt.timezone.utc)
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    parts = [
        "# Benchmarks\n",
        "ratebudget and the libraries you would otherwise use, measured in "
        "one process and one run, on the same workloads. Absolute times on a "
        "shared machine drift by 2× from run to run, so compare the ratios: "
        "each is measured within the same run, rounds interleaved.\n",
        f"- **Command**: `{command}` ({res.elapsed:.0f} s)",
        f"- **When**: {when:%Y-%m-%d %H:%M} UTC",
        f"- **Machine**: {machine}",
        f"- **Versions**: {vers}",
        f"- **Rounds**: every figure is the median of {res.config.rounds} "
        f"runs ({res.config.hot_rounds} for the uncontended ones, fewer for "
        "the slowest), with min–max in parentheses\n",
        "## Headlines\n",
        *[f"- {h}" for h in headlines(res)],
        "",
        "Uncontended acquisitions do not yield to the event loop (like "
        "`asyncio.Lock` and anyio's `fast_acquire`); see "
        "[Concepts](concepts.md#uncontended-acquisitions-do-not-yield).\n",
    ]
    parts.append(_READING)
    rel = "img"
    if res.hot:
        parts.append(_hot_section(res, img, rel))
    if res.contended:
        parts.append(_contended_section(res, img, rel))
    if res.accuracy:
        parts.append(_accuracy_section(res, img, rel))
    if res.fairness:
        parts.append(_fairness_section(res))
    if res.cancellation:
        parts.append(_cancellation_section(res))
    if res.threads:
        parts.append(_threads_section(res))
    if res.multi:
        parts.append(_multi_section(res))
    if res.stores is not None:
        from benchmarks.stores import section

        parts.append(section(res))
    if res.cluster is not None:
        from benchmarks.cluster import section as cluster_section

        parts.append(cluster_section(res))
    parts.append(_cannot_section(res))
    page = out / "benchmarks.md"
    page.write_text("\n".join(parts))
    return page
