"""``RedisStore``: limiter state shared by every process of every host.

Each batch of decisions is one ``EVALSHA`` of ``lua/decide.lua``, the Lua
mirror of the decision core (``_decide.py``, ``_ops.run`` and the document
of ``_state.py``), so it is atomic and one round trip; the script is sent
with ``EVAL`` only when the server does not know it yet. The sync ``redis``
client is used from the limiter's worker threads, without retries of its
own: a failure surfaces at once as ``StoreUnavailable``. Each thread keeps
one connection of the client's pool for its script calls and sends them
ready-encoded (a store call costs the round trip, not the client's
per-command bookkeeping); the connection goes back to the pool when the
thread ends.

Keys of limiter ``<name>`` all carry the hash tag ``{<name>}`` so they share
one Redis Cluster slot: ``{<name>}:s`` (the state document, see
``stores/_state.py``), ``{<name>}:r`` (lease records by id) and
``{<name>}:x`` (their expiry times). They expire once the limiter has been
idle long enough that they no longer matter. A batch that wakes waiters
publishes their ids on ``{<name>}:wake``. The registry of limiters
(``ratebudget status``) is the hash ``ratebudget:limiters``, one global key
outside the limiters' slots (``{ratebudget}:limiters`` on a cluster, beside
the live limits: see ``_redis_cluster`` for what differs there).

Lua knows no time zones: each call sends, for every calendar cap of its
plan, the periods around the client's wall clock (``_state.windows_around``),
and the script rolls a counter into the one holding the store's time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
import re
import threading
import time
import weakref
from asyncio import _get_running_loop as _running_loop
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from .._exceptions import InvalidRequest, StoreUnavailable
from .._ledger_db import Row, row_of
from .._plan import CapSpec, PlanSpec, RateSpec, _tz_name
from . import _ops as ops
from ._base import redact
from ._codec import book_of, book_text, decode_result, decode_shadowed, encode_op
from ._path_ops import pack, unpack
from ._redis_cluster import CLUSTER_SCHEMES, Routes, cluster_client, parse_cluster_url
from ._redis_link import Links, command
from ._redis_link import bulk as _bulk
from ._redis_wake import listen
from ._remote import SharedStore
from ._state import _kind, _plan_doc, plan_id, windows_around

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    from .._ledger import Ledger

__all__ = ("REGISTRY_KEY", "SCRIPT_PATH", "RedisStore")

#: the script every batch runs
SCRIPT_PATH: Final = (
    importlib.resources.files("ratebudget.stores") / "lua" / "decide.lua"
)

#: the global hash of registered limiters: name -> JSON spec
REGISTRY_KEY: Final = "ratebudget:limiters"
LIVE_KEY: Final = "ratebudget:live"  # name -> its live limits (JSON)
LIVE_REV_KEY: Final = "ratebudget:live:rev"  # counts changes of LIVE_KEY
LIVE_NAME: Final = "ratebudget:live"  # ``{LIVE_NAME}:wake``: live limits changed
# the same on a cluster: one hash tag, so one shard holds them all
CLUSTER_KEYS: Final = (
    "{ratebudget}:limiters",
    "{ratebudget}:live",
    "{ratebudget}:live:rev",
    "{ratebudget}:live:wake",
)

logger: Final = logging.getLogger("ratebudget")

# what JSON escapes in a key (the script's '[%c"\\]')
_ESCAPED: Final = re.compile(r'[\x00-\x1f\x7f"\\]')

_EXACT: Final = 2**53
# State.exact, as the script has it: a count that reaches 2**53 is refused
# (a double sum past 2**53 may round back to it)
COUNT_MAX: Final = _EXACT - 1
# room for a debt of three bursts (or a cap's usage up to 4x its limit)
_HEADROOM: Final = 4
# a limiter's keys outlive its last write by this much (plus the lease TTL)
_IDLE_TTL_MS: Final = 3_600_000
# the state of a name whose calendar caps still count something is kept this
# long after its last change (a lifetime cap's usage is kept for good)
_USAGE_KEPT_MS: Final = 400 * 86_400 * 1000


_MAX_TIMEOUT: Final = 86_400.0


def _check_url(url: str) -> None:
    """Refuse a URL redis-py would read wrongly (``redis://host/abc``: db 0)."""
    if not isinstance(url, str):
        raise InvalidRequest(f"url={url!r}: expected a redis:// URL")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
        raise InvalidRequest(
            f"url={redact(url)!r}: use redis://host:port/db, rediss://, unix:// "
            "or, for a Redis Cluster, redis+cluster://host:port[,host:port...]"
        )
    if scheme.lower() in ("unix", *CLUSTER_SCHEMES):
        return
    path = rest.partition("?")[0].partition("/")[2]
    if path and not path.isdigit():
        raise InvalidRequest(
            f"url={redact(url)!r}: the database after the host is a number, "
            f"like redis://localhost:6379/0, not {path!r}"
        )


@functools.lru_cache(maxsize=1)
def _script() -> tuple[bytes, str]:
    """The script's text and its SHA1 (what ``EVALSHA`` names it by)."""
    text = SCRIPT_PATH.read_bytes()
    return text, hashlib.sha1(text, usedforsecurity=False).hexdigest()


@functools.lru_cache(maxsize=1)
def _evalsha() -> bytes:
    """``EVALSHA`` and the script's SHA, as RESP (after the count)."""
    return _EVALSHA + _bulk(_script()[1].encode())


_quote: Final = json.encoder.encode_basestring_ascii  # json.dumps' own, in C


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class _PlanArgs:
    """What the script needs of a plan, as JSON, made once per plan; and its
    calendar windows around the latest wall clock (remade when it leaves
    their current period)."""

    __slots__ = ("calls", "head", "hot", "spec", "windows")

    def __init__(self, spec: PlanSpec) -> None:
        self.spec = spec  # kept alive: the cache is by id(spec)
        slots: list[list[Any]] = [
            ["c", s.key, s.limit, _kind(s), s.per, _tz_name(s.tz)]
            if isinstance(s, CapSpec)
            else ["r", s.key, s.rate, s.per, s.cap, s.debt]
            for s in spec.slots
        ]
        self.head = (
            f'"plan":{_dumps(slots)},"pid":{_dumps(plan_id(spec))},'
            f'"pdoc":{_dumps(_plan_doc(spec))}'
        )
        # the script's hot path takes a plan of rates alone as plain
        # arguments: their number, then each one's key, rate, per and cap
        # (keys JSON writes as they are: the script writes them unescaped)
        self.hot: list[str] | None = None
        if all(
            isinstance(s, RateSpec) and not _ESCAPED.search(s.key) for s in spec.slots
        ):
            self.hot = [str(len(spec.slots))] + [
                str(v) for row in slots for v in row[1:5]
            ]
        # the wall times (µs) the windows are good for, and the windows
        self.windows: tuple[int, int, str] = (0, -1, "{}")
        # hot calls on the store's clock, by (ttl, keep, shard): see ``hot_call``
        self.calls: dict[tuple[int, int, bool], tuple[str, str, list[str]]] = {}

    def hot_call(
        self, now_us: int | None, ttl: int, keep: int, shard: bool
    ) -> tuple[str, str, list[str]]:
        """A hot batch's call, but for its acquisitions: ARGV[1] before and
        after its ops, and ARGV[2...] before the acquisitions' (made once,
        unless ``now_us`` is given)."""
        key = (ttl, keep, shard)
        call = None if now_us is not None else self.calls.get(key)
        if call is None:
            assert self.hot is not None
            now = -1 if now_us is None else now_us
            call = (
                f'{{{self.head},"ops":[',
                f'],"now":{now},"ttl":{ttl},"keep":{keep},"idle":{_IDLE_TTL_MS},'
                f'"keep_usage":{_USAGE_KEPT_MS},"windows":{{}}'
                f"{_SHARD if shard else ''}}}",
                [str(now), str(_IDLE_TTL_MS + ttl // 1000), *self.hot],
            )
            if now_us is None:
                self.calls[key] = call
        return call

    def windows_at(self, wall: int) -> str:
        start, end, text = self.windows  # one read: threads share it
        if not start <= wall < end:
            windows = windows_around(self.spec, wall)
            start, end = -(2**63), 2**63
            for _prev, (_key, w_start, w_end), _next in windows.values():
                start, end = max(start, w_start), min(end, w_end)
            text = _dumps(windows)
            self.windows = (start, end, text)
        return text


def _acquire_text(op: ops.Acquire) -> str:
    """``_dumps(encode_op(op))``, made without the JSON encoder (each call
    of the hot path sends it)."""
    timeout = "null" if op.timeout is None else op.timeout
    return (
        f'["acquire",{_quote(op.key)},[{",".join(map(str, op.req))}],'
        f"{timeout},{1 if op.wait else 0}]"
    )


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisStore(SharedStore):
    """Limiter state in Redis: ``RedisStore("redis://localhost:6379/0")``,
    or on a Redis Cluster: ``RedisStore("redis+cluster://host:7000,host:7001")``.

    ``timeout`` (seconds) bounds connecting and every call; ``client`` is an
    existing sync ``redis.Redis`` or ``redis.cluster.RedisCluster`` to use
    instead of ``url`` (``close`` then leaves its connections alone);
    ``cluster=True`` reads a ``redis://host:port`` URL as one node of a
    cluster. ``replicas=N`` (or ``?replicas=N`` in the URL) returns a
    decision only once N replicas of its primary have it (``WAIT``), so a
    failover cannot lose a grant or a charge; fewer in ``timeout / 2`` and
    the call fails with ``StoreUnavailable``.
    """

    scopes = True  # a path's keys share the root's hash tag: one script call

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 2.0,
        client: redis.Redis | RedisCluster | None = None,
        cluster: bool = False,
        replicas: int | None = None,
    ) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= _MAX_TIMEOUT
        ):
            raise InvalidRequest(
                f"timeout={timeout!r}: expected seconds > 0 (at most {_MAX_TIMEOUT:g})"
            )
        if not isinstance(cluster, bool):
            raise InvalidRequest(f"cluster={cluster!r}: expected True or False")
        try:
            import redis as redis_py
            from redis.backoff import NoBackoff
            from redis.cluster import RedisCluster as Cluster
            from redis.retry import Retry
        except ImportError:
            raise InvalidRequest(
                "RedisStore needs the redis client: pip install 'ratebudget[redis]'"
            ) from None
        if url is None:
            url = "redis://localhost:6379/0" if client is None else _url_of(client)
        _check_url(url)
        url, in_url = _replicas_of(url)
        if replicas is None:
            replicas = in_url
        if (
            isinstance(replicas, bool)
            or not isinstance(replicas, int)
            or not 0 <= replicas <= _MAX_REPLICAS
        ):
            raise InvalidRequest(
                f"replicas={replicas!r}: expected a number of replicas, 0 to {_MAX_REPLICAS}"
            )
        self.replicas = replicas
        # sent after each script call: WAIT for the replicas (half the timeout)
        self._wait: list[bytes] = (
            [command(b"WAIT", b"%d" % replicas, b"%d" % int(timeout * 500))]
            if replicas
            else []
        )
        scheme, _, rest = url.partition("://")
        self.cluster = (
            cluster or scheme.lower() in CLUSTER_SCHEMES or isinstance(client, Cluster)
        )
        if self.cluster and scheme.lower() == "unix":
            raise InvalidRequest(
                f"url={redact(url)!r}: a Redis Cluster's nodes are host:port addresses"
            )
        if self.cluster and scheme.lower() in ("redis", "rediss"):
            url = f"{scheme}+cluster://{rest.partition('/')[0]}"  # that node, a seed
        if client is not None and self.cluster != isinstance(client, Cluster):
            raise InvalidRequest(
                f"client={client!r}: a {'RedisCluster' if self.cluster else 'redis.Redis'} "
                f"is needed for {redact(url)!r}"
            )
        if self.cluster:
            parse_cluster_url(url)  # refused now, not at the first call
        self.url = redact(url)
        self.timeout = float(timeout)
        self._errors: tuple[type[Exception], ...] = (
            redis_py.exceptions.RedisError,
            redis_py.exceptions.RedisClusterException,
        )
        # the driver's, and ours: what a call on a cluster may end with
        self._failed: tuple[type[Exception], ...] = (*self._errors, StoreUnavailable)
        self._noscript: type[Exception] = redis_py.exceptions.NoScriptError
        self._response_error: type[Exception] = redis_py.exceptions.ResponseError
        self._moved: type[Exception] = redis_py.exceptions.MovedError
        self._ask: type[Exception] = redis_py.exceptions.AskError
        self._gone: tuple[type[Exception], ...] = (  # a node that does not answer
            redis_py.exceptions.ConnectionError,
            redis_py.exceptions.TimeoutError,
            OSError,
        )
        self._owned = client is None
        self._routes: Routes | None = None
        self._url = url  # unredacted: a cluster's client is made at first use
        self._client_lock = threading.Lock()
        if client is None and not self.cluster:
            client = redis_py.Redis.from_url(
                url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        self._client: Any = client
        if self.cluster:
            owned = self._owned
            self._routes = Routes(
                lambda: self._redis,
                (lambda server: _links_for(server, self.timeout, self.url))
                if owned
                else None,
            )
        # the global keys: the registry, the live limits, their revision
        # and their channel (on a cluster, under one hash tag)
        self._registry_key, self._live_key, self._live_rev_key, self._live_channel = (
            CLUSTER_KEYS
            if self.cluster
            else (REGISTRY_KEY, LIVE_KEY, LIVE_REV_KEY, "{" + LIVE_NAME + "}:wake")
        )
        self._sharded: bool | None = None  # sharded pub/sub (cluster, Redis 7+)
        self._unlisted: dict[str, str] = {}  # cluster: registrations to retry
        self._streams: set[str] = set()  # the ledger streams this process copies
        self._held = threading.local()  # each thread's own connection (_Held)
        self._resp_keys: dict[str, bytes] = {}  # a name's keys, as RESP
        # a path's keys, by its label: (its root, the keys)
        self._path_keys: dict[str, tuple[str, tuple[str, ...]]] = {}
        # asyncio loops' own connections (a store of our own, plain TCP or Unix)
        self._links = (
            _links_for(client, self.timeout, self.url)
            if self._owned and not self.cluster
            else None
        )
        # (a RedisCluster connects as it is made: ours, at the first call)
        self._lock = threading.Lock()
        # plans seen, by identity: what the script needs of each, as JSON
        self._plans: dict[int, _PlanArgs] = {}
        self._volatile: bool | None = None  # None: not checked yet, or unknown
        self._warned = False  # the persistence warning, given once
        # wake-ups: one listener thread per store, started by the first subscriber
        self._wake_lock = threading.Lock()
        self._names: set[str] = set()
        self._listener: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def _redis(self) -> Any:
        """The redis-py client (a cluster's made at first use: it connects
        to learn the slot map)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    try:
                        self._client = cluster_client(self._url, self.timeout)
                    except self._errors as e:
                        raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
                client = self._client
        return client

    # -- the interface ------------------------------------------------------

    def register(self, name: str, spec: dict[str, Any]) -> list[str]:
        try:
            with self._lock:  # once per store object
                if self._volatile is None:
                    self._check_kind()
                    self._volatile = self._check_volatile()
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        self._list(name, json.dumps(spec))
        has_cap = any(x.get("kind") == "cap" for x in spec.get("limits", ()))
        if self._volatile and has_cap and not self._warned:
            self._warned = True  # once per store: not once per per-key scope
            return [
                f"Redis at {self.url} persists nothing (appendonly no, save ''): "
                f"limiter {name!r}'s cap usage (and any other's) lives only in memory and is lost "
                "if Redis restarts; set 'appendonly yes' to keep budgets"
            ]
        return []

    live_every = None  # the listener hears of changes (and looks on each (re)subscribe)

    def _list(self, name: str, spec: str) -> None:
        """Write ``name`` in the registry. On a cluster, the registry's shard
        being down delays this (to a later registration) rather than failing
        limiters whose state is on other shards."""
        if not self.cluster:
            try:
                self._redis.hset(self._registry_key, name, spec)
            except self._errors as e:
                raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
            return
        with self._lock:
            self._unlisted[name] = spec
            unlisted = dict(self._unlisted)
        try:
            self._redis.hset(self._registry_key, mapping=unlisted)
        except self._errors as e:
            logger.warning(
                "ratebudget: Redis store %s: limiter %r is not in the registry yet "
                "(ratebudget status lists it once the registry's shard answers): %s",
                self.url,
                name,
                e,
            )
            return
        with self._lock:
            for key, value in unlisted.items():
                if self._unlisted.get(key) == value:
                    del self._unlisted[key]

    def _check_kind(self) -> None:
        """Refuse a plain URL of a cluster's node, naming the URL to use; on
        a cluster, see whether its servers have sharded pub/sub."""
        if self.cluster:
            self._sharded = self._shards_pubsub()
            return
        try:
            info = self._redis.info("cluster")
        except self._response_error:  # INFO not permitted
            return
        if info.get("cluster_enabled") in (1, "1"):
            raise InvalidRequest(_cluster_hint(self.url))

    def _shards_pubsub(self) -> bool:
        """Whether the cluster's servers have sharded pub/sub (Redis 7+)."""
        assert self._routes is not None
        versions = []
        for node in self._routes.primaries():
            try:
                version = node.redis_connection.info("server")["redis_version"]
            except self._errors:
                continue
            versions.append(int(str(version).split(".")[0]))
        if not versions:
            raise StoreUnavailable(f"Redis store {self.url}: no primary answered")
        return min(versions) >= 7

    def _shards(self) -> bool:
        """``_sharded``, asked of the servers if nobody has yet."""
        if self._sharded is None and self.cluster:
            with self._lock:
                if self._sharded is None:
                    self._sharded = self._shards_pubsub()
        return bool(self._sharded)

    def read_live(self) -> tuple[int, dict[str, str]]:
        try:
            # the revision first: the hash read after it is as new or newer
            # (``write_live`` bumps it after the hash), so nothing is missed
            pipe = self._redis.pipeline(transaction=not self.cluster)
            pipe.get(self._live_rev_key)
            pipe.hgetall(self._live_key)
            rev, got = pipe.execute()
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        return int(rev or 0), {_text(k): _text(v) for k, v in got.items()}

    def write_live(self, name: str, raw: str | None) -> None:
        try:
            pipe = self._redis.pipeline(transaction=not self.cluster)
            if raw is None:
                pipe.hdel(self._live_key, name)
            else:
                pipe.hset(self._live_key, name, raw)
            pipe.incr(self._live_rev_key)
            if self._shards():
                pipe.spublish(self._live_channel, "null")
            else:
                pipe.publish(self._live_channel, "null")
            pipe.execute()
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e

    def _check_volatile(self) -> bool:
        """Whether Redis (any primary of a cluster) keeps nothing across a
        restart (False if unknown)."""
        if self._routes is None:
            return self._volatile_at(self._redis)
        return any(
            self._volatile_at(node.redis_connection)
            for node in self._routes.primaries()
        )

    def _volatile_at(self, server: Any) -> bool:
        try:
            aof = server.config_get("appendonly")
            save = server.config_get("save")
        except self._response_error:  # CONFIG not permitted (managed Redis)
            return False
        aof_value = {_text(k): _text(v) for k, v in aof.items()}.get("appendonly")
        save_value = {_text(k): _text(v) for k, v in save.items()}.get("save")
        return aof_value == "no" and save_value == ""

    # -- the ledger's rows, on each tree's stream -------------------------------

    def books(self, ledger: Ledger, name: str | None) -> bool:
        """Every ledger: the script writes a row on the stream of the tree
        (``{root}:ledger``) in the call that commits, releases or records;
        ``ledger`` copies the rows from there (its writer thread, about
        once a second and at ``flush``), so a commit that returned loses no
        row if its process is killed: the next process (or ``ratebudget
        ledger sync``) copies it."""
        if name is None:
            return False
        key = self.watch_stream(name)
        try:  # made now (empty): the leases its tree's calls find expired get rows
            if not self._redis.exists(key):
                entry = self._redis.xadd(key, {"made": "1"})
                self._redis.xdel(key, entry)
        except self._errors:
            pass  # made by the first row; until then expiries go unwritten
        ledger._add_source(self)
        return True

    def watch_stream(self, root: str) -> str:
        """Copy the ledger rows of tree ``root`` (from this process); its
        stream's key."""
        key = "{" + root + "}:ledger"
        self._streams.add(key)
        return key

    def read_books(
        self, limit: int = 500
    ) -> tuple[list[Row], list[tuple[str, list[bytes]]]]:
        """Rows waiting on the streams watched, and their entries (to
        ``ack_books`` once the rows are written)."""
        rows: list[Row] = []
        acks: list[tuple[str, list[Any]]] = []
        try:
            for key in sorted(self._streams):
                got = self._redis.xrange(key, count=limit)
                if not got:
                    continue
                ids: list[Any] = []
                for entry_id, got_fields in got:
                    # (bytes, or text from a client made with decode_responses)
                    fields: dict[Any, Any] = {
                        _text(k): v for k, v in (got_fields or {}).items()
                    }
                    book = book_of(fields["row"])
                    rows.append(
                        row_of(
                            book.lease_id,
                            int(fields["at"]),
                            book.scope,
                            book.labels,
                            book.outcome,
                            dict(book.units),
                        )
                    )
                    ids.append(entry_id)
                acks.append((key, ids))
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        except (KeyError, ValueError, TypeError) as e:
            raise StoreUnavailable(
                f"Redis store {self.url}: a ledger row is unreadable ({e})"
            ) from e
        return rows, acks

    def ack_books(self, acks: list[tuple[str, list[Any]]]) -> None:
        """Drop the stream entries whose rows are in the ledger."""
        try:
            for key, ids in acks:
                self._redis.xdel(key, *ids)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e

    def limiters(self) -> dict[str, dict[str, Any]]:
        try:
            got = self._redis.hgetall(self._registry_key)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        return {_text(k): json.loads(_text(v)) for k, v in sorted(got.items())}

    def keys_of(self, name: str, root: str) -> list[str]:
        tag = "{" + root + "}" + name[len(root) :] + "/"
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in tag)
        out: set[str] = set()
        try:
            for key in self._redis.scan_iter(match=f"{escaped}*:s", count=1000):
                rest = _text(key)[len(tag) : -2]
                if rest and "/" not in rest:
                    out.add(f"{name}/{rest}")
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        return sorted(out)

    def subscribe(self, name: str) -> bool:
        with self._wake_lock:
            self._names.add(name)
            if self._listener is None or not self._listener.is_alive():
                self._closing.clear()
                self._listener = threading.Thread(
                    target=listen,
                    args=(weakref.ref(self),),
                    name="ratebudget-redis-wake",
                    daemon=True,
                )
                self._listener.start()
        return True

    def _live_changed(self) -> None:
        try:
            self.load_live()
        except StoreUnavailable:  # the listener reconnects, and looks again
            self._live_at = 0.0  # or the next operation does

    def close(self) -> None:
        if self._links is not None:
            self._links.close()
        if self._routes is not None:
            self._routes.close()
        self._closing.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=self.timeout + 1)
        self._listener = None
        if self._owned and self._client is not None:
            if self.cluster:
                self._client.close()
            else:
                self._client.connection_pool.disconnect()

    def validate(self, spec: PlanSpec) -> None:
        """Refuse a plan whose numbers could leave the range Redis' Lua
        numbers (doubles) hold exactly."""
        if spec.tick_ns != 1000:
            raise InvalidRequest(
                f"the Redis store counts time in microseconds, not {spec.tick_ns} ns"
            )
        for p in spec.slots:
            if isinstance(p, RateSpec):
                if max(p.cap, p.debt or 0) * _HEADROOM > _EXACT or p.rate > _EXACT:
                    raise InvalidRequest(
                        f"rate {p.key!r}: its burst or limit (up to "
                        f"{max(p.cap, p.debt or 0)} units x period) "
                        "cannot be represented exactly in Redis' Lua numbers "
                        "(doubles, exact below 2**53); use a rounder limit or "
                        "period (a limit and a period in microseconds with a "
                        "large common divisor), or a smaller burst"
                    )
            elif p.limit * _HEADROOM > _EXACT:
                raise InvalidRequest(
                    f"cap {p.key!r}: its limit ({p.limit} units) cannot be "
                    "represented exactly in Redis' Lua numbers (doubles, exact "
                    f"below 2**53; caps up to {_EXACT // _HEADROOM} units); use "
                    "a smaller limit"
                )

    def most(self, spec: PlanSpec) -> int | None:
        got = [
            _EXACT // _HEADROOM // (s.per if isinstance(s, RateSpec) else 1)
            for s in spec.slots
            if not (isinstance(s, RateSpec) and s.debt is not None)
        ]
        return min(got) if got else None

    def check(self, spec: PlanSpec, amounts: tuple[int, ...]) -> None:
        for s, n in zip(spec.slots, amounts, strict=True):
            if isinstance(s, RateSpec) and s.debt is not None:
                continue  # its debt stops at -debt, exact whatever the amount
            units = n * s.per if isinstance(s, RateSpec) else n
            if units > _EXACT // _HEADROOM:
                raise InvalidRequest(
                    f"{s.key.split(':')[1]}: {n} units is more than the Redis store "
                    f"counts exactly in one amount (its Lua numbers are doubles, "
                    f"exact below 2**53: at most {_EXACT // _HEADROOM // (units // n)} "
                    "units per amount); split it"
                )

    def execute(
        self,
        name: str,
        spec: PlanSpec,
        batch: list[ops.Op],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
    ) -> ops.Answer:
        label, keys, argv = self._request(name, spec, batch, ttl, keep, now_us)
        return self._call(label, keys, argv, name)

    def execute_path(
        self,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
        root: str | None = None,
    ) -> ops.Answer:
        """Down a path: every level's three keys in one script call, each
        under the root's hash tag (``{root}/team/user:s``), so a decision
        stays on one Redis Cluster slot at any depth."""
        label, keys, out = self._path_request(
            names, specs, batch, ttl, keep, now_us, root
        )
        return self._call(label, keys, out, names[0], len(names))

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

    def send_path(
        self,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        done: Callable[[ops.Answer | None, BaseException | None], None],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
    ) -> bool:
        if (self._links is None and self._routes is None) or self._wait:
            return False
        label, keys, argv = self._path_request(
            names, specs, batch, ttl, keep, now_us, None
        )
        link = self._link(keys[0])
        if link is None:
            return False
        return self._send(link, label, keys, argv, names[0], len(names), done)

    def _path_request(
        self,
        names: list[str],
        specs: list[PlanSpec],
        batch: list[ops.Op],
        ttl: int,
        keep: int,
        now_us: int | None,
        root: str | None,
    ) -> tuple[str, tuple[str, ...], list[str]]:
        """The script's label, keys and arguments for ``batch`` down a path."""
        if now_us is not None and now_us < 0:
            raise InvalidRequest(f"now_us={now_us}: store time starts at 0")
        if root is None:
            root = names[-1]
        if any(n != root and not n.startswith(root + "/") for n in names):
            raise InvalidRequest(f"{names!r}: not a path of scopes under {root!r}")
        label = "\x00".join(names)
        keys = self._path_keys.get(label)
        if keys is None or keys[0] != root:
            got: list[str] = []
            for name in names:
                tag = "{" + root + "}" + name[len(root) :]
                got += (f"{tag}:s", f"{tag}:r", f"{tag}:x")
            if len(self._path_keys) >= _PLANS_KEPT:
                self._path_keys.clear()
            keys = self._path_keys[label] = (root, tuple(got))
        wall = time.time_ns() // 1000 if now_us is None else now_us
        plans = [self._plan_args(spec) for spec in specs]
        levels = [f'{{{p.head},"windows":{p.windows_at(wall)}}}' for p in plans]
        n = len(names)
        encoded = [
            [
                "settle",
                op.key,
                unpack(op.take, n),
                list(op.est),
                None if op.actual is None else list(op.actual),
                *([] if op.book is None else [book_text(op.book)]),
            ]
            if isinstance(op, ops.Settle)
            else encode_op(op)
            for op in batch
        ]
        label, paths, book = _with_book(batch, label, keys[1], root)
        argv = (
            f'{{"path":[{",".join(levels)}],"ops":{_dumps(encoded)},'
            f'"now":{-1 if now_us is None else now_us},"ttl":{ttl},"keep":{keep},'
            f'"idle":{_IDLE_TTL_MS},"keep_usage":{_USAGE_KEPT_MS}{book}'
            f"{_SHARD if self._sharded else ''}}}"
        )
        out = [argv]
        if (
            not book
            and all(p.hot is not None for p in plans)
            and all(isinstance(op, ops.Acquire) for op in batch)
        ):
            # the script's hot path down a path: plans of rates alone
            out += ["path", "-1" if now_us is None else str(now_us)]
            out += [str(_IDLE_TTL_MS + ttl // 1000), str(n)]
            for p in plans:
                assert p.hot is not None
                out += p.hot
            for op in batch:
                assert isinstance(op, ops.Acquire)
                out.append("1" if op.wait else "0")
                out += map(str, op.req)
        return label, paths, out

    def _plan_args(self, spec: PlanSpec) -> _PlanArgs:
        plan = self._plans.get(id(spec))
        if plan is None or plan.spec is not spec:
            if len(self._plans) >= _PLANS_KEPT:
                self._plans.clear()
            plan = self._plans[id(spec)] = _PlanArgs(spec)
        return plan

    def send(
        self,
        name: str,
        spec: PlanSpec,
        batch: list[ops.Op],
        done: Callable[[ops.Answer | None, BaseException | None], None],
        *,
        ttl: int,
        keep: int,
        now_us: int | None = None,
    ) -> bool:
        if (self._links is None and self._routes is None) or self._wait:
            return False  # (a WAIT for replicas: the thread's own connection)
        label, keys, argv = self._request(name, spec, batch, ttl, keep, now_us)
        link = self._link(keys[0])
        if link is None:
            return False
        return self._send(link, label, keys, argv, name, 0, done)

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
                    _cluster_hint(self.url, reply)
                    if text.startswith("MOVED ")
                    else f"Redis store {self.url}: {reply}"
                )
                if self._routes is not None:  # CLUSTERDOWN, a replica's...
                    self._routes.refresh()
            elif error is not None and self._routes is not None:
                self._routes.refresh()  # the node failed: where to look next
            if error is not None:
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

    def _request(
        self,
        name: str,
        spec: PlanSpec,
        batch: list[ops.Op],
        ttl: int,
        keep: int,
        now_us: int | None,
    ) -> tuple[str, tuple[str, ...], list[str]]:
        """The script's label, keys and arguments for ``batch`` (ARGV[2...]
        for its hot path only when the batch is acquisitions on a plan of
        rates alone)."""
        if not name:
            raise InvalidRequest("a Redis limiter needs a non-empty name")
        if now_us is not None and now_us < 0:
            raise InvalidRequest(f"now_us={now_us}: store time starts at 0")
        tag = "{" + name + "}"
        keys: tuple[str, ...] = (f"{tag}:s", f"{tag}:r", f"{tag}:x")
        plan = self._plan_args(spec)
        if plan.hot is not None and all(type(op) is ops.Acquire for op in batch):
            # acquisitions carry no ledger rows, a plan of rates no windows
            acquires = cast("list[ops.Acquire]", batch)
            shard = bool(self._sharded)
            before, after, args = plan.hot_call(now_us, ttl, keep, shard)
            out = [before + ",".join(map(_acquire_text, acquires)) + after, *args]
            for op in acquires:
                out.append("1" if op.wait else "0")
                out += map(str, op.req)
            return name, keys, out
        wall = time.time_ns() // 1000 if now_us is None else now_us
        label, keys, book = _with_book(batch, name, keys, name)
        argv = (
            f'{{{plan.head},"ops":{_dumps([encode_op(op) for op in batch])},'
            f'"now":{-1 if now_us is None else now_us},"ttl":{ttl},"keep":{keep},'
            f'"idle":{_IDLE_TTL_MS},"keep_usage":{_USAGE_KEPT_MS},'
            f'"windows":{plan.windows_at(wall)}{book}'
            f"{_SHARD if self._sharded else ''}}}"
        )
        return label, keys, [argv]

    def _answer(self, name: str, reply: Any, path: int = 0) -> ops.Answer:
        """The script's reply, read (down a ``path`` of that many levels, a
        grant's takes come as a list: packed into the lease's take). The
        hot path answers with integers: the store's time, then each
        acquisition's take, or 0 for "none"."""
        if type(reply) is list:
            try:
                now, *takes = reply
                return ops.Answer(
                    [ops.Granted(t) if t else None for t in takes], int(now), []
                )
            except (ValueError, TypeError) as e:
                raise StoreUnavailable(
                    f"Redis store {self.url}: the answer for {name!r} is unreadable "
                    f"({type(e).__name__}: {e})"
                ) from e
        try:
            data = json.loads(reply)
            return ops.Answer(
                [
                    ops.Granted(pack(r[1]))
                    if path and r[0] == "granted" and isinstance(r[1], list)
                    else decode_result(r)
                    for r in data["results"]
                ],
                int(data["now"]),
                [ops.Woken(k, cast(Any, decode_result(r))) for k, r in data["woken"]],
                shadowed=[decode_shadowed(x) for x in data.get("shadowed", ())],
            )
        except (ValueError, TypeError, KeyError) as e:
            raise StoreUnavailable(
                f"Redis store {self.url}: the answer for {name!r} is unreadable "
                f"({type(e).__name__}: {e})"
            ) from e

    def _resp_args(
        self, name: str, keys: tuple[str, ...], argv: list[str]
    ) -> tuple[bytes, bytes]:
        """The script call as RESP: its count of items, and what follows its
        SHA or text (a name's keys encoded once)."""
        resp_keys = self._resp_keys.get(name)
        if resp_keys is None:
            if len(self._resp_keys) >= _PLANS_KEPT:
                self._resp_keys.clear()
            resp_keys = self._resp_keys[name] = _bulk(b"%d" % len(keys)) + b"".join(
                _bulk(k.encode()) for k in keys
            )
        count = b"*%d\r\n" % (3 + len(keys) + len(argv))
        got = _BULKS.get
        return count, resp_keys + b"".join([got(a) or _bulk_of(a) for a in argv])

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
                raise StoreUnavailable(_cluster_hint(self.url, e)) from e
        try:
            return self._run_on(conn, name, keys, argv)
        except self._moved as e:
            raise StoreUnavailable(_cluster_hint(self.url, e)) from e

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
            except self._gone:
                routes.refresh(wait=True)  # a failover, say: where to look next
                raise
            except self._failed:
                routes.refresh(wait=True)  # (at most every 0.25 s) a failover?
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
        held: _Held | None = getattr(self._held, "held", None)
        if held is not None and held.pid == os.getpid():
            return held.conn
        pool = getattr(self._redis, "connection_pool", None)
        if pool is None:
            return None
        held = self._held.held = _Held(pool.get_connection())
        # the thread's locals go when it ends, and the connection with them
        weakref.finalize(held, pool.release, held.conn)
        return held.conn


def _links_for(client: Any, timeout: float, url: str) -> Links | None:
    """Links for the event loops of ``client``'s server, or ``None`` where
    they cannot serve it (TLS, another connection class, no hiredis)."""
    try:
        import hiredis  # noqa: F401  (the links parse replies with it)
        from redis.connection import Connection, UnixDomainSocketConnection
    except ImportError:
        return None
    pool = client.connection_pool
    kw = pool.connection_kwargs
    address: tuple[str, int] | str
    if pool.connection_class is Connection:
        address = (kw.get("host", "localhost"), int(kw.get("port", 6379)))
    elif pool.connection_class is UnixDomainSocketConnection:
        address = kw["path"]
    else:
        return None
    hello: list[bytes] = []
    if kw.get("password") is not None:
        auth = (
            [kw["password"]]
            if kw.get("username") is None
            else [kw["username"], kw["password"]]
        )
        hello.append(command(b"AUTH", *(str(a).encode() for a in auth)))
    if kw.get("db"):
        hello.append(command(b"SELECT", str(int(kw["db"])).encode()))
    return Links(address, hello, timeout, url)


class _Held:
    """A connection one thread keeps (in a fork, it is the parent's)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pid = os.getpid()


_BOOKED: Final = "\x01"  # a label's mark: its batch has ledger rows (one key more)


def _with_book(
    batch: list[ops.Op], label: str, keys: tuple[str, ...], root: str
) -> tuple[str, tuple[str, ...], str]:
    """A batch's label, keys and ARGV[1] field for the ledger rows it
    carries (``ops.Book``): the tree's stream as a last key, named by
    ``"book"``; a batch without any, as it is."""
    if not any(getattr(op, "book", None) is not None for op in batch):
        return label, keys, ""
    stream = "{" + root + "}:ledger"
    return label + _BOOKED, (*keys, stream), f",{_dumps('book')}:{_dumps(stream)}"


# the short arguments (a hot batch's amounts, its plan's keys and numbers)
# repeat from call to call: each one's RESP made once (not ARGV[1], longer,
# which differs at each call)
_BULKS: dict[str, bytes] = {}
_BULKS_KEPT: Final = 4096
_BULK_KEPT_LEN: Final = 100


def _bulk_of(arg: str) -> bytes:
    """``arg`` as a RESP bulk string (kept in ``_BULKS`` if short)."""
    got = _bulk(arg.encode())
    if len(arg) <= _BULK_KEPT_LEN:
        if len(_BULKS) >= _BULKS_KEPT:
            _BULKS.clear()
        _BULKS[arg] = got
    return got


_EVALSHA: Final = _bulk(b"EVALSHA")
_EVAL: Final = _bulk(b"EVAL")
_ASKING: Final = command(b"ASKING")
_SHARD: Final = ',"shard":true'  # ARGV[1]'s field: wake-ups by SPUBLISH
_HOPS: Final = 5  # redirections followed before a call gives up
_MAX_REPLICAS: Final = 16


def _replicas_of(url: str) -> tuple[str, int]:
    """``url`` without its ``replicas=N`` parameter, and N (0 if none)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, 0
    kept, replicas = [], 0
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key != "replicas":
            kept.append(item)
        elif value.isdigit() and int(value) <= _MAX_REPLICAS:
            replicas = int(value)
        else:
            raise InvalidRequest(
                f"url={redact(url)!r}: replicas={value!r}: expected a number "
                f"of replicas, 0 to {_MAX_REPLICAS}"
            )
    return (base + "?" + "&".join(kept) if kept else base), replicas


def _url_of(client: Any) -> str:
    """A URL naming ``client``'s server or cluster, for messages."""
    if hasattr(client, "get_primaries"):  # a RedisCluster
        names = sorted(node.name for node in client.get_primaries())
        return "redis+cluster://" + ",".join(names or ["localhost:6379"])
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _cluster_hint(url: str, moved: Exception | None = None) -> str:
    """Why a plain URL of a cluster's node cannot serve, and what to use."""
    host = url.partition("://")[2].rpartition("@")[2].partition("/")[0]
    why = "" if moved is None else f" (it answered MOVED {moved})"
    return (
        f"Redis store {url}: that server is a node of a Redis Cluster{why}; "
        f"use store='redis+cluster://{host}' (or RedisStore(..., cluster=True)) "
        "so each name is sent to the node that serves it"
    )


_PLANS_KEPT: Final = 256
