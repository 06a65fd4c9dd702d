"""Every rate limiter behind one shape, so one harness runs them all alike.

``peers()`` lists ratebudget and each peer library that imports (ratebudget
first); ``baselines()`` the reference points of the uncontended benchmark.
A ``Peer`` builds an ``Acquirer`` (``await acq.acquire(n)`` waits until ``n``
units are granted, however the library waits) from a rate in units per second
and a burst in units, configured as close as the library allows to "refill
``rate``/s up to ``burst``"; ``cannot`` says where it falls short. ``hot``
gives the idiomatic per-call ``async with`` for the uncontended micro-benchmark
and ``sync`` a blocking, thread-safe ``acquire(n)`` where the library has one.

Everything below was checked against the installed sources: aiolimiter 1.3,
pyrate-limiter 4.5, limits 5.8, throttled-py 3.5 and anyio 4.16. Each library
is imported lazily, so a missing one just drops its peer.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Final, Protocol

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter
    from limits import RateLimitItem
    from limits.aio.strategies import MovingWindowRateLimiter
    from pyrate_limiter import AbstractBucket
    from pyrate_limiter import Limiter as PyrateLimiter
    from throttled.asyncio import Throttled

    from ratebudget import Limiter

__all__ = ("Acquirer", "HotFactory", "Peer", "baselines", "peers")

BOTH: Final = ("asyncio", "trio")
ASYNCIO: Final = ("asyncio",)

KEY: Final = "bench"
"""The one key every keyed library limits on."""

PYRATE_BUFFER_MS: Final = 1
"""pyrate-limiter pads each computed wait by ``buffer_ms`` (default 50 ms, for
clock drift between hosts); in one process 1 ms is enough and fairer."""

POLL_MIN: Final = 0.001
"""The shortest sleep of the polling loop written for ``limits``."""


class Acquirer(Protocol):
    async def acquire(self, n: int = 1) -> None:
        """Wait until n units are granted (however the library waits)."""


HotFactory = Callable[[], AbstractAsyncContextManager[object]]
"""Zero-argument factory of one uncontended ``async with`` for 1 unit."""


@dataclass(frozen=True)
class Peer:
    name: str
    """Short display name."""
    backends: tuple[str, ...]
    """Of ``("asyncio", "trio")``, those it was seen to work on."""
    cannot: str
    """One line: what it cannot express or do, compared with ratebudget."""
    make: Callable[[float, int], Acquirer]
    """(rate in units/s, burst in units) -> acquirer; call inside a running loop."""
    hot: Callable[[Acquirer], HotFactory] | None
    """Given ``make(1e12, 10**12)``: the idiomatic per-call ``async with``."""
    sync: Callable[[float, int], Callable[[int], None]] | None
    """A blocking, thread-safe ``acquire(n)`` for plain threads, if offered."""
    limits_rate: bool = True
    """False for a reference that is no rate limiter (run only where it means
    something: the uncontended and contended workloads)."""


# -- helpers ------------------------------------------------------------------


def _ratio(rate: float, burst: int) -> tuple[int, int]:
    """``rate`` as ``limit`` units per ``seconds`` whole seconds, both ints.

    Exact for integral rates (``limit = rate``, ``seconds = 1``); others are
    approximated with a denominator of at most 10**6 seconds.
    """
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"burst={burst!r}: expected an int >= 1")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate={rate!r}: expected a finite rate > 0")
    frac = Fraction(rate).limit_denominator(10**6)
    if frac.numerator == 0:
        raise ValueError(f"rate={rate!r}: too slow to express")
    return frac.numerator, frac.denominator


def _too_big(name: str, n: int, most: int) -> ValueError:
    return ValueError(f"{name}: {n} units can never be granted (at most {most})")


class _Enter:
    """The thinnest ``async with`` around one awaited call that returns a bool.

    Stateless, so one instance serves every ``async with``; a ``False`` (not
    granted) raises, so a wrongly configured run cannot pass silently.
    """

    __slots__ = ("_call",)

    def __init__(self, call: Callable[[], Awaitable[bool]]) -> None:
        self._call = call

    async def __aenter__(self) -> None:
        if not await self._call():
            raise RuntimeError("not granted")

    async def __aexit__(self, *exc: object) -> None:
        return None


# -- ratebudget ---------------------------------------------------------------


def _ratebudget_limiter(rate: float, burst: int, store: str | None = None) -> Limiter:
    from ratebudget import Limiter, Rate

    limit, seconds = _ratio(rate, burst)
    if store is None:
        return Limiter(Rate(tokens=limit, per=seconds, burst=burst))
    name = f"bench-{uuid.uuid4().hex}"  # a fresh bucket per run
    return Limiter(Rate(tokens=limit, per=seconds, burst=burst), store=store, name=name)


class _RateBudget:
    __slots__ = ("limiter",)

    def __init__(self, rate: float, burst: int, store: str | None = None) -> None:
        self.limiter = _ratebudget_limiter(rate, burst, store)

    async def acquire(self, n: int = 1) -> None:
        async with self.limiter.acquire(n):
            pass


def _ratebudget_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _RateBudget)
    limiter = acq.limiter
    return lambda: limiter.acquire(1)


def _ratebudget_sync(rate: float, burst: int) -> Callable[[int], None]:
    sync = _ratebudget_limiter(rate, burst).sync

    def acquire(n: int = 1) -> None:
        with sync.acquire(n):
            pass

    return acquire


def _ratebudget() -> Peer:
    import ratebudget  # noqa: F401

    return Peer(
        name="ratebudget",
        backends=BOTH,
        cannot=(
            "(the reference) FIFO token bucket with timeouts on asyncio and trio "
            "and a sync facade; rejects n above burst; each grant also counts "
            "1 request"
        ),
        make=_RateBudget,
        hot=_ratebudget_hot,
        sync=_ratebudget_sync,
    )


def ratebudget_on(store: str, label: str) -> Peer:
    """ratebudget on a shared store (``store``: its URL), as another peer."""
    return Peer(
        name=f"ratebudget ({label})",
        backends=BOTH,
        cannot="(the reference) on a store shared by processes",
        make=lambda rate, burst: _RateBudget(rate, burst, store),
        hot=None,
        sync=None,
    )


# -- aiolimiter ---------------------------------------------------------------


class _AioLimiter:
    __slots__ = ("limiter",)

    def __init__(self, rate: float, burst: int) -> None:
        from aiolimiter import AsyncLimiter

        _ratio(rate, burst)
        # capacity max_rate, draining at max_rate / time_period per second
        self.limiter: AsyncLimiter = AsyncLimiter(burst, burst / rate)

    async def acquire(self, n: int = 1) -> None:
        await self.limiter.acquire(n)


def _aiolimiter_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _AioLimiter)
    limiter = acq.limiter
    return lambda: limiter


def _aiolimiter() -> Peer:
    import aiolimiter  # noqa: F401

    return Peer(
        name="aiolimiter",
        backends=ASYNCIO,
        cannot=(
            "asyncio only (asyncio.get_running_loop: fails on trio); no timeout arg; "
            "waiters are a min-heap on amount, so small requests overtake large "
            "ones (not FIFO); no sync API; AsyncLimiter(burst, burst/rate)"
        ),
        make=_AioLimiter,
        hot=_aiolimiter_hot,
        sync=None,
    )


# -- pyrate-limiter (v4) --------------------------------------------------------


def _pyrate_window_bucket(rate: float, burst: int) -> AbstractBucket:
    from pyrate_limiter import InMemoryBucket, Rate

    _ratio(rate, burst)
    # a sliding-window log: `burst` per `burst / rate`, in whole milliseconds;
    # below 1 ms the window is 1 ms and its limit rate * 1 ms (the burst grows)
    window_ms = max(1, round(burst * 1000 / rate))
    limit = max(1, round(rate * window_ms / 1000))
    return InMemoryBucket([Rate(limit, window_ms)])


def _pyrate_state_bucket(rate: float, burst: int) -> AbstractBucket:
    from pyrate_limiter import InMemoryStateStore, Rate, StateBucket, TokenBucket

    limit, seconds = _ratio(rate, burst)
    return StateBucket(
        [Rate(limit, seconds * 1000, burst=burst)],
        algorithm=TokenBucket(),
        store=InMemoryStateStore(),
    )


class _Pyrate:
    __slots__ = ("limiter",)

    def __init__(self, bucket: AbstractBucket) -> None:
        from pyrate_limiter import Limiter

        self.limiter: PyrateLimiter = Limiter(bucket, buffer_ms=PYRATE_BUFFER_MS)

    async def acquire(self, n: int = 1) -> None:
        # False only when n can never fit (it would otherwise wait on)
        if not await self.limiter.try_acquire_async(KEY, n):
            raise ValueError(f"pyrate-limiter: {n} units can never be granted")


def _pyrate_window(rate: float, burst: int) -> Acquirer:
    return _Pyrate(_pyrate_window_bucket(rate, burst))


def _pyrate_state(rate: float, burst: int) -> Acquirer:
    return _Pyrate(_pyrate_state_bucket(rate, burst))


def _pyrate_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _Pyrate)
    try_acquire_async = acq.limiter.try_acquire_async

    async def call() -> bool:
        return await try_acquire_async(KEY, 1)

    enter = _Enter(call)
    return lambda: enter


def _pyrate_sync(
    bucket: Callable[[float, int], AbstractBucket],
) -> Callable[[float, int], Callable[[int], None]]:
    def make(rate: float, burst: int) -> Callable[[int], None]:
        from pyrate_limiter import Limiter

        limiter = Limiter(bucket(rate, burst), buffer_ms=PYRATE_BUFFER_MS)

        def acquire(n: int = 1) -> None:
            # blocking=True: sleeps (time.sleep) and retries until it fits
            if limiter.try_acquire(KEY, n) is not True:
                raise ValueError(f"pyrate-limiter: {n} units can never be granted")

        return acquire

    return make


_PYRATE_COMMON: Final = (
    "asyncio only (try_acquire_async takes an asyncio.Lock and sleeps with "
    "asyncio.sleep: fails on trio); waits by sleeping the computed delay + "
    "buffer_ms (set to 1, default 50) and retrying, all async waiters queued "
    "on that one lock; each Limiter starts a daemon leaker thread; no async CM "
    "(thin wrapper for hot)"
)


def _pyrate_peers() -> list[Peer]:
    import pyrate_limiter  # noqa: F401

    return [
        Peer(
            name="pyrate-limiter (in-memory)",
            backends=ASYNCIO,
            cannot=(
                "no token bucket: sliding-window log of `burst` per burst/rate "
                "(whole ms, >= 1 ms), one stored entry per unit; " + _PYRATE_COMMON
            ),
            make=_pyrate_window,
            hot=_pyrate_hot,
            sync=_pyrate_sync(_pyrate_window_bucket),
        ),
        Peer(
            name="pyrate-limiter (token bucket)",
            backends=ASYNCIO,
            cannot=(
                "StateBucket(TokenBucket) = GCRA in integer us over a ms clock "
                "(caps rate at 1e6/s); " + _PYRATE_COMMON
            ),
            make=_pyrate_state,
            hot=_pyrate_hot,
            sync=_pyrate_sync(_pyrate_state_bucket),
        ),
    ]


# -- limits ---------------------------------------------------------------------


def _limits_item(rate: float, burst: int) -> RateLimitItem:
    from limits import RateLimitItemPerSecond

    _ratio(rate, burst)
    # windows are whole seconds: `burst` per burst/rate when that is >= 1 s,
    # else the rate over 1 s (the burst grows to rate * 1 s)
    seconds = max(1, round(burst / rate))
    return RateLimitItemPerSecond(max(1, round(rate * seconds)), seconds)


class _Limits:
    __slots__ = ("item", "strategy")

    def __init__(self, rate: float, burst: int) -> None:
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self.item = _limits_item(rate, burst)
        self.strategy: MovingWindowRateLimiter = MovingWindowRateLimiter(
            MemoryStorage()
        )

    async def acquire(self, n: int = 1) -> None:
        item, strategy = self.item, self.strategy
        if n > item.amount:  # hit() would refuse it forever
            raise _too_big("limits", n, item.amount)
        while not await strategy.hit(item, KEY, cost=n):
            reset, _ = await strategy.get_window_stats(item, KEY)
            await anyio.sleep(max(reset - time.time(), POLL_MIN))


def _limits_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _Limits)
    item, hit = acq.item, acq.strategy.hit

    async def call() -> bool:
        return await hit(item, KEY)

    enter = _Enter(call)
    return lambda: enter


def _limits_sync(rate: float, burst: int) -> Callable[[int], None]:
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    item = _limits_item(rate, burst)
    strategy = MovingWindowRateLimiter(MemoryStorage())

    def acquire(n: int = 1) -> None:
        if n > item.amount:
            raise _too_big("limits", n, item.amount)
        while not strategy.hit(item, KEY, cost=n):
            reset, _ = strategy.get_window_stats(item, KEY)
            time.sleep(max(reset - time.time(), POLL_MIN))

    return acquire


def _limits() -> Peer:
    import limits  # noqa: F401

    return Peer(
        name="limits (moving window, polling)",
        backends=ASYNCIO,
        cannot=(
            "no token bucket and no waiting: moving window in whole seconds "
            "(max(burst, rate x 1 s) per max(1, burst/rate) s) polled with "
            "hit() + sleep to get_window_stats reset; aio MemoryStorage spawns "
            "asyncio tasks (fails on trio); one entry per unit inserted at the "
            "list head; no FIFO; no async CM (thin wrapper for hot)"
        ),
        make=_Limits,
        hot=_limits_hot,
        sync=_limits_sync,
    )


# -- throttled-py ---------------------------------------------------------------


class _Throttled:
    __slots__ = ("burst", "throttle")

    def __init__(self, using: str, rate: float, burst: int) -> None:
        from throttled.asyncio import MemoryStore, Throttled, per_duration

        limit, seconds = _ratio(rate, burst)
        self.burst = burst
        # a private store: the default is one global store shared by all
        self.throttle: Throttled = Throttled(
            key=KEY,
            timeout=math.inf,  # wait (poll) for as long as it takes
            using=using,
            quota=per_duration(timedelta(seconds=seconds), limit, burst),
            store=MemoryStore(),
        )

    async def acquire(self, n: int = 1) -> None:
        if n > self.burst:  # it would poll forever
            raise _too_big("throttled", n, self.burst)
        result = await self.throttle.limit(cost=n)
        if result.limited:
            raise RuntimeError("throttled: still limited after waiting")


def _throttled_make(using: str) -> Callable[[float, int], Acquirer]:
    return lambda rate, burst: _Throttled(using, rate, burst)


def _throttled_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _Throttled)
    throttle = acq.throttle
    return lambda: throttle


def _throttled_sync(using: str) -> Callable[[float, int], Callable[[int], None]]:
    def make(rate: float, burst: int) -> Callable[[int], None]:
        from throttled import MemoryStore, Throttled, per_duration

        limit, seconds = _ratio(rate, burst)
        throttle = Throttled(
            key=KEY,
            timeout=math.inf,
            using=using,
            quota=per_duration(timedelta(seconds=seconds), limit, burst),
            store=MemoryStore(),
        )

        def acquire(n: int = 1) -> None:
            if n > burst:
                raise _too_big("throttled", n, burst)
            if throttle.limit(cost=n).limited:
                raise RuntimeError("throttled: still limited after waiting")

        return acquire

    return make


_THROTTLED_COMMON: Final = (
    "asyncio only (waits with asyncio.sleep: fails on trio once it must wait, "
    "its uncontended path runs); waiters poll in sleeps of 0.2-0.5 s, never "
    "shorter, so under contention about `burst` pass per 0.2 s; no FIFO; "
    "n above burst polls forever (guarded here)"
)


def _throttled_peers() -> list[Peer]:
    from throttled import RateLimiterType

    return [
        Peer(
            name="throttled-py (GCRA)",
            backends=ASYNCIO,
            cannot="GCRA over time.monotonic; " + _THROTTLED_COMMON,
            make=_throttled_make(RateLimiterType.GCRA.value),
            hot=_throttled_hot,
            sync=_throttled_sync(RateLimiterType.GCRA.value),
        ),
        Peer(
            name="throttled-py (token bucket)",
            backends=ASYNCIO,
            cannot=(
                "refills in whole-second steps (int(time.time())) and rounds "
                "retry_after up to whole seconds: with burst < rate it passes "
                "about `burst` per second; " + _THROTTLED_COMMON
            ),
            make=_throttled_make(RateLimiterType.TOKEN_BUCKET.value),
            hot=_throttled_hot,
            sync=_throttled_sync(RateLimiterType.TOKEN_BUCKET.value),
        ),
    ]


# -- anyio.CapacityLimiter: the FIFO hand-off reference -----------------------------


class _Handoff:
    """One slot, held across a checkpoint so that every other task queues.

    Not a rate limiter: each grant is one FIFO hand-off from the holder to
    the next waiter, the least a fair limiter can do per grant.
    """

    __slots__ = ("cap",)

    def __init__(self, rate: float, burst: int) -> None:
        self.cap = anyio.CapacityLimiter(1)

    async def acquire(self, n: int = 1) -> None:
        async with self.cap:
            await anyio.lowlevel.checkpoint()


def _handoff_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _Handoff)
    cap = acq.cap
    return lambda: cap


def _handoff() -> Peer:
    return Peer(
        name="anyio.CapacityLimiter (FIFO hand-off)",
        backends=BOTH,
        cannot=(
            "not a rate limiter: CapacityLimiter(1) held across one checkpoint, "
            "so each grant is one FIFO hand-off: the reference for what a fair "
            "grant costs (no rate, so its wall time means nothing)"
        ),
        make=_Handoff,
        hot=_handoff_hot,
        sync=None,
        limits_rate=False,
    )


# -- baselines --------------------------------------------------------------------


class _Lock:
    __slots__ = ("lock",)

    def __init__(self, rate: float, burst: int) -> None:
        self.lock = anyio.Lock()

    async def acquire(self, n: int = 1) -> None:
        async with self.lock:
            pass


def _lock_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _Lock)
    lock = acq.lock
    return lambda: lock


class _Checkpoint:
    """``async with`` that awaits one ``anyio.lowlevel.checkpoint()``."""

    __slots__ = ()

    def __init__(self, rate: float = 0.0, burst: int = 0) -> None:
        pass

    async def acquire(self, n: int = 1) -> None:
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def __aexit__(self, *exc: object) -> None:
        return None


def _checkpoint_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _Checkpoint)
    return lambda: acq


class _InlineBucket:
    """The floor: a token bucket computed inline, with no lease, lock or wait."""

    __slots__ = ("burst", "last", "level", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.level, self.last = self.burst, time.monotonic()

    async def acquire(self, n: int = 1) -> None:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.last) * self.rate)
        self.last = now
        self.level -= n

    async def __aenter__(self) -> None:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.last) * self.rate)
        self.last = now
        self.level -= 1

    async def __aexit__(self, *exc: object) -> None:
        return None


def _inline_hot(acq: Acquirer) -> HotFactory:
    assert isinstance(acq, _InlineBucket)
    return lambda: acq


# -- the lists ----------------------------------------------------------------------


def peers() -> list[Peer]:
    """Every peer whose library imports; ratebudget first."""
    groups: list[Callable[[], Peer | list[Peer]]] = [
        _ratebudget,
        _aiolimiter,
        _pyrate_peers,
        _limits,
        _throttled_peers,
        _handoff,
    ]
    found: list[Peer] = []
    for group in groups:
        try:
            got = group()
        except ImportError:
            continue
        found.extend(got if isinstance(got, list) else [got])
    return found


def baselines() -> list[Peer]:
    """Reference points for the uncontended benchmark only (``make``/``hot``)."""
    return [
        Peer(
            name="anyio.Lock",
            backends=BOTH,
            cannot="not a rate limiter: an uncontended `async with anyio.Lock()`",
            make=_Lock,
            hot=_lock_hot,
            sync=None,
        ),
        Peer(
            name="anyio checkpoint",
            backends=BOTH,
            cannot=(
                "not a rate limiter: one `await anyio.lowlevel.checkpoint()` in "
                "`__aenter__`, the cost of yielding to the loop once"
            ),
            make=_Checkpoint,
            hot=_checkpoint_hot,
            sync=None,
        ),
        Peer(
            name="inline bucket (floor)",
            backends=BOTH,
            cannot=(
                "not a limiter: the token-bucket arithmetic inline (monotonic, "
                "min, subtract) with no lock, no wait and no checkpoint; never "
                "waits, so it over-grants"
            ),
            make=_InlineBucket,
            hot=_inline_hot,
            sync=None,
        ),
    ]
