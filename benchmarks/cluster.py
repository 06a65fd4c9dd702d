"""Workload 9: decisions per second on a Redis Cluster, per shard and in all.

The same worker processes as workload 8 (``benchmarks/stores.py``: spawned
once, a counting window that opens at one wall-clock instant in every
process) run ``async with limiter.acquire(1): pass`` on a rate so large it
never refuses or waits, each task taking its names in turn from a set of
``cluster_names`` limiters, in three layouts:

- **one server**: a plain ``redis-server``, the names as they come (what a
  single Redis gives);
- **one shard**: a 3-primary cluster, every name chosen to hash to the same
  shard (what one tree, or names that happen to share a shard, get);
- **spread**: the same cluster, the names spread evenly over its shards.

Over each window it reads every server's CPU (``INFO cpu``) and the client
processes' CPU. A Redis shard runs its scripts on one thread, so what sizes
a cluster is the server CPU one decision costs on its shard: a shard
saturates near ``1 / (server CPU per decision)`` decisions per second, and a
cluster whose names spread evenly near that times its shards. On a small
machine the client processes run out of CPU long before three shards do,
so the decisions per second measured here are the client side's ceiling;
the capacity estimates come from the server CPU.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from benchmarks.stats import Summary, ratios, summarize
from benchmarks.stores import RATEBUDGET, Scenario, _Job, _Pool, _run_jobs

if TYPE_CHECKING:
    from benchmarks.run import Config, Results

__all__ = ("ClusterResults", "ClusterSample", "bench", "section")

ONE_SERVER: Final = "one redis-server"
ONE_SHARD: Final = "cluster, every name on one shard"
SPREAD: Final = "cluster, names spread over its 3 shards"
LAYOUTS: Final = (ONE_SERVER, ONE_SHARD, SPREAD)


@dataclass(frozen=True)
class ClusterSample:
    """One run of a layout."""

    per_second: float  # decisions per second, all processes
    decisions: int
    client_cpu: float  # seconds, all worker processes
    server_cpu: dict[str, float]  # seconds, by server (host:port)

    @property
    def server_us(self) -> float:
        """Server CPU per decision (µs), all servers together."""
        return sum(self.server_cpu.values()) / max(self.decisions, 1) * 1e6

    @property
    def busiest_share(self) -> float:
        """The busiest server's part of the server CPU (1/3: an even spread)."""
        total = sum(self.server_cpu.values())
        return max(self.server_cpu.values()) / total if total > 0 else 0.0

    @property
    def shard_capacity(self) -> float:
        """Decisions per second one shard can serve at one core, by its CPU
        per decision here."""
        return 1e6 / self.server_us if self.server_us > 0 else 0.0


@dataclass
class ClusterResults:
    scenario: Scenario
    names: int
    shards: int
    redis_version: str
    samples: dict[str, list[ClusterSample]] = field(default_factory=dict)

    def summary(self, layout: str, get: Callable[[ClusterSample], float]) -> Summary:
        return summarize([get(s) for s in self.samples[layout]])

    def ratio(self, layout: str, to: str) -> Summary:
        """``layout``'s decisions per second over ``to``'s, round by round."""
        return ratios(
            [s.per_second for s in self.samples[layout]],
            [s.per_second for s in self.samples[to]],
        )


def _names_on(
    client: Any, shards: list[str], count: int
) -> tuple[list[str], list[str]]:
    """``count`` names on the first shard, and ``count`` spread evenly."""
    by_shard: dict[str, list[str]] = {s: [] for s in shards}
    i = 0
    while min(len(v) for v in by_shard.values()) < count:
        name = f"bench-{i}"
        i += 1
        by_shard[client.get_node_from_key("{" + name + "}:s").name].append(name)
    one = by_shard[shards[0]][:count]
    spread = [by_shard[s][k] for k in range(count) for s in shards][:count]
    return one, spread


def bench(cfg: Config, log: Callable[[str], None]) -> ClusterResults | None:
    """Run the three layouts, interleaved, ``cfg.store_rounds`` times."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        log("  cluster: no redis-server or redis-cli on PATH, skipped")
        return None
    from ratebudget.testing import RedisCluster, RedisServer

    sc = Scenario(
        f"{cfg.store_procs} processes × {cfg.store_tasks} tasks",
        cfg.store_procs,
        cfg.store_tasks,
    )
    pool = _Pool(sc.processes)
    options = {"maxclients": "10000"}
    try:
        with (
            RedisServer(options=options) as server,
            RedisCluster(primaries=3, options=options) as cluster,
        ):
            client: Any = cluster.client()
            try:
                shards = sorted(n.name for n in client.get_primaries())
                one, spread = _names_on(client, shards, cfg.cluster_names)
            finally:
                client.close()
            out = ClusterResults(sc, cfg.cluster_names, len(shards), server.version())
            single = server.client()
            nodes = {n.address: n.client() for n in cluster.nodes}
            layouts = {
                ONE_SERVER: (server.url, one, {f"127.0.0.1:{server.port}": single}),
                ONE_SHARD: (cluster.url, one, nodes),
                SPREAD: (cluster.url, spread, nodes),
            }
            try:
                for _ in range(cfg.store_rounds):
                    for layout, (url, names, servers) in layouts.items():
                        for c in servers.values():
                            c.flushall()
                        s = _one(pool, cfg, sc, url, names, servers)
                        out.samples.setdefault(layout, []).append(s)
                log("  cluster: done")
            finally:
                single.close()
                for c in nodes.values():
                    c.close()
    finally:
        pool.close()
    return out


def _one(
    pool: _Pool,
    cfg: Config,
    sc: Scenario,
    url: str,
    names: Sequence[str],
    servers: Mapping[str, Any],
) -> ClusterSample:
    warm_at = time.time() + cfg.store_lead_s
    t0 = warm_at + cfg.store_warm_s
    t1 = t0 + cfg.store_s
    job = _Job(RATEBUDGET, url, sc.tasks, warm_at, t0, t1, tuple(names))

    def cpu() -> dict[str, float]:
        out = {}
        for name, c in servers.items():
            info = c.info("cpu")
            out[name] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return out

    shots, before, after = _run_jobs(pool, [job] * sc.processes, t0, t1, cpu)
    assert before is not None
    assert after is not None
    return ClusterSample(
        per_second=sum(s.acquisitions / s.seconds for s in shots if s.seconds > 0),
        decisions=sum(s.acquisitions for s in shots),
        client_cpu=sum(s.cpu for s in shots),
        server_cpu={k: after[k] - before[k] for k in after},
    )


def section(run: Results) -> str:
    res = run.cluster
    assert res is not None
    rows = []
    for layout in LAYOUTS:
        if layout not in res.samples:
            continue
        rows.append(
            f"| {layout} "
            f"| {res.summary(layout, lambda s: s.per_second).fmt(',.0f')} "
            f"| {res.summary(layout, lambda s: s.client_cpu / max(s.decisions, 1) * 1e6).fmt('.0f')} "
            f"| {res.summary(layout, lambda s: s.server_us).fmt('.1f')} "
            f"| {res.summary(layout, lambda s: s.busiest_share).fmt('.2f')} "
            f"| {res.summary(layout, lambda s: s.shard_capacity).fmt(',.0f')} |"
        )
    spread = res.summary(SPREAD, lambda s: s.shard_capacity).median * res.shards
    lines = [
        "## Redis Cluster: decisions per second per shard and in all\n",
        f"{res.scenario.label} (`benchmarks/cluster.py`), {res.names} limiter names, "
        f"each task taking them in turn; Redis {res.redis_version}, a "
        f"{res.shards}-primary cluster on this machine. Server CPU is every "
        "server's, per decision; the busiest server's share is 1.00 when one "
        f"does all the work and {1 / res.shards:.2f} for an even spread. One "
        "shard's capacity is one core over its CPU per decision: what it "
        "serves before its single thread saturates.\n",
        "| layout | decisions/s | client CPU µs/decision "
        "| server CPU µs/decision | busiest server's share "
        "| capacity of one shard (decisions/s) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"- Spread over {res.shards} shards against all on one: "
        f"{res.ratio(SPREAD, ONE_SHARD).fmt('.2f', '×')} the decisions per "
        "second here, where the client processes, not the shards, are the "
        "limit (they share this machine's cores with every server).",
        f"- On the cluster against one server: "
        f"{res.ratio(ONE_SHARD, ONE_SERVER).fmt('.2f', '×')} the decisions per "
        "second, all names on one shard.",
        f"- Estimated capacity with the names spread: about {spread:,.0f} "
        f"decisions per second for the {res.shards} shards (each shard's "
        "capacity times the shards), if the clients keep up.\n",
    ]
    return "\n".join(lines)
