"""Store calls from event loops: worker threads and coalescing.

Store calls are blocking; each event loop's run on a worker thread of its
own, which hands the answers back to the loop, so they work on asyncio and
trio alike and no caller has to stay to collect an answer (any cancellation
just stops its wait). Calls from the tasks of one event loop are
*coalesced*: the first caller's operation goes at once; calls that arrive
while one is on its way queue up and go together, in arrival order, in the
next call (group commit). So one caller alone pays one round trip and no
added wait, and many callers share round trips.
"""

from __future__ import annotations

import logging
import queue
import threading
from asyncio import _get_running_loop as _running_loop
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import anyio
import anyio.lowlevel

from .._exceptions import StoreUnavailable
from . import _ops as ops
from ._base import Call

if TYPE_CHECKING:
    from asyncio import Future

__all__ = ("Coalescer", "RemoteCall", "busy")

T = TypeVar("T")

_WORKER_IDLE: Final = 10.0  # s: a store worker thread this idle exits

logger: Final = logging.getLogger("ratebudget")

# store calls under way in this process (for tests that let fake time
# settle): one item each, appended when it starts and popped when it ends
# (each a single call, atomic without a lock, from any thread)
_busy: list[None] = []


def busy() -> bool:
    """Whether any store call of this process is under way."""
    return bool(_busy)


class RemoteCall(Call[T], Generic[T]):
    """One op for a shared store, and what its answer means to the caller."""

    __slots__ = ("calls", "finish", "key", "leave", "op", "unavailable")

    def __init__(
        self,
        calls: Coalescer,
        op: ops.Op,
        finish: Callable[[ops.Result, ops.Answer], T],
        unavailable: Callable[[StoreUnavailable], T] | None = None,
        leave: Callable[[ops.Result], ops.Op | None] | None = None,
        key: str = "",
    ) -> None:
        self.calls = calls
        self.op = op
        self.finish = finish  # the answer, given the whole batch's (its times)
        self.unavailable = unavailable  # fail open: what to answer instead
        self.leave = leave  # its caller left: what to send when it lands
        self.key = key

    def __await__(self) -> Generator[Any, None, T]:
        return self.calls.run(self).__await__()

    def wait(self) -> T:
        """Run it here, blocking (the sync facade)."""
        c = self.calls
        try:
            answer = c.execute([self.op])
        except StoreUnavailable as e:
            if self.unavailable is None or not c.fail_open(e, self.op):
                raise
            return self.unavailable(e)
        return self.finish(answer.results[0], answer)


class _Pending:
    """One op on its way, for one caller of one event loop."""

    __slots__ = ("abandoned", "answer", "call", "done", "error", "event", "result")

    def __init__(self, call: RemoteCall[Any]) -> None:
        self.call = call
        self.event: Any = None
        self.done = False
        self.abandoned = False
        self.result: Any = None
        self.answer: ops.Answer | None = None
        self.error: BaseException | None = None


class _Worker:
    """A thread that runs one event loop's store calls, one at a time.

    It hands each answer back to the loop itself, so no task has to stay to
    collect it: a caller cancelled in any way (an anyio scope, trio,
    ``asyncio.Task.cancel``) just stops waiting. It exits when idle.
    """

    __slots__ = ("alive", "lock", "queue")

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[..., None]]]
        self.queue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.alive = False

    def submit(self, work: Callable[[], Any], done: Callable[..., None]) -> None:
        with self.lock:
            self.queue.put((work, done))
            if not self.alive:
                self.alive = True
                threading.Thread(
                    target=self._run, name="ratebudget-store", daemon=True
                ).start()

    def _run(self) -> None:
        while True:
            try:
                work, done = self.queue.get(timeout=_WORKER_IDLE)
            except queue.Empty:
                with self.lock:
                    if self.queue.empty():
                        self.alive = False
                        return
                continue
            try:
                result = work()
            except BaseException as e:  # delivered to the callers
                done(None, e)
            else:
                done(result, None)


class _Batcher:
    """The calls of one event loop: waiting to go, or on their way."""

    __slots__ = ("asyncio", "hot", "loop", "pending", "running", "soon", "worker")

    def __init__(
        self, loop: object, soon: Callable[[Callable[[], object]], object]
    ) -> None:
        self.loop = loop  # the event loop (asyncio) or trio token it serves
        self.asyncio = loop is _running_loop()  # an asyncio loop
        self.soon = soon  # run a callback in that loop, from any thread
        self.pending: list[_Pending] = []
        self.running = False  # a store call is on its way
        self.hot = False  # the last call carried several: more are coming
        self.worker = _Worker()


def _loop_and_soon() -> tuple[object, Callable[[Callable[[], object]], object]]:
    loop = _running_loop()
    if loop is not None:
        return loop, loop.call_soon_threadsafe
    token = anyio.lowlevel.current_token()
    native = token.native_token
    soon = getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon  # type: ignore[attr-defined]
    return native, soon


class _FutureEvent:
    """An event for one caller of an asyncio loop: a bare future."""

    __slots__ = ("fut",)

    def __init__(self, fut: Future[None]) -> None:
        self.fut = fut

    def set(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)

    def wait(self) -> Future[None]:
        return self.fut


def _event() -> Any:
    loop = _running_loop()
    if loop is not None:
        return _FutureEvent(loop.create_future())
    return anyio.Event()


class Coalescer:
    """One binding's store calls, coalesced per event loop.

    ``execute`` runs a batch (blocking); ``defer`` keeps an op for the next
    batch (a grant whose caller left, given back); ``fail_open`` says
    whether to go on without the store after a ``StoreUnavailable``.
    """

    def __init__(
        self,
        execute: Callable[[list[ops.Op]], ops.Answer],
        defer: Callable[[ops.Op], None],
        fail_open: Callable[[StoreUnavailable, ops.Op], bool],
        send: Callable[
            [list[ops.Op], Callable[[ops.Answer | None, BaseException | None], None]],
            bool,
        ]
        | None = None,
    ) -> None:
        self.execute = execute
        self.send = send  # the same without blocking, from the loop, if it can
        self.defer = defer
        self.fail_open = fail_open
        self._local = threading.local()
        self.calls: list[None] = []  # store calls under way (as ``_busy``)

    def _start(self) -> None:
        """Count a store call under way (several event loops' threads do)."""
        self.calls.append(None)
        _busy.append(None)

    def _end(self) -> None:
        self.calls.pop()
        _busy.pop()

    def _batcher(self) -> _Batcher:
        b: _Batcher | None = getattr(self._local, "batcher", None)
        loop, soon = _loop_and_soon()
        if b is None or b.loop is not loop:
            # this thread's first call, or a new event loop in it
            b = self._local.batcher = _Batcher(loop, soon)
        return b

    async def run(self, call: RemoteCall[T]) -> T:
        """Run ``call``, coalesced with the other calls of this event loop."""
        self._start()
        try:
            return await self._run_batched(call)
        finally:
            self._end()

    async def _run_batched(self, call: RemoteCall[T]) -> T:
        b = self._batcher()
        p = _Pending(call)
        p.event = event = _event()
        b.pending.append(p)
        if not b.running:
            b.running = True
            if b.hot:
                # a call of several just came back and its callers are about
                # to call again: let them queue first, so they go together
                # (a caller alone never waits for company: it goes at once)
                b.hot = False
                b.soon(lambda: self._guarded(b, [], self._flush, b))
            else:
                self._flush(b)
        try:
            await event.wait()
        except BaseException:
            if p.done:  # answered as it left
                if p.error is None and call.leave is not None:
                    follow = call.leave(p.result)
                    if follow is not None:
                        self.defer(follow)
            elif p in b.pending and call.leave is not None:
                b.pending.remove(p)  # not sent: it never happened
            else:  # on its way (or a settle, sent all the same)
                p.abandoned = True
            raise
        if p.error is not None:
            if (
                isinstance(p.error, StoreUnavailable)
                and call.unavailable is not None
                and self.fail_open(p.error, call.op)
            ):
                return call.unavailable(p.error)
            raise p.error
        assert p.answer is not None
        return call.finish(p.result, p.answer)

    def _flush(self, b: _Batcher) -> None:
        """Send what is pending in one store call (in the loop's thread)."""
        batch, b.pending = b.pending, []
        if not batch:
            b.running = False
            return
        todo = [p.call.op for p in batch]
        self._start()

        def landed(answer: ops.Answer | None, error: BaseException | None) -> None:
            # in the worker thread: the call is done (counted here, not in the
            # loop, which may stop before it runs what it is handed)
            self._end()
            try:  # hand the answers to the loop
                b.soon(
                    lambda: self._guarded(
                        b, batch, self._deliver, b, batch, answer, error
                    )
                )
            except RuntimeError:  # the loop has closed: nobody is waiting
                self._orphaned(batch, answer)

        if self.send is not None and b.asyncio:

            def answered(
                answer: ops.Answer | None, error: BaseException | None
            ) -> None:
                self._end()  # in the loop: it answered here
                self._guarded(b, batch, self._deliver, b, batch, answer, error)

            if self.send(todo, answered):
                return
        b.worker.submit(lambda: self.execute(todo), landed)

    def _deliver(
        self,
        b: _Batcher,
        batch: list[_Pending],
        answer: ops.Answer | None,
        error: BaseException | None,
    ) -> None:
        """A store call came back: wake its callers, send what queued meanwhile."""
        if answer is None:
            for p in batch:
                p.error = (
                    error
                    if isinstance(error, Exception)
                    else StoreUnavailable(f"the store call was interrupted: {error!r}")
                )
        else:
            for p, r in zip(batch, answer.results, strict=True):
                p.result = r
                p.answer = answer
                if p.abandoned and p.call.leave is not None:
                    # its caller left while the answer was on its way
                    follow = p.call.leave(r)
                    if follow is not None:
                        b.pending.append(_Pending(RemoteCall(self, follow, _ignore)))
        for p in batch:
            p.done = True
            if p.event is not None:
                p.event.set()
        b.hot = len(batch) > 1
        if not b.pending:
            b.running = False
        elif b.hot:
            b.soon(lambda: self._guarded(b, [], self._flush, b))
        else:
            self._flush(b)

    def _guarded(
        self, b: _Batcher, batch: list[_Pending], fn: Callable[..., None], *args: Any
    ) -> None:
        """Run ``fn`` in the loop; if it fails (a bug), its callers hear of
        it, not the event loop (trio would stop with ``TrioInternalError``,
        asyncio would log it and leave the callers waiting for ever)."""
        try:
            fn(*args)
        except BaseException as e:
            logger.exception("ratebudget: handing a store call to its callers failed")
            failed, b.pending = [*batch, *b.pending], []
            b.running = False
            for p in failed:
                if not p.done:
                    p.error = StoreUnavailable(
                        f"ratebudget could not hand over the store's answer: {e!r}"
                    )
                    p.error.__cause__ = e
                    p.done = True
                    if p.event is not None:
                        p.event.set()
            if not isinstance(e, Exception):
                raise

    def _orphaned(self, batch: list[_Pending], answer: ops.Answer | None) -> None:
        """A call landed after its event loop closed (in the worker thread):
        nobody waits for it, but what its callers left behind goes back."""
        if answer is None:
            return
        follow = [
            op
            for p, r in zip(batch, answer.results, strict=True)
            if p.call.leave is not None and (op := p.call.leave(r)) is not None
        ]
        if follow:
            try:
                self.execute(follow)
            except StoreUnavailable:  # they expire after the lease TTL
                pass

    def flush_soon(self) -> None:
        """Send the deferred ops now, without waiting for another call."""
        try:
            b = self._batcher()
        except Exception:  # no event loop: a thread; send it now, ignore failures
            try:
                self.execute([])
            except StoreUnavailable:
                pass
            return
        # an op of no effect carries them: at once, or right after the call
        # now on its way (which left before they were deferred)
        b.pending.append(_Pending(RemoteCall(self, ops.Snapshot(), _ignore)))
        if not b.running:
            b.running = True
            self._flush(b)


def _ignore(r: ops.Result, answer: ops.Answer) -> None:
    return None
