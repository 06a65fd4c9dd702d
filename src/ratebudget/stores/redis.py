"""``RedisStore``: limiter state shared by every process of every host.

Each batch of decisions is one ``EVALSHA`` of ``lua/decide.lua``, the Lua
mirror of the decision core, so it is atomic and one round trip; the script
is sent with ``EVAL`` only when the server does not know it yet. The store
is split by concern: what a call carries and answers (``_redis_script``),
running it from a thread or the event loop (``_redis_calls``,
``_redis_link``), a cluster's routes (``_redis_cluster``), its URLs
(``_redis_urls``) and the listener of other processes' wake-ups
(``_redis_wake``).

Keys of limiter ``<name>`` all carry the hash tag ``{<name>}`` so they share
one Redis Cluster slot: ``{<name>}:s`` (the state document, see
``stores/_state.py``), ``{<name>}:r`` (lease records by id) and
``{<name>}:x`` (their expiry times). They expire once the limiter has been
idle long enough that they no longer matter. A batch that wakes waiters
publishes their ids on ``{<name>}:wake``. The registry of limiters
(``ratebudget status``) is the hash ``ratebudget:limiters``, one global key
outside the limiters' slots (``{ratebudget}:limiters`` on a cluster, beside
the live limits: see ``_redis_cluster`` for what differs there).
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import InvalidRequest, StoreUnavailable
from .._plan import PlanSpec, RateSpec
from . import _ops as ops
from ._base import redact
from ._redis_books import LedgerStreams
from ._redis_calls import ScriptCalls
from ._redis_cluster import Routes, cluster_client
from ._redis_link import command, links_for, text
from ._redis_script import SCRIPT_PATH, _PlanArgs
from ._redis_urls import cluster_hint, resolve
from ._redis_wake import listen
from ._remote import SharedStore

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster


__all__ = ("REGISTRY_KEY", "SCRIPT_PATH", "RedisStore")

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

_EXACT: Final = 2**53
# State.exact, as the script has it: a count that reaches 2**53 is refused
# (a double sum past 2**53 may round back to it)
COUNT_MAX: Final = _EXACT - 1
# room for a debt of three bursts (or a cap's usage up to 4x its limit)
_HEADROOM: Final = 4
_MAX_TIMEOUT: Final = 86_400.0


class RedisStore(LedgerStreams, ScriptCalls, SharedStore):
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
        try:
            import redis as redis_py
            from redis.backoff import NoBackoff
            from redis.cluster import RedisCluster as Cluster
            from redis.retry import Retry
        except ImportError:
            raise InvalidRequest(
                "RedisStore needs the redis client: pip install 'ratebudget[redis]'"
            ) from None
        url, self.cluster, self.replicas = resolve(
            url, cluster, replicas, client, isinstance(client, Cluster)
        )
        # sent after each script call: WAIT for the replicas (half the timeout)
        self._wait: list[bytes] = (
            [command(b"WAIT", b"%d" % self.replicas, b"%d" % int(timeout * 500))]
            if self.replicas
            else []
        )
        self.url = redact(url)
        self.timeout = float(timeout)
        self._errors: tuple[type[Exception], ...] = (
            redis_py.exceptions.RedisError,
            redis_py.exceptions.RedisClusterException,
        )
        # the driver's, ours, and a socket's: what a call on a cluster may end with
        self._failed: tuple[type[Exception], ...] = (
            *self._errors,
            StoreUnavailable,
            OSError,
        )
        self._noscript: type[Exception] = redis_py.exceptions.NoScriptError
        self._response_error: type[Exception] = redis_py.exceptions.ResponseError
        self._moved: type[Exception] = redis_py.exceptions.MovedError
        self._ask: type[Exception] = redis_py.exceptions.AskError
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
                (lambda server: links_for(server, self.timeout, self.url))
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
        self._held = threading.local()  # each thread's own connection
        self._resp_keys: dict[str, bytes] = {}  # a name's keys, as RESP
        # a path's keys, by its label: (its root, the keys)
        self._path_keys: dict[str, tuple[str, tuple[str, ...]]] = {}
        # asyncio loops' own connections (a store of our own, plain TCP or Unix)
        self._links = (
            links_for(client, self.timeout, self.url)
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
            self._shards()  # (known before any script call: its wake-ups)
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
        """Refuse a plain URL of a cluster's node, naming the URL to use."""
        if self.cluster:
            return
        try:
            info = self._redis.info("cluster")
        except self._response_error:  # INFO not permitted
            return
        if info.get("cluster_enabled") in (1, "1"):
            raise InvalidRequest(cluster_hint(self.url))

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
        return int(rev or 0), {text(k): text(v) for k, v in got.items()}

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
        aof_value = {text(k): text(v) for k, v in aof.items()}.get("appendonly")
        save_value = {text(k): text(v) for k, v in save.items()}.get("save")
        return aof_value == "no" and save_value == ""

    def limiters(self) -> dict[str, dict[str, Any]]:
        try:
            got = self._redis.hgetall(self._registry_key)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        return {text(k): json.loads(text(v)) for k, v in sorted(got.items())}

    def keys_of(self, name: str, root: str) -> list[str]:
        tag = "{" + root + "}" + name[len(root) :] + "/"
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in tag)
        out: set[str] = set()
        try:
            for key in self._redis.scan_iter(match=f"{escaped}*:s", count=1000):
                rest = text(key)[len(tag) : -2]
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
        if not self._sends():
            return False
        label, keys, argv = self._path_request(
            names, specs, batch, ttl, keep, now_us, None
        )
        return self._send_request(label, keys, argv, names[0], len(names), done)

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
        if not self._sends():
            return False
        label, keys, argv = self._request(name, spec, batch, ttl, keep, now_us)
        return self._send_request(label, keys, argv, name, 0, done)
