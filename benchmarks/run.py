"""Run every workload on ratebudget and its peers; write the report.

``python -m benchmarks`` (or ``python benchmarks/run.py``) runs the full
suite and rewrites ``docs/benchmarks.md`` and ``docs/img/bench-*.png``;
``--quick`` is a smoke run of the same code with small sizes, written to a
temporary directory unless ``--out`` says otherwise. Every figure is a median
over repeated runs with its spread (min–max); every comparison is a ratio
measured in the same process and run, rounds interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if __package__ in (None, ""):  # ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio

from benchmarks import workloads as w
from benchmarks.peers import Peer, baselines, peers, ratebudget_on
from benchmarks.stats import Summary, ratios, summarize

if TYPE_CHECKING:
    from benchmarks.cluster import ClusterResults
    from benchmarks.stores import StoreResults

__all__ = ("Config", "Results", "main")

BACKENDS = ("asyncio", "trio")
T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    """Sizes of one run: the issue's full sizes, or a smoke run's."""

    quick: bool
    rounds: int  # repetitions of every measurement
    hot_rounds: int  # the uncontended ones: short, so more of them
    hot_n: int  # acquisitions per uncontended round
    contended_n: tuple[int, ...]
    contended_rate: float = 20_000
    contended_burst: int = 100
    accuracy_tasks: int = 200
    accuracy_rate: float = 500
    accuracy_burst: int = 10
    accuracy_s: float = 3.0
    fair_small: int = 50
    fair_big: int = 50
    fair_rate: float = 100
    fair_burst: int = 50
    fair_s: float = 3.0
    cancel_waiters: int = 100
    cancel_rate: float = 100
    cancel_at: float = 0.2
    threads_rate: float = 2_000
    threads_burst: int = 20
    threads_s: float = 2.0
    store_rounds: int = 5  # workload 8 (benchmarks/stores.py)
    store_s: float = 2.0  # the counting window of one run
    store_warm_s: float = 0.5
    store_lead_s: float = 0.3  # for the worker processes to get ready
    store_procs: int = 8
    store_tasks: int = 16  # per process, with store_procs processes
    store_many: int = 64  # tasks in one process
    sqlite_procs: tuple[int, ...] = (1, 4)
    sqlite_tasks: tuple[int, ...] = (1, 16)
    store_latency_n: int = 2_000
    cluster_names: int = 12  # workload 9 (benchmarks/cluster.py)

    @classmethod
    def full(cls) -> Config:
        return cls(
            quick=False,
            rounds=5,
            hot_rounds=11,
            hot_n=50_000,
            contended_n=(1_000, 10_000),
        )

    @classmethod
    def smoke(cls) -> Config:
        return cls(
            quick=True,
            rounds=1,
            hot_rounds=1,
            hot_n=3_000,
            contended_n=(1_000, 10_000),
            accuracy_s=0.3,
            fair_s=1.2,
            cancel_waiters=40,
            threads_s=0.3,
            store_rounds=1,
            store_s=0.1,
            store_warm_s=0.05,
            store_lead_s=0.1,
            store_procs=2,
            sqlite_procs=(1, 2),
            store_latency_n=200,
            cluster_names=6,
        )


@dataclass
class Results:
    """Raw measurements, keyed by (workload detail, backend, peer name)."""

    config: Config
    peers: list[Peer]
    baselines: list[Peer]
    store_peers: list[Peer] = field(default_factory=list)  # ratebudget on stores
    hot: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    multi: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    contended: dict[tuple[int, str, str], list[w.ContendedResult]] = field(
        default_factory=dict
    )
    accuracy: dict[tuple[str, str], list[w.AccuracyResult]] = field(
        default_factory=dict
    )
    fairness: dict[tuple[str, str], list[w.FairnessResult]] = field(
        default_factory=dict
    )
    cancellation: dict[tuple[str, str], list[w.CancelResult]] = field(
        default_factory=dict
    )
    threads: dict[str, list[w.ThreadsResult]] = field(default_factory=dict)
    stores: StoreResults | None = None
    cluster: ClusterResults | None = None
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0

    def hot_summary(self, backend: str, name: str) -> Summary:
        return summarize(self.hot[backend, name])

    def hot_ratio(self, backend: str, name: str, to: str) -> Summary:
        return ratios(self.hot[backend, name], self.hot[backend, to])


def _run(backend: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    gc.collect()
    return anyio.run(fn, *args, backend=backend)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bench_hot(cfg: Config, res: Results) -> None:
    candidates = [p for p in res.peers if p.hot is not None] + res.baselines
    for backend in BACKENDS:
        for _ in range(cfg.hot_rounds):  # interleaved: one round of everyone at a time
            for peer in candidates:
                if backend not in peer.backends:
                    continue
                ns = _run(backend, w.uncontended, peer, cfg.hot_n)
                res.hot.setdefault((backend, peer.name), []).append(ns)
        _log(f"  uncontended, {backend}: done")


def _bench_multi(cfg: Config, res: Results) -> None:
    from benchmarks.multi import candidates

    cands = candidates()
    for backend in BACKENDS:
        for _ in range(cfg.hot_rounds):
            for name, (backends, run) in cands.items():
                if backend in backends:
                    ns = _run(backend, run, cfg.hot_n)
                    res.multi.setdefault((backend, name), []).append(ns)
    _log("  multi-limit: done")


def _bench_contended(cfg: Config, res: Results) -> None:
    for n in cfg.contended_n:
        ideal = n / cfg.contended_rate
        for backend in BACKENDS:
            for _ in range(cfg.rounds):
                for peer in res.peers:
                    if backend not in peer.backends:
                        continue
                    r = _run(
                        backend,
                        w.contended,
                        peer,
                        n,
                        cfg.contended_rate,
                        cfg.contended_burst,
                        5 * ideal + 5,
                    )
                    res.contended.setdefault((n, backend, peer.name), []).append(r)
        _log(f"  contended n={n}: done")


def _each_rate_limiter(
    res: Results,
    rounds: int,
    store: dict[tuple[str, str], list[T]],
    fn: Callable[..., Awaitable[T]],
    *args: Any,
) -> None:
    """Run ``fn(peer, *args)`` for every rate limiter on every backend it
    runs on, ``rounds`` times, rounds interleaved; append to ``store``."""
    for backend in BACKENDS:
        for _ in range(rounds):
            for peer in res.peers:
                if backend in peer.backends and peer.limits_rate:
                    r = _run(backend, fn, peer, *args)
                    store.setdefault((backend, peer.name), []).append(r)


def _bench_accuracy(cfg: Config, res: Results) -> None:
    _each_rate_limiter(
        res,
        1 if cfg.quick else cfg.rounds,
        res.accuracy,
        w.accuracy,
        cfg.accuracy_tasks,
        cfg.accuracy_rate,
        cfg.accuracy_burst,
        cfg.accuracy_s,
    )
    _log("  accuracy: done")


def _bench_fairness(cfg: Config, res: Results) -> None:
    _each_rate_limiter(
        res,
        max(1, cfg.rounds // 2),
        res.fairness,
        w.fairness,
        cfg.fair_small,
        cfg.fair_big,
        cfg.fair_rate,
        cfg.fair_burst,
        cfg.fair_s,
    )
    _log("  fairness: done")


def _bench_cancellation(cfg: Config, res: Results) -> None:
    args = (
        cfg.cancel_waiters,
        cfg.cancel_rate,
        cfg.cancel_at,
        cfg.cancel_waiters / cfg.cancel_rate * 3 + 2,
    )
    rounds = max(1, cfg.rounds // 2)
    _each_rate_limiter(res, rounds, res.cancellation, w.cancellation, *args)
    # the same on the shared stores: a waiter behind a cancelled one never
    # waits for tokens nobody will take there either
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="ratebudget-"))
        stores = [ratebudget_on(f"sqlite:///{tmp}/bench.db", "SQLite")]
        if shutil.which("redis-server"):
            from ratebudget.testing import RedisServer

            server = stack.enter_context(RedisServer())
            stores.append(ratebudget_on(server.url, "Redis"))
        for peer in stores:
            res.store_peers.append(peer)
            for backend in BACKENDS:
                for _ in range(rounds):
                    r = _run(backend, w.cancellation, peer, *args)
                    res.cancellation.setdefault((backend, peer.name), []).append(r)
    _log("  cancellation: done")


def _bench_threads(cfg: Config, res: Results) -> None:
    rate, burst, dur = cfg.threads_rate, cfg.threads_burst, cfg.threads_s
    for _ in range(max(1, cfg.rounds // 2)):
        for peer in res.peers:
            if peer.sync is not None:
                acquire = peer.sync(rate, burst)
                r = w.sync_threads(acquire, 8, rate, burst, dur)
                res.threads.setdefault(f"{peer.name}: 8 threads", []).append(r)
        rb = res.peers[0]
        assert rb.name == "ratebudget"
        for label, backends in (
            ("ratebudget: 4 asyncio loops", ["asyncio"] * 4),
            ("ratebudget: 2 asyncio + 2 trio loops", ["asyncio", "trio"] * 2),
        ):
            r = w.loop_threads(
                functools.partial(rb.make, rate, burst), backends, 5, rate, burst, dur
            )
            res.threads.setdefault(label, []).append(r)
    _log("  threads: done")


def _bench_stores(cfg: Config, res: Results) -> None:
    from benchmarks.stores import bench

    res.stores = bench(cfg, _log)


def _bench_cluster(cfg: Config, res: Results) -> None:
    from benchmarks.cluster import bench

    res.cluster = bench(cfg, _log)


STEPS: dict[str, Callable[[Config, Results], None]] = {
    "uncontended": _bench_hot,
    "multi": _bench_multi,
    "contended": _bench_contended,
    "accuracy": _bench_accuracy,
    "fairness": _bench_fairness,
    "cancellation": _bench_cancellation,
    "threads": _bench_threads,
    "stores": _bench_stores,
    "cluster": _bench_cluster,
}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "ratebudget",
        "anyio",
        "trio",
        "aiolimiter",
        "pyrate-limiter",
        "limits",
        "throttled-py",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (small sizes, < 60 s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for benchmarks.md and img/ (default: docs/, or a "
        "temporary directory with --quick)",
    )
    parser.add_argument(
        "--only", choices=sorted(STEPS), action="append", help="run only these"
    )
    parser.add_argument(
        "--peer",
        action="append",
        help="run only peers whose name starts with this (ratebudget always runs)",
    )
    args = parser.parse_args(argv)
    cfg = Config.smoke() if args.quick else Config.full()
    out: Path = args.out or (
        Path(tempfile.mkdtemp(prefix="ratebudget-bench-"))
        if args.quick
        else Path(__file__).resolve().parent.parent / "docs"
    )
    chosen = [
        p
        for p in peers()
        if not args.peer
        or p.name == "ratebudget"
        or any(p.name.startswith(x) for x in args.peer)
    ]
    res = Results(cfg, chosen, baselines() if not args.peer else [])
    started = time.perf_counter()
    for name, step in STEPS.items():
        if args.only and name not in args.only:
            continue
        _log(f"{name} ...")
        step(cfg, res)
    res.elapsed = time.perf_counter() - started

    from benchmarks.report import update_readme, write

    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    page = write(res, out, command=command, machine=machine(), versions=versions())
    root = Path(__file__).resolve().parent.parent
    if not args.quick and not args.only and not args.peer and out == root / "docs":
        update_readme(root / "README.md", res)  # a full run: its headlines
    print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
