"""Running a Redis store's script calls: from a thread, or from the loop.

The sync ``redis`` client is used from the limiter's worker threads,
without retries of its own: a failure surfaces at once as
``StoreUnavailable``. Each thread keeps one connection of the client's pool
for its script calls (on a cluster, one per node) and sends them
ready-encoded: a store call costs the round trip, not the client's
per-command bookkeeping; the connection goes back to the pool when the
thread ends. On an asyncio loop with a selector the call is sent from the
loop itself instead, on its own link (``_redis_link``).

On a cluster each call goes to the primary of its keys' slot; a ``MOVED``
or ``ASK`` reply (the call did not run) sends it again where the reply
says, and a failed call has the slot map read again (``_redis_cluster``).
With ``replicas=N`` each call is followed by ``WAIT`` in the same round
trip, on the thread's connection.
"""

from __future__ import annotations

import os
import threading
import weakref
from asyncio import _get_running_loop as _running_loop
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import StoreUnavailable
from . import _ops as ops
from ._redis_link import bulk as _bulk
from ._redis_link import command
from ._redis_script import _EVAL, ScriptArgs, _evalsha, _script
from ._redis_urls import cluster_hint

if TYPE_CHECKING:
    from ._redis_cluster import Routes
    from ._redis_link import Links

__all__ = ("ScriptCalls", "thread_connection")

_ASKING: Final = command(b"ASKING")
_HOPS: Final = 5  # redirections followed before a call gives up


class ScriptCalls(ScriptArgs):
    """The half of ``RedisStore`` that runs its script calls (a base with
    no state of its own)."""

    timeout: float
    replicas: int
    _redis: Any
    _routes: Routes | None
    _links: Links | None
    _held: threading.local
    _wait: list[bytes]
    _errors: tuple[type[Exception], ...]
    _failed: tuple[type[Exception], ...]
    _noscript: type[Exception]
    _response_error: type[Exception]
    _moved: type[Exception]
    _ask: type[Exception]

    def _call(
        self,
        label: str,
        keys: tuple[str, ...],
        argv: list[str],
        name: str,
        path: int = 0,
    ) -> ops.Answer:
        """Run the script here (blocking) and read its reply (``_answer``)."""
        try:
            reply = self._run_script(label, keys, argv)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        return self._answer(name, reply, path)

    def _sends(self) -> bool:
        """Whether calls may go from an event loop (not with ``WAIT``: it
        takes the thread's own connection)."""
        return (self._links is not None or self._routes is not None) and not self._wait

    def _send_request(
        self,
        label: str,
        keys: tuple[str, ...],
        argv: list[str],
        name: str,
        path: int,
        done: Callable[[ops.Answer | None, BaseException | None], None],
    ) -> bool:
        """Send a script call from this event loop, if it has a link to
        the node serving ``keys`` (``False``: the worker thread will)."""
        link = self._link(keys[0])
        if link is None:
            return False
        return self._send(link, label, keys, argv, name, path, done)

    def _link(self, key: str) -> Any:
        """This event loop's non-blocking link to the server (on a cluster:
        to the primary serving ``key``), ``None``: none here."""
        links = self._links
        if self._routes is not None:
            try:
                links = self._routes.links(self._routes.node_of(key))
            except self._errors:  # no node known for the slot: the thread asks
                return None
        return None if links is None else links.get()

    def _send(
        self,
        link: Any,
        label: str,
        keys: tuple[str, ...],
        argv: list[str],
        name: str,
        path: int,
        done: Callable[[ops.Answer | None, BaseException | None], None],
    ) -> bool:
        """Send the script call on ``link``; ``done`` gets its answer (read
        as ``_answer(name, reply, path)``) or its error."""
        count, args = self._resp_args(label, keys, argv)

        def answered(reply: Any, error: BaseException | None) -> None:
            if error is None and isinstance(reply, Exception):
                text = str(reply)
                if text.startswith(("MOVED ", "ASK ")) and self._routes is not None:
                    # it did not run: again, from a thread, where it is sent
                    self._redirected(label, keys, argv, name, path, done)
                    return
                error = StoreUnavailable(
                    cluster_hint(self.url, reply)
                    if text.startswith("MOVED ")
                    else f"Redis store {self.url}: {reply}"
                )
            if error is not None:
                if self._routes is not None:  # a failed node, CLUSTERDOWN...
                    self._routes.refresh()  # where to look next
                done(None, error)
                return
            try:
                answer = self._answer(name, reply, path)
            except StoreUnavailable as e:
                done(None, e)
                return
            done(answer, None)

        def landed(reply: Any, error: BaseException | None) -> None:
            # a server that does not know the script gets its text, once
            # (answered then, not landed: a closure that names itself is a
            # reference cycle, which keeps the whole call, its caller's
            # objects too, for the garbage collector)
            if (
                error is None
                and isinstance(reply, Exception)
                and str(reply).startswith("NOSCRIPT")
                and link.send(count + _EVAL + _bulk(_script()[0]) + args, answered)
            ):
                return
            answered(reply, error)

        return bool(link.send(count + _evalsha() + args, landed))

    def _redirected(
        self,
        label: str,
        keys: tuple[str, ...],
        argv: list[str],
        name: str,
        path: int,
        done: Callable[[ops.Answer | None, BaseException | None], None],
    ) -> None:
        """Run a script call the cluster redirected on a thread (it follows
        ``MOVED`` and ``ASK``, and reads the slot map again); ``done`` gets
        its answer in the loop."""
        loop = _running_loop()
        assert loop is not None  # (a link's reply lands in its loop)

        def run() -> None:
            answer: ops.Answer | None = None
            error: BaseException | None = None
            try:
                answer = self._call(label, keys, argv, name, path)
            except BaseException as e:  # delivered to the callers
                error = e
            try:
                loop.call_soon_threadsafe(done, answer, error)
            except RuntimeError:  # the loop has closed: nobody waits
                pass

        threading.Thread(target=run, name="ratebudget-redis-moved", daemon=True).start()

    def _run_script(self, name: str, keys: tuple[str, ...], argv: list[str]) -> Any:
        """The script's reply to ``keys`` and ``argv``, on this thread's own
        connection (``EVAL`` of its text if the server does not know it)."""
        if self._routes is not None:
            return self._run_routed(self._routes, name, keys, argv)
        conn = self._connection()
        if conn is None:  # a client without a pool of connections
            text, sha = _script()
            try:
                return self._redis.evalsha(sha, len(keys), *keys, *argv)
            except self._noscript:
                return self._redis.eval(text.decode(), len(keys), *keys, *argv)
            except self._moved as e:
                raise StoreUnavailable(cluster_hint(self.url, e)) from e
        try:
            return self._run_on(conn, name, keys, argv)
        except self._moved as e:
            raise StoreUnavailable(cluster_hint(self.url, e)) from e

    def _run_routed(
        self, routes: Routes, name: str, keys: tuple[str, ...], argv: list[str]
    ) -> Any:
        """``_run_script`` on a cluster: on the primary of the keys' slot, or
        where a ``MOVED`` or ``ASK`` reply sends it (the call did not run)."""
        try:
            node = routes.node_of(keys[0])
        except self._failed:  # no node known for the slot: look again
            routes.refresh(wait=True)
            raise
        asking = False
        for _ in range(_HOPS):
            conn = routes.connection(node)
            try:
                return self._run_on(conn, name, keys, argv, asking)
            except self._moved as e:  # (a kind of AskError: first)
                routes.refresh(wait=True)
                to: Any = e
                node, asking = routes.node_at(to.host, to.port), False
            except self._ask as e:
                to = e
                node, asking = routes.node_at(to.host, to.port), True
            except self._failed:  # a failover, say: where to look next
                routes.refresh(wait=True)  # (at most every 0.25 s)
                raise
        raise StoreUnavailable(
            f"Redis store {self.url}: the slot of {keys[0]!r} kept moving "
            f"({_HOPS} redirections); the cluster is resharding, try again"
        )

    def _run_on(
        self,
        conn: Any,
        name: str,
        keys: tuple[str, ...],
        argv: list[str],
        asking: bool = False,
    ) -> Any:
        """The script call on ``conn`` (after ``ASKING`` if ``asking``)."""
        count, args = self._resp_args(name, keys, argv)
        try:
            try:
                # an idle connection with something to read is broken (the
                # server closed it, say): a fresh one, as the pool would do
                stale = conn.can_read()
            except self._errors:
                stale = True
            if stale:
                conn.disconnect()
            reply = self._exchange(conn, count + _evalsha() + args, asking)
            if isinstance(reply, self._noscript):
                call = count + _EVAL + _bulk(_script()[0]) + args
                reply = self._exchange(conn, call, asking)
        except BaseException:
            conn.disconnect()  # never reused half-read
            raise
        if isinstance(reply, Exception):
            raise reply  # an error reply, read whole: the connection is fine
        return reply

    def _exchange(self, conn: Any, call: bytes, asking: bool) -> Any:
        """Send ``call`` (after ``ASKING``; followed by ``WAIT`` with
        ``replicas``) and read every reply: the call's, an error reply
        returned rather than raised."""
        conn.send_packed_command(
            [_ASKING, call, *self._wait] if asking else [call, *self._wait], False
        )
        if asking:
            conn.read_response()  # its OK
        try:
            reply = conn.read_response()
        except self._response_error as e:
            reply = e
        if self._wait:
            try:
                acked = conn.read_response()
            except self._response_error as e:
                acked = e  # a node no longer primary (the call was MOVED): no WAIT
            if isinstance(reply, Exception):
                return reply  # (what its WAIT said does not matter)
            if isinstance(acked, Exception):
                raise StoreUnavailable(f"Redis store {self.url}: WAIT: {acked}")
            if int(acked) < self.replicas:
                raise StoreUnavailable(
                    f"Redis store {self.url}: {acked} of {self.replicas} replicas "
                    f"confirmed the call within {self.timeout / 2:g} s; it ran on the "
                    "primary, but a failover could lose it, so it counts as failed"
                )
        return reply

    def _connection(self) -> Any:
        """This thread's connection for script calls (``None``: no pool)."""
        pool = getattr(self._redis, "connection_pool", None)
        return None if pool is None else thread_connection(self._held, pool)


def thread_connection(held: threading.local, pool: Any, node: str = "") -> Any:
    """This thread's connection from ``pool`` (one per ``node`` of a
    cluster), kept in ``held``: back to the pool when the thread ends; in
    a fork, the parent's is not used."""
    conns: dict[str, _Held] | None = getattr(held, "conns", None)
    if conns is None:
        conns = held.conns = {}
    got = conns.get(node)
    if got is not None and got.pool is pool and got.pid == os.getpid():
        return got.conn
    got = conns[node] = _Held(pool, pool.get_connection())
    # the thread's locals go when it ends, and the connection with them
    weakref.finalize(got, pool.release, got.conn)
    return got.conn


class _Held:
    """A connection one thread keeps, the pool it came from, and the
    process it was made in."""

    __slots__ = ("__weakref__", "conn", "pid", "pool")

    def __init__(self, pool: Any, conn: Any) -> None:
        self.pool = pool
        self.conn = conn
        self.pid = os.getpid()
