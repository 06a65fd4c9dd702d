"""Workload 8: limiters on a shared store (Redis, SQLite), across processes.

Every candidate takes one decision per acquisition from a store on a rate
so large that it never refuses and never waits, so what is measured is what
a decision costs: ratebudget (``Limiter(Rate(tokens=10**9, per="second"),
store=..., name="bench")``, ``async with limiter.acquire(1): pass``),
``limits``' async Redis storage with its fixed, moving and sliding-window
strategies (``hit()``), ``pyrate_limiter``'s ``RedisBucket``
(``try_acquire_async``), and a bare ``PING`` (redis.asyncio) as the ceiling:
the most requests per second the same client side gets through the same
server, with nothing decided.

Each run starts ``processes`` worker processes' worth of ``tasks`` tasks
each (spawned once, reused by every run), all on one key of one private
``redis-server`` (flushed before each run), warms them up, then counts the
acquisitions completed in a window of ``store_s`` seconds that opens at the
same wall-clock instant in every process. Over the same window:

- client CPU: ``time.process_time()`` of every worker process (its worker
  threads included), summed;
- server CPU: ``used_cpu_sys + used_cpu_user`` of ``INFO cpu``;
- round trips: ``total_reads_processed`` of ``INFO stats``, the reads the
  server made from client sockets. ``INFO commandstats`` (and
  ``total_commands_processed``) cannot count round trips: they also count
  every command a Lua script runs, and count each command of a pipeline
  separately, while one read is one request (or one pipeline) arriving. The
  clients here do not pipeline, and a request of a few kB arrives in one
  read, so reads are the round trips; the parent's own ``INFO`` at the end of
  the window is subtracted.

The SQLite runs are ratebudget alone (the peers have no SQLite store with an
async API): acquisitions per second on one file from 1 and several
processes. The low-load latency runs time single acquisitions of one task
against bare ``EVALSHA`` calls of a one-line script, so that what the worker
thread and the coalescing cost one caller alone is visible.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import shutil
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

import anyio
import anyio.to_thread

from benchmarks.stats import Summary, ratios, summarize

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from benchmarks.run import Config, Results
    from ratebudget.testing import RedisServer

__all__ = (
    "LatencySample",
    "Shot",
    "StoreResults",
    "StoreSample",
    "bench",
    "best_ratios",
    "combine",
    "percentile",
    "section",
    "server_delta",
)

T = TypeVar("T")

RATEBUDGET: Final = "ratebudget"
SCOPES: Final = "ratebudget, 3 scopes down a path (a rate at each)"
LIMITS_FIXED: Final = "limits (fixed window)"
LIMITS_MOVING: Final = "limits (moving window)"
LIMITS_SLIDING: Final = "limits (sliding window counter)"
PYRATE: Final = "pyrate-limiter (RedisBucket)"
PING: Final = "PING (ceiling)"
SQLITE: Final = "ratebudget (SQLite)"
EVAL_ASYNC: Final = "bare EVALSHA, redis.asyncio"
EVAL_THREAD: Final = "bare EVALSHA, redis-py in a worker thread"

REDIS_CANDIDATES: Final = (
    RATEBUDGET,
    SCOPES,
    LIMITS_FIXED,
    LIMITS_MOVING,
    LIMITS_SLIDING,
    PYRATE,
    PING,
)
NOT_PEERS: Final = (RATEBUDGET, SCOPES, PING)
LATENCY_CANDIDATES: Final = (
    (RATEBUDGET, ("asyncio", "trio")),
    (EVAL_THREAD, ("asyncio", "trio")),
    (EVAL_ASYNC, ("asyncio",)),
    (LIMITS_FIXED, ("asyncio",)),
)

HUGE: Final = 10**9
"""Units per second: never refused, never waited for."""

KEY: Final = "bench"
TRIVIAL_SCRIPT: Final = "return 1"

# the modules each candidate imports: to skip one whose library is missing, and
# for the worker processes to import before any clock runs
_NEEDS: Final = {
    RATEBUDGET: ("ratebudget", "ratebudget.stores.redis", "redis"),
    SCOPES: ("ratebudget", "ratebudget.stores.redis", "redis"),
    LIMITS_FIXED: ("limits.aio.strategies", "limits.aio.storage", "redis.asyncio"),
    LIMITS_MOVING: ("limits.aio.strategies", "limits.aio.storage", "redis.asyncio"),
    LIMITS_SLIDING: ("limits.aio.strategies", "limits.aio.storage", "redis.asyncio"),
    PYRATE: ("pyrate_limiter", "redis.asyncio"),
    PING: ("redis.asyncio",),
    SQLITE: ("ratebudget", "ratebudget.stores.sqlite"),
    EVAL_ASYNC: ("redis.asyncio",),
    EVAL_THREAD: ("redis",),
}


# -- pure arithmetic -----------------------------------------------------------------


@dataclass(frozen=True)
class StoreSample:
    """One run: every process's acquisitions in the window, and their cost."""

    acquisitions: int
    per_second: float  # summed over processes, each over its own window
    client_cpu: float  # seconds, summed over processes
    server_cpu: float | None  # seconds of redis-server; None: no server
    requests: int | None  # round trips the server read; None: no server
    late: float = 0.0  # the latest a process opened its window, seconds

    def _per(self, total: float | None, scale: float = 1.0) -> float | None:
        if total is None:
            return None
        if self.acquisitions <= 0:
            return math.nan
        return total / self.acquisitions * scale

    @property
    def client_us(self) -> float:
        got = self._per(self.client_cpu, 1e6)
        assert got is not None
        return got

    @property
    def server_us(self) -> float | None:
        return self._per(self.server_cpu, 1e6)

    @property
    def round_trips(self) -> float | None:
        return self._per(None if self.requests is None else float(self.requests))


@dataclass(frozen=True)
class Shot:
    """One process's part of a run."""

    acquisitions: int
    seconds: float  # the window it counted over (its own clock readings)
    cpu: float  # its CPU seconds over that window
    late: float  # how long after the agreed start its window opened


def combine(
    shots: Sequence[Shot], server_cpu: float | None, requests: int | None
) -> StoreSample:
    """The processes' shots of one run, as one sample.

    Acquisitions per second add up process by process, each over the window
    it measured itself (they open together, give or take a scheduler tick).
    """
    total = sum(s.acquisitions for s in shots)
    rate = sum(s.acquisitions / s.seconds for s in shots if s.seconds > 0)
    return StoreSample(
        acquisitions=total,
        per_second=rate,
        client_cpu=sum(s.cpu for s in shots),
        server_cpu=server_cpu,
        requests=requests,
        late=max((s.late for s in shots), default=0.0),
    )


def server_delta(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[float, int]:
    """Server CPU seconds and round trips between two ``INFO cpu stats`` replies.

    ``after``'s own request was read before it was answered, so it counts in
    ``after``; it is not the clients', so it is taken out.
    """

    def cpu(info: Mapping[str, Any]) -> float:
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    reads = int(after["total_reads_processed"]) - int(before["total_reads_processed"])
    return cpu(after) - cpu(before), reads - 1


def best_ratios(ref: Sequence[float], others: Sequence[Sequence[float]]) -> Summary:
    """Per round, ``ref`` over the best (largest) of ``others``; summarized.

    The best peer can change from round to round: each round's ratio is to
    that round's best.
    """
    if not others:
        raise ValueError("no one to compare with")
    best = [max(column) for column in zip(*others, strict=True)]
    return ratios(ref, best)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"q={q!r}: expected 0 < q <= 100")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- the clients -----------------------------------------------------------------------


class _Client(Protocol):
    async def acquire(self) -> None:
        """One decision (raises if refused)."""

    async def aclose(self) -> None:
        """Close its connections."""


class _RateBudget:
    __slots__ = ("limiter", "store")

    def __init__(self, url: str) -> None:
        from ratebudget import Limiter, Rate
        from ratebudget.stores import Store, open_store

        store = open_store(url)  # what store=url does, kept here to close it
        assert isinstance(store, Store)
        self.store = store
        self.limiter = Limiter(Rate(tokens=HUGE, per="second"), store=store, name=KEY)

    async def acquire(self) -> None:
        async with self.limiter.acquire(1):
            pass

    async def aclose(self) -> None:
        self.store.close()


class _Names:
    """ratebudget on several names (``benchmarks/cluster.py``): each call
    takes the next one's limiter."""

    __slots__ = ("i", "limiters", "store")

    def __init__(self, url: str, names: Sequence[str]) -> None:
        from ratebudget import Limiter, Rate
        from ratebudget.stores import Store, open_store

        store = open_store(url)
        assert isinstance(store, Store)
        self.store = store
        self.limiters = [
            Limiter(Rate(tokens=HUGE, per="second"), store=store, name=n) for n in names
        ]
        self.i = 0

    async def acquire(self) -> None:
        self.i += 1
        async with self.limiters[self.i % len(self.limiters)].acquire(1):
            pass

    async def aclose(self) -> None:
        self.store.close()


class _Scoped(_RateBudget):
    """An acquisition on a scope two levels under a root (org > team >
    user), each level with a rate of its own: three states in one decision."""

    __slots__ = ()

    def __init__(self, url: str) -> None:
        from ratebudget import Rate

        super().__init__(url)
        team = self.limiter.child("team", Rate(tokens=HUGE + 1, per="second"))
        self.limiter = team.child("user", Rate(tokens=HUGE + 2, per="second"))


class _Limits:
    __slots__ = ("hit", "item", "pool")

    def __init__(self, url: str, strategy: str) -> None:
        import redis.asyncio
        from limits import RateLimitItemPerSecond
        from limits.aio import strategies
        from limits.aio.storage import RedisStorage

        # implementation="redispy": the default, coredis 6, refuses to run
        # outside its connection pool's `async with` ("Connection pool is not
        # initialized"), which limits does not enter. Our own pool, to close it.
        self.pool = redis.asyncio.ConnectionPool.from_url(url)
        storage = RedisStorage(
            "async+" + url,
            implementation="redispy",
            # passed on to redis.asyncio.Redis (limits types its options narrowly)
            connection_pool=cast(Any, self.pool),
        )
        kinds: dict[str, type[strategies.RateLimiter]] = {
            "fixed": strategies.FixedWindowRateLimiter,
            "moving": strategies.MovingWindowRateLimiter,
            "sliding": strategies.SlidingWindowCounterRateLimiter,
        }
        self.hit = kinds[strategy](storage).hit
        self.item = RateLimitItemPerSecond(HUGE, 1)

    async def acquire(self) -> None:
        if not await self.hit(self.item, KEY):
            raise RuntimeError("limits: refused")

    async def aclose(self) -> None:
        await self.pool.disconnect()


class _Pyrate:
    __slots__ = ("limiter", "redis")

    def __init__(self, redis: Any, limiter: Any) -> None:
        self.redis = redis
        self.limiter = limiter

    @classmethod
    async def open(cls, url: str) -> _Pyrate:
        import redis.asyncio
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        client = redis.asyncio.Redis.from_url(url)
        bucket = await RedisBucket.init([Rate(HUGE, Duration.SECOND)], client, KEY)
        return cls(client, Limiter(bucket))

    async def acquire(self) -> None:
        if not await self.limiter.try_acquire_async(KEY, 1):
            raise RuntimeError("pyrate-limiter: refused")

    async def aclose(self) -> None:
        self.limiter.close()
        await self.redis.aclose()


class _Ping:
    __slots__ = ("redis",)

    def __init__(self, url: str) -> None:
        import redis.asyncio

        self.redis = redis.asyncio.Redis.from_url(url)

    async def acquire(self) -> None:
        await self.redis.ping()

    async def aclose(self) -> None:
        await self.redis.aclose()


class _EvalAsync:
    __slots__ = ("redis", "sha")

    def __init__(self, redis: Any, sha: str) -> None:
        self.redis, self.sha = redis, sha

    @classmethod
    async def open(cls, url: str) -> _EvalAsync:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        return cls(client, str(await client.script_load(TRIVIAL_SCRIPT)))

    async def acquire(self) -> None:
        await self.redis.evalsha(self.sha, 0)

    async def aclose(self) -> None:
        await self.redis.aclose()


class _EvalThread:
    """What ratebudget's store call is made of: a blocking EVALSHA, in a thread."""

    __slots__ = ("evalsha", "redis", "sha")

    def __init__(self, url: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url)
        self.sha = str(self.redis.script_load(TRIVIAL_SCRIPT))
        self.evalsha = self.redis.evalsha

    async def acquire(self) -> None:
        await anyio.to_thread.run_sync(self.evalsha, self.sha, 0)

    async def aclose(self) -> None:
        self.redis.close()


async def _open(candidate: str, url: str) -> _Client:
    if candidate in (RATEBUDGET, SQLITE):
        return _RateBudget(url)
    if candidate == SCOPES:
        return _Scoped(url)
    if candidate == LIMITS_FIXED:
        return _Limits(url, "fixed")
    if candidate == LIMITS_MOVING:
        return _Limits(url, "moving")
    if candidate == LIMITS_SLIDING:
        return _Limits(url, "sliding")
    if candidate == PYRATE:
        return await _Pyrate.open(url)
    if candidate == PING:
        return _Ping(url)
    if candidate == EVAL_ASYNC:
        return await _EvalAsync.open(url)
    if candidate == EVAL_THREAD:
        return _EvalThread(url)
    raise ValueError(f"unknown candidate {candidate!r}")


def available(candidates: Sequence[str]) -> list[str]:
    """Those of ``candidates`` whose libraries import."""
    import importlib

    out = []
    for c in candidates:
        try:
            for module in _NEEDS[c]:
                importlib.import_module(module)
        except ImportError:
            continue
        out.append(c)
    return out


# -- the worker processes ----------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    candidate: str
    url: str
    tasks: int
    warm_at: float  # time.time() at which the tasks start (warm-up)
    t0: float  # ... the counting window opens
    t1: float  # ... and closes; the tasks then finish what they started
    names: tuple[str, ...] = ()  # limiters taken in turn (else one, KEY)


async def _sleep_until(t: float) -> None:
    await anyio.sleep(max(0.0, t - time.time()))


async def _drive(job: _Job) -> Shot:
    client = (
        _Names(job.url, job.names) if job.names else await _open(job.candidate, job.url)
    )
    count = 0
    running = True

    async def loop() -> None:
        nonlocal count
        while running:
            await client.acquire()
            count += 1

    try:
        await _sleep_until(job.warm_at)
        async with anyio.create_task_group() as tg:
            for _ in range(job.tasks):
                tg.start_soon(loop)
            await _sleep_until(job.t0)
            w0, n0, cpu0 = time.time(), count, time.process_time()
            await _sleep_until(job.t1)
            w1, n1, cpu1 = time.time(), count, time.process_time()
            running = False  # no cancellation: each task ends its call first
    finally:
        await client.aclose()
    return Shot(n1 - n0, w1 - w0, cpu1 - cpu0, max(0.0, w0 - job.t0))


def _serve(conn: Connection) -> None:
    """A worker process: run the jobs it is sent, one at a time, until None."""
    # import everything before any clock runs; limits imports its clients'
    # libraries when its first storage is made (no connection is made here)
    if LIMITS_FIXED in available((*REDIS_CANDIDATES, SQLITE)):
        _Limits("redis://127.0.0.1:1/0", "fixed")
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        gc.collect()
        try:
            conn.send(anyio.run(_drive, job, backend="asyncio"))
        except Exception:
            conn.send(traceback.format_exc())


class _Pool:
    """``n`` spawned worker processes, reused by every run: spawning one and
    importing the libraries costs seconds on a small machine."""

    def __init__(self, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._busy: list[Connection] = []
        for _ in range(n):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there,), daemon=True)
            proc.start()
            there.close()
            self._conns.append(here)
            self._procs.append(proc)
        for conn in self._conns:
            self._recv(conn, 120.0)

    def __len__(self) -> int:
        return len(self._conns)

    @staticmethod
    def _recv(conn: Connection, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise RuntimeError(f"a benchmark worker did not answer in {timeout:g} s")
        got = conn.recv()
        if isinstance(got, str) and got != "ready":
            raise RuntimeError(f"a benchmark worker failed:\n{got}")
        return got

    def submit(self, jobs: Sequence[_Job]) -> None:
        assert not self._busy
        assert len(jobs) <= len(self._conns)
        self._busy = self._conns[: len(jobs)]
        for conn, job in zip(self._busy, jobs, strict=True):
            conn.send(job)

    def collect(self, timeout: float) -> list[Shot]:
        busy, self._busy = self._busy, []
        return [self._recv(conn, timeout) for conn in busy]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self._conns:
            conn.close()


# -- runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    label: str
    processes: int
    tasks: int  # per process


@dataclass(frozen=True)
class LatencySample:
    median_us: float
    p99_us: float


@dataclass
class StoreResults:
    """Everything the store section shows."""

    redis_version: str | None  # None: no redis-server on PATH, Redis skipped
    redis_scenarios: list[Scenario]
    sqlite_scenarios: list[Scenario]
    redis: dict[tuple[str, str], list[StoreSample]] = field(default_factory=dict)
    sqlite: dict[str, list[StoreSample]] = field(default_factory=dict)
    latency: dict[tuple[str, str], list[LatencySample]] = field(default_factory=dict)


def _scenarios(cfg: Config) -> tuple[list[Scenario], list[Scenario]]:
    redis = [
        Scenario("sequential: 1 task", 1, 1),
        Scenario(f"{cfg.store_many} tasks, 1 process", 1, cfg.store_many),
        Scenario(
            f"{cfg.store_procs} processes × {cfg.store_tasks} tasks",
            cfg.store_procs,
            cfg.store_tasks,
        ),
    ]
    sqlite = [
        Scenario(
            f"{p} process{'es' if p > 1 else ''} × {t} task{'s' if t > 1 else ''}",
            p,
            t,
        )
        for p in cfg.sqlite_procs
        for t in cfg.sqlite_tasks
    ]
    return redis, sqlite


def _run(
    pool: _Pool,
    cfg: Config,
    candidate: str,
    url: str,
    sc: Scenario,
    info: Callable[[], Mapping[str, Any]] | None,
    log: Callable[[str], None],
) -> StoreSample:
    """One run; run again if a process opened its window late (a worker held
    up by the machine), since its window then missed part of the others'.
    A full run that stays late fails; a smoke run (``--quick``) takes what
    it got: its figures mean nothing, and a busy CI machine is often late."""
    tries = 1 if cfg.quick else 3
    for attempt in range(1, tries + 1):
        s = _one_run(pool, cfg, candidate, url, sc, info)
        if s.late <= min(0.05, cfg.store_s / 5):
            return s
        log(f"  stores: {candidate}, {sc.label}: {s.late:.2f} s late (try {attempt})")
    if cfg.quick:
        return s
    raise RuntimeError(
        f"stores: {candidate}, {sc.label}: a worker process was {s.late:.2f} s "
        "late three times: the machine is too busy for this benchmark"
    )


def _one_run(
    pool: _Pool,
    cfg: Config,
    candidate: str,
    url: str,
    sc: Scenario,
    info: Callable[[], Mapping[str, Any]] | None,
) -> StoreSample:
    warm_at = time.time() + cfg.store_lead_s
    t0 = warm_at + cfg.store_warm_s
    t1 = t0 + cfg.store_s
    jobs = [_Job(candidate, url, sc.tasks, warm_at, t0, t1)] * sc.processes
    server_cpu: float | None = None
    requests: int | None = None
    shots, before, after = _run_jobs(pool, jobs, t0, t1, info)
    if before is not None and after is not None:
        server_cpu, requests = server_delta(before, after)
    return combine(shots, server_cpu, requests)


def _run_jobs(
    pool: _Pool,
    jobs: Sequence[_Job],
    t0: float,
    t1: float,
    info: Callable[[], T] | None,
) -> tuple[list[Shot], T | None, T | None]:
    """Run ``jobs`` on the pool; ``info()`` read as the window opens and as
    it closes (the servers' counters), if given."""
    pool.submit(jobs)
    before = after = None
    if info is not None:
        time.sleep(max(0.0, t0 - time.time()))
        before = info()
        time.sleep(max(0.0, t1 - time.time()))
        after = info()
    shots = pool.collect(max(0.0, t1 - time.time()) + 60)
    return shots, before, after


async def _latency(candidate: str, url: str, n: int) -> LatencySample:
    client = await _open(candidate, url)
    try:
        for _ in range(min(n, 300)):
            await client.acquire()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await client.acquire()
            times.append(time.perf_counter() - t)
    finally:
        await client.aclose()
    return LatencySample(statistics.median(times) * 1e6, percentile(times, 99) * 1e6)


def bench(cfg: Config, log: Callable[[str], None]) -> StoreResults:
    """Run every store workload of ``cfg``."""
    from ratebudget.testing import RedisServer

    redis_sc, sqlite_sc = _scenarios(cfg)
    exe = shutil.which("redis-server")
    redis_cands = available(REDIS_CANDIDATES) if exe else []
    if not exe:
        log("  stores: no redis-server on PATH, Redis runs skipped")
    sqlite_cands = available([SQLITE])
    procs = max(
        [sc.processes for sc in redis_sc if redis_cands]
        + [sc.processes for sc in sqlite_sc if sqlite_cands]
        + [0]
    )
    out = StoreResults(None, redis_sc if redis_cands else [], sqlite_sc)
    if procs == 0:
        return out
    pool = _Pool(procs)
    try:
        if redis_cands:
            with RedisServer(options={"maxclients": "10000"}) as server:
                out.redis_version = server.version()
                _bench_redis(cfg, out, pool, server, redis_cands, log)
                _bench_latency(cfg, out, server.url, log)
        if sqlite_cands:
            _bench_sqlite(cfg, out, pool, log)
    finally:
        pool.close()
    return out


def _bench_redis(
    cfg: Config,
    out: StoreResults,
    pool: _Pool,
    server: RedisServer,
    cands: list[str],
    log: Callable[[str], None],
) -> None:
    client = server.client()
    try:

        def info() -> Mapping[str, Any]:
            got: Mapping[str, Any] = client.info("cpu", "stats")
            return got

        for sc in out.redis_scenarios:
            for _ in range(cfg.store_rounds):  # interleaved: everyone, then again
                for cand in cands:
                    client.flushall()
                    s = _run(pool, cfg, cand, server.url, sc, info, log)
                    out.redis.setdefault((sc.label, cand), []).append(s)
            log(f"  stores, Redis, {sc.label}: done")
    finally:
        client.close()


def _bench_latency(
    cfg: Config, out: StoreResults, url: str, log: Callable[[str], None]
) -> None:
    cands = [(c, b) for c, b in LATENCY_CANDIDATES if available([c])]
    for _ in range(cfg.store_rounds):
        for cand, backends in cands:
            for backend in backends:
                gc.collect()
                s = anyio.run(_latency, cand, url, cfg.store_latency_n, backend=backend)
                out.latency.setdefault((cand, backend), []).append(s)
    log("  stores, latency: done")


def _create_sqlite(url: str) -> None:
    """Create the file (WAL mode, tables, the limiter) with one acquisition.

    Done here, before the worker processes start: several processes opening a
    new file at once can fail with "database is locked" (switching a new file
    to WAL does not wait out SQLite's busy timeout).
    """
    from ratebudget import Limiter, Rate
    from ratebudget.stores import Store, open_store

    store = open_store(url)
    assert isinstance(store, Store)
    try:
        limiter = Limiter(Rate(tokens=HUGE, per="second"), store=store, name=KEY)
        with limiter.sync.acquire(1):
            pass
    finally:
        store.close()


def _bench_sqlite(
    cfg: Config, out: StoreResults, pool: _Pool, log: Callable[[str], None]
) -> None:
    with tempfile.TemporaryDirectory(prefix="ratebudget-bench-sqlite-") as tmp:
        k = 0
        for _ in range(cfg.store_rounds):
            for sc in out.sqlite_scenarios:
                k += 1  # a new file each run, as Redis is flushed each run
                url = f"sqlite:///{Path(tmp) / f'bench-{k}.db'}"
                _create_sqlite(url)
                s = _run(pool, cfg, SQLITE, url, sc, None, log)
                out.sqlite.setdefault(sc.label, []).append(s)
    log("  stores, SQLite: done")


# -- the report ---------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(values: list[float | None], spec: str) -> str:
    got = [v for v in values if v is not None and not math.isnan(v)]
    return summarize(got).fmt(spec) if got else "—"


def _redis_table(res: StoreResults) -> tuple[str, list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    for sc in res.redis_scenarios:
        names = [c for c in REDIS_CANDIDATES if (sc.label, c) in res.redis]
        ref = res.redis.get((sc.label, RATEBUDGET))
        for name in names:
            runs = res.redis[sc.label, name]
            rate = [r.per_second for r in runs]
            vs = (
                _ratio(ratios([r.per_second for r in ref], rate))
                if ref and name != RATEBUDGET and all(rate)
                else "—"
            )
            rows.append(
                [
                    sc.label,
                    name,
                    summarize(rate).fmt(",.0f"),
                    vs,
                    _fmt([r.client_us for r in runs], ".0f"),
                    _fmt([r.server_us for r in runs], ".1f"),
                    _fmt([r.round_trips for r in runs], ".3f"),
                ]
            )
        peers = [
            [r.per_second for r in res.redis[sc.label, n]]
            for n in names
            if n not in NOT_PEERS
        ]
        if ref and peers and all(all(p) for p in peers):
            best = best_ratios([r.per_second for r in ref], peers)
            note = f"{sc.label}: {_ratio(best)}"
            scoped = res.redis.get((sc.label, SCOPES))
            if scoped and all(r.per_second for r in scoped):
                # the same for a scope three levels deep
                deep = best_ratios([r.per_second for r in scoped], peers)
                note += f" (3 scopes down a path: {_ratio(deep)})"
            notes.append(note)
    header = [
        "scenario",
        "",
        "acquisitions/s",
        "ratebudget ÷ this",
        "client CPU µs/acq",
        "server CPU µs/acq",
        "round trips/acq",
    ]
    return _table(header, rows), notes


def _ratio(s: Summary) -> str:
    return s.fmt(".2f", "×")


def _latency_table(res: StoreResults) -> str:
    rows = []
    for (name, backend), runs in res.latency.items():
        rows.append(
            [
                name,
                backend,
                summarize([r.median_us for r in runs]).fmt(".0f", " µs"),
                summarize([r.p99_us for r in runs]).fmt(".0f", " µs"),
            ]
        )
    return _table(["", "backend", "median", "99th percentile"], rows)


def _sqlite_table(res: StoreResults) -> str:
    rows = []
    for sc in res.sqlite_scenarios:
        runs = res.sqlite.get(sc.label)
        if runs:
            rows.append(
                [
                    sc.label,
                    summarize([r.per_second for r in runs]).fmt(",.0f"),
                    _fmt([r.client_us for r in runs], ".0f"),
                ]
            )
    return _table(["", "acquisitions/s", "client CPU µs/acq"], rows)


def section(run: Results) -> str:
    """The "Stores" section of ``benchmarks.md``."""
    import datetime as dt

    res, cfg = run.stores, run.config
    assert res is not None
    when = dt.datetime.fromtimestamp(run.started, dt.timezone.utc)
    parts = [
        "## Stores\n\n"
        "One decision per acquisition on a shared store, on a rate so large "
        "that nobody is refused or waits: the cost of deciding. "
        f"Each run counts the acquisitions completed in a {cfg.store_s:g} s "
        f"window (after {cfg.store_warm_s:g} s of warm-up) that opens at the "
        "same instant in every process, all on one key; figures are the "
        f"median of {cfg.store_rounds} runs (min–max), rounds interleaved. "
        f"Measured {when:%Y-%m-%d %H:%M} UTC.\n"
    ]
    if res.redis_version is None:
        parts.append("No `redis-server` on PATH: the Redis runs were skipped.\n")
    else:
        table, notes = _redis_table(res)
        parts += [
            "### Redis\n",
            f"A private `redis-server` {res.redis_version} on localhost, "
            "flushed before each run; ratebudget `Limiter(Rate(tokens=10**9, "
            'per="second"), store="redis://…", name="bench")` with `async with '
            "limiter.acquire(1): pass`; limits' async `RedisStorage` "
            '(`implementation="redispy"`: its default, coredis, fails outside '
            "an `async with` of its pool) with `hit()` on 10**9 per second; "
            "pyrate-limiter's `RedisBucket` with `try_acquire_async`; a bare "
            "`PING` of redis.asyncio as the ceiling. asyncio, one event loop "
            "per process.\n",
            table + "\n",
            "ratebudget ÷ the best peer (limits or pyrate-limiter, the best "
            "of each round): " + "; ".join(notes) + ".\n"
            if notes
            else "",
            "How to read it: *acquisitions/s* is the sum over processes; "
            "*ratebudget ÷ this* is the median of per-round ratios (above 1: "
            "ratebudget did more). *Client CPU* is the CPU time of the "
            "benchmark processes (their threads included) per acquisition; "
            "*server CPU* is redis-server's (`INFO cpu`) per acquisition. "
            "*Round trips* are the requests the server read from clients "
            "(`total_reads_processed`), per acquisition: 1 means one request "
            "each; below 1, one request carried several decisions. ratebudget "
            "coalesces the concurrent acquisitions of one event loop into one "
            "script call, so with many tasks it needs a fraction of a round "
            "trip each, and its server CPU per acquisition drops with it; the "
            "peers send one script call per acquisition whatever the load. "
            "`PING` decides nothing: it is the most requests per second the "
            "same client library and machine get through, so a limiter that "
            "beats it is carrying several decisions per request. When there "
            "are fewer cores than busy processes, the clients and the server "
            "share the cores: acquisitions/s cannot exceed cores × 10⁶ ÷ "
            "(client + server CPU µs per acquisition), so read acquisitions/s "
            "together with the CPU columns.\n",
            "#### Latency of one acquisition alone\n",
            f"One task, {cfg.store_latency_n:,} sequential acquisitions per "
            "run: the median and 99th percentile of each one's time. The bare "
            f"`EVALSHA` of `{TRIVIAL_SCRIPT}` is a round trip alone, made "
            "asynchronously (redis.asyncio) and made with a blocking redis-py "
            "client in a worker thread (`anyio.to_thread.run_sync`), as "
            "ratebudget does (it keeps one worker thread per event loop, which "
            "hands answers back to the loop). A caller alone is sent at once, "
            "without waiting for company (one round trip per acquisition in "
            "the sequential rows above); what ratebudget adds to the bare call "
            "in a thread is its script (its server CPU in the sequential rows) "
            "and its own bookkeeping.\n",
            _latency_table(res) + "\n",
        ]
    if res.sqlite:
        parts += [
            "### SQLite\n",
            "ratebudget alone (limits and pyrate-limiter have no async SQLite "
            "store) on one SQLite file (WAL, `synchronous=NORMAL`), a new file "
            "each run; each process runs one event loop of the given tasks. "
            "Every store call is one `BEGIN IMMEDIATE` transaction, serialized "
            "across processes by SQLite's lock, so processes share the same "
            "ceiling; tasks of one process coalesce into one transaction.\n",
            _sqlite_table(res) + "\n",
        ]
    return "\n".join(p for p in parts if p)
