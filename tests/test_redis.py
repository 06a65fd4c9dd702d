"""The Redis store against its own ``redis-server``: round trips, faults, restarts.

Each test starts a private server (``tests/redis_server.py``) so it can read
its command statistics, stop it and start it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from ratebudget import Cap, Limiter, Rate, StoreUnavailable
from redis_server import RedisServer, redis_server_or_skip


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server_or_skip() as s:
        yield s


@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    with redis_server_or_skip(appendonly=True, appendfsync="always") as s:
        yield s


class Monitor:
    """The commands clients send (``MONITOR``), not those scripts run."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.commands: list[str] = []

    def __enter__(self) -> Monitor:
        self.client = self.server.client()
        self.monitor = self.client.monitor().__enter__()
        self.thread = threading.Thread(target=self._read)
        self.thread.start()
        return self

    def _read(self) -> None:
        while True:
            got = self.monitor.next_command()
            if got["client_type"] == "lua":
                continue
            command = got["command"]
            if command == "ECHO monitor-done":
                return
            name = command.split()[0].upper()
            if name not in ("HELLO", "CLIENT"):  # a new connection's handshake
                self.commands.append(name)

    def __exit__(self, *exc: object) -> None:
        poke = self.server.client()
        try:
            poke.echo("monitor-done")
        finally:
            poke.close()
        self.thread.join(10)
        self.monitor.__exit__()
        self.client.close()


def connected_clients(server: RedisServer) -> int:
    """The server's count of open connections (this one's included), once
    whatever was left for the garbage collector is gone."""
    import gc

    gc.collect()
    info = server.client()
    try:
        return int(info.info("clients")["connected_clients"])
    finally:
        info.close()


def script_calls(server: RedisServer) -> int:
    """Redis' own count of script calls (``INFO commandstats``)."""
    stats = server.info_commandstats()
    return sum(
        int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval")
    )


async def test_one_script_call_per_uncontended_acquisition(server: RedisServer) -> None:
    lim = Limiter(Rate(tokens=10_000, per="second"), store=server.url, name="rt")
    async with lim.acquire(1):  # registers the limiter, loads the script
        pass
    with Monitor(server) as sent:
        for _ in range(50):
            async with lim.acquire(1):
                pass
    assert sent.commands == ["EVALSHA"] * 50
    before = script_calls(server)
    for _ in range(10):
        await lim.acquire(1)
    assert script_calls(server) - before == 10


async def test_a_capped_acquisition_is_two_calls_reserve_and_commit(
    server: RedisServer,
) -> None:
    lim = Limiter(Cap(usd="100"), store=server.url, name="rt2")
    await lim.record(usd="0.01")
    with Monitor(server) as sent:
        for _ in range(20):
            async with lim.acquire(usd="0.01") as lease:
                await lease.commit(usd="0.005")
    assert sent.commands == ["EVALSHA"] * 40


def test_a_threads_connection_goes_back_to_the_pool_when_it_ends(
    server: RedisServer,
) -> None:
    """Each thread keeps a connection for its script calls; threads that come
    and go (the sync facade's callers, idle worker threads) do not pile up
    connections on the server."""

    from ratebudget.stores import RedisStore

    store = RedisStore(server.url)
    lim = Limiter(Rate(tokens=10_000, per="second"), store=store, name="conns")

    def one() -> None:
        with lim.sync.acquire(1):
            pass

    try:
        for _ in range(20):
            t = threading.Thread(target=one)
            t.start()
            t.join(10)
        clients = connected_clients(server)
        # this check's own connection, and the few the pool keeps: not 20
        assert clients <= 4, clients
    finally:
        store.close()


async def test_a_hung_server_is_unavailable_within_the_timeout(
    server: RedisServer,
) -> None:
    """A server that stops answering (its connections open, nothing read)
    fails each call within the store's timeout, on asyncio's own link as on
    the worker thread; once it answers again, so does the limiter."""
    from ratebudget.stores import RedisStore

    store = RedisStore(server.url, timeout=0.3)
    lim = Limiter(Rate(tokens=10_000, per="second"), store=store, name="hung")
    try:
        for _ in range(20):  # long enough for asyncio's link to be up
            async with lim.acquire(1):
                pass
            await anyio.sleep(0.005)
        server.pause()
        try:
            for _ in range(2):
                started = time.monotonic()
                with anyio.fail_after(5), pytest.raises(StoreUnavailable):
                    await lim.acquire(1)
                assert time.monotonic() - started < 0.3 * 2 + 1
        finally:
            server.resume()
        with anyio.fail_after(5):
            async with lim.acquire(1):
                pass
    finally:
        store.close()


def test_event_loops_that_end_leave_no_connection_behind(server: RedisServer) -> None:
    """Each asyncio loop's own connection closes with the loop (any socket
    left open would be a ResourceWarning, an error in this suite), and a loop
    ending while calls are on their way gives its callers their answers."""

    from ratebudget.stores import RedisStore

    store = RedisStore(server.url)
    lim = Limiter(Rate(tokens=10_000, per="second"), store=store, name="loops")

    async def some_calls(n: int) -> None:
        for _ in range(n):
            async with lim.acquire(1):
                pass
            await anyio.lowlevel.checkpoint()

    try:
        for n in (1, 3, 30, 300):
            anyio.run(some_calls, n, backend="asyncio")
        clients = connected_clients(server)
        # this check's, the one each loop's worker thread keeps (for its
        # first call, made before the loop's link was up) until it idles
        # out, and the store's wake-up listener: none of the four links
        assert clients <= 1 + 4 + 1, clients
    finally:
        store.close()


def test_a_store_dropped_without_close_ends_its_listener(server: RedisServer) -> None:
    """A store nobody closes (``Limiter(..., store=URL)`` made and dropped
    again and again) does not leave its wake-up listener thread, and its
    subscription, alive for as long as the process."""
    import gc

    from ratebudget.stores import RedisStore

    store = RedisStore(server.url)
    assert store.subscribe("dropped")
    listener = store._listener
    assert listener is not None
    assert listener.is_alive()
    del store
    gc.collect()
    listener.join(timeout=10)
    assert not listener.is_alive()


async def test_concurrent_tasks_share_script_calls(server: RedisServer) -> None:
    lim = Limiter(Rate(tokens=1_000, per="hour"), store=server.url, name="co")
    await lim.acquire(1)
    with Monitor(server) as sent:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(lambda: lim.acquire(1)._acquire())
    assert set(sent.commands) == {"EVALSHA"}
    assert len(sent.commands) < 16  # coalesced
    assert (await lim.snapshot())[0].tokens == 1_000 - 65


async def test_a_flushed_script_cache_is_reloaded(server: RedisServer) -> None:
    lim = Limiter(Cap(tokens=100), store=server.url, name="flush")
    await lim.record(tokens=1)
    client = server.client()
    try:
        client.script_flush()
    finally:
        client.close()
    await lim.record(tokens=1)
    assert (await lim.snapshot())[0].used == 2


async def test_a_stopped_server_is_unavailable_within_the_timeout(
    aof_server: RedisServer,
) -> None:
    from ratebudget.stores import RedisStore

    store = RedisStore(aof_server.url, timeout=0.5)
    lim = Limiter(Cap(usd="10", per="month"), store=store, name="fault")
    async with lim.acquire(usd="1") as lease:
        await lease.commit(usd="2.5")
    aof_server.stop()
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            async with lim.acquire(usd="1"):
                pytest.fail("granted without its store")
        assert time.monotonic() - started < 0.5 * 2 + 1  # connect + read, bounded
        with pytest.raises(StoreUnavailable):
            await lim.record(usd="1")
    aof_server.start()
    snap = await lim.snapshot()  # the AOF kept the month's usage
    assert snap[0].used == 2.5
    async with lim.acquire(usd="1"):
        pass
    assert (await lim.snapshot())[0].used == 3.5


async def test_a_killed_server_keeps_what_the_aof_had(aof_server: RedisServer) -> None:
    lim = Limiter(Cap(tokens=1000, per="day"), store=aof_server.url, name="kill")
    for _ in range(10):
        await lim.record(tokens=7)
    aof_server.kill()
    aof_server.start()
    assert (await lim.snapshot())[0].used == 70


async def test_fail_open_grants_without_the_server(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from ratebudget.stores import RedisStore

    store = RedisStore(server.url, timeout=0.3)
    lim = Limiter(Cap(tokens=10), store=store, name="open", on_store_error="allow")
    server.stop()
    with caplog.at_level(logging.ERROR, logger="ratebudget"):
        async with lim.acquire(5) as lease:
            await lease.commit(tokens=5)
    assert "NOT METERED" in caplog.text


async def test_caps_on_a_redis_without_persistence_warn_once(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ratebudget"):
        lim = Limiter(Cap(usd="25", per="month"), store=server.url, name="volatile")
        await lim.record(usd="1")
        await lim.record(usd="1")
        rates = Limiter(Rate(tokens=10, per="second"), store=server.url, name="r")
        await rates.acquire(1)
    warnings = [r for r in caplog.records if "appendonly" in r.getMessage()]
    assert len(warnings) == 1


async def test_caps_on_a_persistent_redis_do_not_warn(
    aof_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ratebudget"):
        lim = Limiter(Cap(usd="25", per="month"), store=aof_server.url, name="safe")
        await lim.record(usd="1")
    assert not [r for r in caplog.records if "appendonly" in r.getMessage()]


async def test_keys_live_in_one_slot_and_expire(server: RedisServer) -> None:
    lim = Limiter(
        Rate(tokens=10, per="second"),
        Cap(tokens=100, per="day"),
        store=server.url,
        name="keys",
    )
    async with lim.acquire(1):
        pass
    client = server.client()
    try:
        keys = sorted(k.decode() for k in client.keys("{keys}*"))
        assert keys
        assert all(k.startswith("{keys}:") for k in keys)
        for key in keys:
            assert client.pttl(key) > 0, key  # idle limiters cost nothing
    finally:
        client.close()


async def test_a_settle_in_another_process_wakes_a_blocked_caller(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ratebudget.stores import RedisStore, _remote

    # no look-agains of its own: only the pub/sub wake-up can serve it
    monkeypatch.setattr(_remote._ticker, "after", lambda delay, w: None)
    # two "processes": waiters are woken in-process by store URL, so the
    # holder's store gets another URL of the same server, and only the
    # script's PUBLISH on {wake}:wake reaches the waiter
    here = RedisStore(server.url)
    there = RedisStore(server.url + "?client_name=there")
    try:
        holder = Limiter(Cap(tokens=100), store=there, name="wake")
        waiter = Limiter(Cap(tokens=100), store=here, name="wake")
        lease = await holder.acquire(80)
        got: list[str] = []

        async def blocked() -> None:
            async with waiter.acquire(50, timeout=20) as mine:
                got.append(mine.id)

        client = server.client()
        try:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(blocked)
                    # until the listener has subscribed (a server-side state)
                    while client.execute_command("PUBSUB", "NUMPAT") < 1:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                    await anyio.sleep(0.05)
                    assert got == []
                    await lease.release()
        finally:
            client.close()
        assert len(got) == 1
    finally:
        here.close()
        there.close()
