"""A worker process for the multi-process and crash tests.

``python tests/mp_worker.py MODE URL NAME [ARGS...]``; it prints one line per
event and flushes, so the parent can follow it (and kill it mid-way).
"""

from __future__ import annotations

import sys
import time

import anyio

from ratebudget import BudgetExceeded, Cap, Limiter, Rate


async def cap(url: str, name: str, limit: int, each: int, tasks: int) -> None:
    """Hammer a hard cap until it refuses: print every committed amount."""
    lim = Limiter(Cap(tokens=limit), store=url, name=name)
    done = anyio.Event()

    async def one() -> None:
        while not done.is_set():
            try:
                async with lim.acquire(each, timeout=30) as lease:
                    await lease.commit(tokens=each)
                print("committed", each, flush=True)
            except BudgetExceeded:
                done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(one)


async def rate(url: str, name: str, limit: int, burst: int, count: int) -> None:
    """Take ``count`` grants of one token from a shared rate."""
    lim = Limiter(Rate(tokens=limit, per="second", burst=burst), store=url, name=name)
    for _ in range(count):
        await lim.acquire(1)
        print("granted", time.time(), flush=True)


async def hold(url: str, name: str, ttl: float) -> None:
    """Reserve 80 of a cap of 100, say so, and never settle."""
    lim = Limiter(Cap(tokens=100), store=url, name=name, lease_ttl=ttl)
    await lim.acquire(80)
    print("held", time.time(), flush=True)
    await anyio.sleep_forever()


async def commits(url: str, name: str) -> None:
    """Record one token at a time, printing after each record returns."""
    lim = Limiter(Cap(tokens=10**9), store=url, name=name)
    n = 0
    while True:
        await lim.record(tokens=1)
        n += 1
        print(n, flush=True)


async def alerts(url: str, name: str, shadow: bool, times: int) -> None:
    """Record 1 token ``times`` times on a cap of 100 with thresholds every
    10%: print every alert this process was handed."""
    got: list[str] = []
    lim = Limiter(
        Cap(tokens=100, alert_at=tuple(k / 10 for k in range(1, 11))),
        store=url,
        name=name,
        shadow=shadow,
        on_alert=lambda a: got.append(f"alert {a.kind} {a.threshold} {a.id}"),
    )
    for _ in range(times):
        await lim.record(tokens=1)
    await lim.flush_alerts()
    for line in got:
        print(line, flush=True)


async def org(url: str, name: str, index: int, tasks: int) -> None:
    """Act for users of one of two teams under one org cap (USD, thresholds
    every 25%) until the org refuses: print every committed amount and every
    alert this process was handed."""
    from decimal import Decimal

    got: list[str] = []
    root = Limiter(
        Cap(usd="1.5", alert_at=(0.25, 0.5, 0.75, 1.0)),
        store=url,
        name=name,
        on_alert=lambda a: got.append(f"alert {a.scope} {a.threshold} {a.id}"),
    )
    team = root.child(f"team{index % 2}", Cap(usd="1"))
    users = team.per_key(Cap(usd="0.25"))
    done = anyio.Event()

    async def one(k: int) -> None:
        user = users[f"u{index}-{k}"]
        n = 0
        while not done.is_set():
            n += 1
            try:
                async with user.acquire(usd="0.007", timeout=30) as lease:
                    spent = Decimal("0.005") + Decimal(n % 3) / 1000
                    await lease.commit(usd=spent)
                print("committed", spent, flush=True)
            except BudgetExceeded as e:
                if e.scope == root.name:
                    done.set()
                else:  # this user's or team's cap: on to another user
                    user = users[f"u{index}-{k}-{n}"]
                    if e.scope == team.name:
                        done.set()

    async with anyio.create_task_group() as tg:
        for k in range(tasks):
            tg.start_soon(one, k)
    await root.flush_alerts()
    for line in got:
        print(line, flush=True)


def main() -> None:
    mode, url, name, *args = sys.argv[1:]
    if mode == "cap":
        anyio.run(cap, url, name, int(args[0]), int(args[1]), int(args[2]))
    elif mode == "rate":
        anyio.run(rate, url, name, int(args[0]), int(args[1]), int(args[2]))
    elif mode == "hold":
        anyio.run(hold, url, name, float(args[0]))
    elif mode == "commits":
        anyio.run(commits, url, name)
    elif mode == "org":
        anyio.run(org, url, name, int(args[0]), int(args[1]))
    elif mode == "alerts":
        anyio.run(alerts, url, name, args[0] == "shadow", int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
