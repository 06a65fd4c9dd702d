"""A Redis store's script call: what it carries, and what its reply says.

Each batch of decisions is one ``EVALSHA`` of ``lua/decide.lua``, the Lua
mirror of the decision core (``_decide.py``, ``_ops.run`` and the document
of ``_state.py``): its keys (a name's three, or each level's down a path,
and a tree's ledger stream when the batch carries rows), ARGV[1] (the
batch as JSON), and for acquisitions on a plan of rates alone the script's
hot path arguments (ARGV[2...], plain strings). What a plan needs is made
once per plan (``_PlanArgs``), and a call's RESP from parts made once.

Lua knows no time zones: each call sends, for every calendar cap of its
plan, the periods around the client's wall clock (``_state.windows_around``),
and the script rolls a counter into the one holding the store's time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import re
import time
from typing import Any, Final, cast

from .._exceptions import InvalidRequest, StoreUnavailable
from .._plan import CapSpec, PlanSpec, RateSpec, _tz_name
from . import _ops as ops
from ._codec import book_text, decode_result, decode_shadowed, encode_op
from ._path_ops import pack, unpack
from ._redis_link import bulk as _bulk
from ._state import _kind, _plan_doc, plan_id, windows_around

__all__ = ("SCRIPT_PATH", "ScriptArgs")

#: the script every batch runs
SCRIPT_PATH: Final = (
    importlib.resources.files("ratebudget.stores") / "lua" / "decide.lua"
)

# what JSON escapes in a key (the script's '[%c"\\]')
_ESCAPED: Final = re.compile(r'[\x00-\x1f\x7f"\\]')

# a limiter's keys outlive its last write by this much (plus the lease TTL)
_IDLE_TTL_MS: Final = 3_600_000
# the state of a name whose calendar caps still count something is kept this
# long after its last change (a lifetime cap's usage is kept for good)
_USAGE_KEPT_MS: Final = 400 * 86_400 * 1000


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


class ScriptArgs:
    """The half of ``RedisStore`` that writes its script calls and reads
    their replies (a base with no state but its caches of plans and keys)."""

    url: str
    _sharded: bool | None  # sharded pub/sub: the script SPUBLISHes
    _plans: dict[int, _PlanArgs]  # by id(spec)
    _path_keys: dict[str, tuple[str, tuple[str, ...]]]  # label -> (root, keys)
    _resp_keys: dict[str, bytes]  # a name's keys, as RESP

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
_SHARD: Final = ',"shard":true'  # ARGV[1]'s field: wake-ups by SPUBLISH
_PLANS_KEPT: Final = 256
