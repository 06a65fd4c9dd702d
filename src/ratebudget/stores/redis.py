"""``RedisStore``: limiter state shared by every process of every host.

Each batch of decisions is one ``EVALSHA`` of ``lua/decide.lua`` (a
line-by-line mirror of ``_core.run``), so it is atomic and costs one round
trip; the script is sent with ``EVAL`` only when the server does not know it
yet. The sync ``redis`` client is used from the limiter's worker threads (its
connection pool is thread-safe), without retries: a batch is not idempotent,
and a failure surfaces at once as ``StoreUnavailable``.

Keys of limiter ``<name>`` all carry the hash tag ``{<name>}`` so they share
one Redis Cluster slot (see the top of ``decide.lua``); they expire once the
limiter has been idle long enough that they no longer matter, except a cap's
usage counters: a period's counter (``{<name>}:u:<cap>|2026-11``) names its
period, so it simply expires 400 days after its last write, and a lifetime
cap's counter never expires. The registry of limiters (``ratebudget status``)
is the hash ``ratebudget:limiters``, one global key outside the limiters'
slots.

Redis' Lua numbers are doubles, exact for integers below 2**53: ``validate``
refuses a plan whose bursts or cap limits could leave that range.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import InvalidRequest, StoreUnavailable
from ._base import Store
from ._core import CapP, Plan, RateP, periods_of_op

if TYPE_CHECKING:
    import redis

__all__ = ("SCRIPT_PATH", "RedisStore")

#: the script every batch runs
SCRIPT_PATH: Final = (
    importlib.resources.files("ratebudget.stores") / "lua" / "decide.lua"
)

#: the global hash of registered limiters: name -> JSON spec
REGISTRY_KEY: Final = "ratebudget:limiters"

_EXACT: Final = 2**53
# room for a debt of three bursts (or a cap's usage up to 4x its limit)
_HEADROOM: Final = 4
# a period's usage counter names its period: old periods simply age out
_PERIOD_TTL_MS: Final = 400 * 86_400 * 1000
# a limiter's keys outlive its last write by this much at least (the script
# keeps them longer while leases, their records or a bucket's debt remain)
_IDLE_TTL_MS: Final = 3_600_000
# settles publish {<name>}:wake this long after an acquire was "blocked"
_WAKE_US: Final = 60_000_000
_PLANS_KEPT: Final = 64
_KINDS: Final = frozenset(
    ("acquire", "settle", "extend", "record", "snapshot", "reset")
)

_script_text: str | None = None
_script_sha: str | None = None


def _script() -> tuple[str, str]:
    global _script_text, _script_sha
    if _script_text is None or _script_sha is None:
        text = SCRIPT_PATH.read_text(encoding="utf-8")
        _script_sha = hashlib.sha1(
            text.encode("utf-8"), usedforsecurity=False
        ).hexdigest()
        _script_text = text
    return _script_text, _script_sha


def _decode(value: Any) -> Any:
    """A script reply as ``_core.run`` returns it: bytes become str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _redact(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


class RedisStore(Store):
    """Limiter state in Redis: ``RedisStore("redis://localhost:6379/0")``.

    ``timeout`` (seconds) bounds connecting and every call; ``client`` is an
    existing sync ``redis.Redis`` to use instead of ``url`` (``close`` then
    leaves its connections alone).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        timeout: float = 2.0,
        client: redis.Redis | None = None,
    ) -> None:
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise InvalidRequest(f"timeout={timeout!r}: expected seconds > 0")
        try:
            import redis as redis_py
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise InvalidRequest(
                "RedisStore needs the redis client: pip install 'ratebudget[redis]'"
            ) from None
        self.url = _redact(url)
        self.timeout = float(timeout)
        self._errors: type[Exception] = redis_py.exceptions.RedisError
        self._noscript: type[Exception] = redis_py.exceptions.NoScriptError
        self._response_error: type[Exception] = redis_py.exceptions.ResponseError
        self._owned = client is None
        if client is None:
            client = redis_py.Redis.from_url(
                url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        self._redis: redis.Redis = client
        self._lock = threading.Lock()
        # plans seen, by identity: id -> (the plan, kept alive; its JSON)
        self._plans: dict[int, tuple[Plan, str]] = {}
        self._volatile: bool | None = None  # None: not checked yet, or unknown
        # wake-ups: one listener thread per store, started by the first subscriber
        self._wake_lock = threading.Lock()
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._listener: threading.Thread | None = None
        self._closing = threading.Event()

    # -- the interface ------------------------------------------------------

    def register(self, name: str, spec: dict[str, Any]) -> list[str]:
        try:
            self._redis.hset(REGISTRY_KEY, name, json.dumps(spec))
            with self._lock:  # once per store object
                if self._volatile is None:
                    self._volatile = self._check_volatile()
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        has_cap = any(x.get("kind") == "cap" for x in spec.get("limits", ()))
        if self._volatile and has_cap:
            return [
                f"Redis at {self.url} persists nothing (appendonly no, save ''): "
                f"limiter {name!r}'s cap usage lives only in memory and is lost "
                "if Redis restarts; set 'appendonly yes' to keep budgets"
            ]
        return []

    def _check_volatile(self) -> bool:
        """Whether Redis keeps nothing across a restart (False if unknown)."""
        try:
            aof = self._redis.config_get("appendonly")
            save = self._redis.config_get("save")
        except self._response_error:  # CONFIG not permitted (managed Redis)
            return False
        aof_value = {_text(k): _text(v) for k, v in aof.items()}.get("appendonly")
        save_value = {_text(k): _text(v) for k, v in save.items()}.get("save")
        return aof_value == "no" and save_value == ""

    def limiters(self) -> dict[str, dict[str, Any]]:
        try:
            got = self._redis.hgetall(REGISTRY_KEY)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        return {_text(k): json.loads(_text(v)) for k, v in sorted(got.items())}

    def subscribe(self, name: str, callback: Callable[[], None]) -> bool:
        with self._wake_lock:
            self._callbacks.setdefault(f"{{{name}}}:wake", []).append(callback)
            if self._listener is None or not self._listener.is_alive():
                self._closing.clear()
                self._listener = threading.Thread(
                    target=self._listen, name="ratebudget-redis-wake", daemon=True
                )
                self._listener.start()
        return True

    def _listen(self) -> None:
        """Relay ``{name}:wake`` messages to subscribers; reconnect on errors."""
        while not self._closing.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.psubscribe("{*}:wake")
                while not self._closing.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    channel = _text(message.get("channel"))
                    with self._wake_lock:
                        callbacks = list(self._callbacks.get(channel, ()))
                    for callback in callbacks:
                        try:
                            callback()
                        except Exception:  # a subscriber's loop has closed
                            pass
            except self._errors:
                # blocked callers still poll: retry the subscription shortly
                self._closing.wait(min(self.timeout, 1.0))
            finally:
                try:
                    pubsub.close()
                except self._errors:
                    pass

    def close(self) -> None:
        self._closing.set()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=self.timeout + 1)
        self._listener = None
        if self._owned:
            self._redis.connection_pool.disconnect()

    def validate(self, plan: Plan) -> None:
        """Refuse a plan the script's double arithmetic could not keep exact."""
        for p in plan.slots:
            if isinstance(p, RateP):
                if p.cap * _HEADROOM > _EXACT or p.rate > _EXACT:
                    raise InvalidRequest(
                        f"rate {p.key!r}: its burst ({p.cap} units x period) "
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

    def _plan_json(self, plan: Plan) -> str:
        got = self._plans.get(id(plan))
        if got is not None and got[0] is plan:
            return got[1]
        self.validate(plan)
        text = json.dumps(plan.to_json(), separators=(",", ":"))
        with self._lock:
            if len(self._plans) >= _PLANS_KEPT:  # plans made afresh per call
                self._plans.clear()
            self._plans[id(plan)] = (plan, text)
        return text

    def execute(
        self,
        name: str,
        plan: Plan,
        ops: list[list[Any]],
        *,
        keep_us: int,
        now_us: int | None = None,
    ) -> list[list[Any]]:
        if not name:
            raise InvalidRequest("a Redis limiter needs a non-empty name")
        if now_us is not None and now_us < 0:
            raise InvalidRequest(f"now_us={now_us}: store time starts at 0")
        plan_json = self._plan_json(plan)
        for op in ops:
            if op[0] not in _KINDS:
                raise ValueError(f"unknown store operation {op[0]!r}")
        tag = "{" + name + "}"
        used: dict[str, int] = {}
        for op in ops:
            for p, period in zip(plan.slots, periods_of_op(op), strict=False):
                if isinstance(p, CapP):
                    used.setdefault(
                        f"{p.key}|{period}", -1 if period == "" else _PERIOD_TTL_MS
                    )
        keys = [f"{tag}:s", f"{tag}:l", f"{tag}:e", f"{tag}:t"]
        keys.extend(f"{tag}:u:{k}" for k in used)
        doc = (
            '{"plan":'
            + plan_json
            + ',"ops":'
            + json.dumps(ops, separators=(",", ":"))
            + ',"used":'
            + json.dumps(list(used.items()), separators=(",", ":"))
            + f',"keep":{int(keep_us)},"now":{-1 if now_us is None else int(now_us)}'
            + f',"idle":{_IDLE_TTL_MS},"wake":{_WAKE_US}}}'
        )
        text, sha = _script()
        try:
            try:
                reply = self._redis.evalsha(sha, len(keys), *keys, doc)
            except self._noscript:
                reply = self._redis.eval(text, len(keys), *keys, doc)
        except self._errors as e:
            raise StoreUnavailable(f"Redis store {self.url}: {e}") from e
        out: list[list[Any]] = _decode(reply)
        return out
