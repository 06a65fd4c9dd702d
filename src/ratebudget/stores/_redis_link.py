"""A Redis connection of one asyncio event loop's own, driven by its selector.

A store call on a worker thread costs a hop to the thread and back, which a
caller alone pays in full. On an asyncio loop with a selector (Linux, macOS:
the default), ``RedisStore`` instead sends a script call from the loop itself
and reads its reply when the socket is readable (``loop.add_reader``), with
hiredis parsing it: no thread, no blocking. Calls of several limiters share
the link, pipelined (Redis answers in order).

A link connects without blocking the loop (the server's address is looked
up once, on a thread); until it is up, calls take the worker thread. A link that fails or times out fails the calls on it with
``StoreUnavailable`` and closes; the next call opens another. When the loop
shuts down (``asyncio.run``, ``anyio.run``: ``shutdown_asyncgens``), its link
fails what is still pending and closes its socket.

Plain TCP and Unix sockets only (TLS and other connection classes keep the
worker thread); AUTH and SELECT go first on a new link, pipelined.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import threading
import time
import weakref
from asyncio import _get_running_loop as _running_loop
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import StoreUnavailable

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop, TimerHandle

__all__ = ("Links",)

Done = Callable[[Any, "BaseException | None"], None]


def text(value: Any) -> str:
    """A reply's value as text (bytes, or text from a client made with
    ``decode_responses``)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def bulk(data: bytes) -> bytes:
    """``data`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def command(*args: bytes) -> bytes:
    """A RESP command."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


class _Link:
    """One loop's connection: requests pipelined, answered in order."""

    def __init__(
        self,
        loop: AbstractEventLoop,
        sock: socket.socket,
        hello: list[bytes],
        timeout: float,
        url: str,
        gone: Callable[[_Link], None],
    ) -> None:
        import hiredis

        self.loop = loop
        self.sock = sock
        self.timeout = timeout
        self.url = url
        self.gone = gone
        self.reader = hiredis.Reader()
        self.reply_error: type[Exception] = hiredis.ReplyError
        self.out = b"".join(hello)  # AUTH, SELECT: their replies come first
        self.skip = len(hello)
        self.fd = sock.fileno()
        # each call, and the loop time by which its reply is due
        self.pending: collections.deque[tuple[Done, float]] = collections.deque()
        self.sent_at = 0.0  # the loop time of the latest call
        self.buf = bytearray(_READ_SIZE)  # what a read lands in
        self.timer: TimerHandle | None = None  # for the oldest call
        self.closed = False
        self.ready = False  # connected
        self.reading = False
        self.writing = False
        self.guard: AsyncGenerator[None, None] | None = None

    def start(self, address: Any) -> bool:
        """Start connecting to ``address`` and hook the loop's shutdown;
        ``False`` if this loop cannot (no selector: the socket is closed)."""
        try:
            self.loop.add_writer(self.fd, self._connected)
        except (NotImplementedError, AttributeError, RuntimeError):
            self.sock.close()
            return False
        self.writing = True
        err = self.sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.fail(OSError(err, os.strerror(err)))
            return True
        guard = _closed_with_loop(self)
        try:  # run to its ``yield``: the loop's asyncgen hooks now know it
            guard.asend(None).send(None)
        except StopIteration:
            pass
        self.guard = guard  # the loop keeps it only weakly
        return True

    def send(self, request: bytes, done: Done) -> bool:
        """Send ``request``; ``done(reply, error)`` runs in the loop when its
        reply (or a failure) comes. ``False``: not sent (link closed)."""
        if self.closed or not self.ready:
            return False
        now = self.loop.time()
        if not self.pending and not self.skip and now - self.sent_at > _FRESH:
            # idle: anything to read means the server closed it (a restart):
            # not sent, the worker thread serves this call, a new link opens
            # (a call answered within _FRESH saw it open: no system call then)
            try:
                stale = self.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                stale = None
            except OSError as e:
                stale = str(e).encode()
            if stale is not None:
                self.fail(ConnectionError("the server closed the connection"))
                return False
        data = self.out + request
        self.out = b""
        if not self.writing:
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.out = data
                self.fail(e)
                return False
            data = data[n:]
        if data:
            self.out = data
            if not self.writing:
                self.writing = True
                self.loop.add_writer(self.fd, self._writable)
        self.sent_at = now
        self.pending.append((done, now + self.timeout))
        if self.timer is None:
            self.timer = self.loop.call_later(self.timeout, self._check_time)
        return True

    def _connected(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(OSError(err, os.strerror(err)))
            return
        self.ready = True
        self.loop.remove_writer(self.fd)
        self.writing = False
        # read for as long as it is open: a reply, or the server closing it
        self.reading = True
        self.loop.add_reader(self.fd, self._readable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail(e)
            return
        self.out = self.out[n:]
        if not self.out:
            self.writing = False
            self.loop.remove_writer(self.fd)

    def _readable(self) -> None:
        try:
            n = self.sock.recv_into(self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.fail(e)
            return
        if not n:
            self.fail(ConnectionError("the server closed the connection"))
            return
        # (hiredis reads any buffer: its stub names str and bytes alone)
        self.reader.feed(self.buf, 0, n)  # type: ignore[arg-type]
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if self.skip:  # AUTH's or SELECT's
                self.skip -= 1
                if isinstance(reply, self.reply_error):
                    self.fail(reply)
                    return
                continue
            if not self.pending:
                self.fail(ConnectionError("a reply nobody asked for"))
                return
            done = self.pending.popleft()[0]
            done(reply, None)
            if self.closed:
                return

    def _check_time(self) -> None:
        """The oldest call's reply is overdue: fail them all; else look
        again when it will be."""
        self.timer = None
        if not self.pending:
            return
        due = self.pending[0][1]
        if self.loop.time() >= due:
            self.fail(TimeoutError(f"no reply within {self.timeout:g} s"))
        else:
            self.timer = self.loop.call_at(due, self._check_time)

    def fail(self, error: BaseException) -> None:
        """Fail every call on the link (their fate in the store is unknown,
        as after any timeout) and close it."""
        if self.closed:
            return
        self.closed = True
        self.gone(self)
        try:
            if self.reading:
                self.loop.remove_reader(self.fd)
            if self.writing:
                self.loop.remove_writer(self.fd)
            if self.timer is not None:
                self.timer.cancel()
        except RuntimeError:  # the loop has closed
            pass
        self.sock.close()
        pending, self.pending = self.pending, collections.deque()
        for done, _ in pending:
            e = StoreUnavailable(f"Redis store {self.url}: {error}")
            e.__cause__ = error
            done(None, e)


async def _closed_with_loop(link: _Link) -> AsyncGenerator[None, None]:
    """Closes ``link`` when its loop shuts down (``loop.shutdown_asyncgens``)."""
    try:
        yield
    finally:
        link.fail(ConnectionError("its event loop shut down"))


class Links:
    """A store's links, one per asyncio event loop."""

    def __init__(
        self,
        address: tuple[str, int] | str,
        hello: list[bytes],
        timeout: float,
        url: str,
    ) -> None:
        self.address = address  # (host, port), or a Unix socket's path
        self.hello = hello
        self.timeout = timeout
        self.url = url
        self._lock = threading.Lock()
        self._links: weakref.WeakKeyDictionary[AbstractEventLoop, _Link]
        self._links = weakref.WeakKeyDictionary()
        self._unfit: weakref.WeakSet[AbstractEventLoop] = weakref.WeakSet()
        # what to connect to: (family, sockaddr), looked up once on a thread
        self._target: tuple[int, Any] | None = None
        self._looking = False
        self._retry_at = 0.0  # after a link failed, none before then

    def get(self) -> _Link | None:
        """The running asyncio loop's link, or ``None`` (then the worker
        thread serves the call; a link starts connecting meanwhile)."""
        loop = _running_loop()
        if loop is None:
            return None
        link = self._links.get(loop)
        if link is not None and not link.closed:
            return link if link.ready else None
        target = self._target
        if target is None:
            self._look_up()
            return None
        if (
            time.monotonic() < self._retry_at
            or loop in self._unfit
            or loop.is_closed()
            # its shutdown has begun: a link now would outlive it
            or getattr(loop, "_asyncgens_shutdown_called", False)
        ):
            return None
        family, address = target
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(loop, sock, self.hello, self.timeout, self.url, self._gone)
        with self._lock:
            self._links[loop] = link
        if not link.start(address):
            self._unfit.add(loop)
            self._gone(link)
        return None

    def _look_up(self) -> None:
        with self._lock:
            if self._looking:
                return
            self._looking = True
        threading.Thread(
            target=self._resolve, name="ratebudget-redis-lookup", daemon=True
        ).start()

    def _resolve(self) -> None:
        try:
            if isinstance(self.address, str):
                self._target = (socket.AF_UNIX, self.address)
            else:
                host, port = self.address
                info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                self._target = (info[0][0], info[0][4])
        except OSError:  # the worker thread reports the store's failures
            pass
        finally:
            with self._lock:
                self._looking = False

    def _gone(self, link: _Link) -> None:
        if not link.ready or link.skip:  # it never served: wait before another
            self._retry_at = time.monotonic() + _RETRY_AFTER
        with self._lock:
            if self._links.get(link.loop) is link:
                del self._links[link.loop]

    def close(self) -> None:
        """Close every link (from the loop's thread or not)."""
        with self._lock:
            links = list(self._links.values())
        for link in links:
            try:
                link.loop.call_soon_threadsafe(
                    link.fail, ConnectionError("the store was closed")
                )
            except RuntimeError:
                link.sock.close()


_RETRY_AFTER: Final = 1.0  # s: after a link that never served, the next
_FRESH: Final = 0.001  # s: a link that answered a call sent this recently is open
_READ_SIZE: Final = 65536


def links_for(client: Any, timeout: float, url: str) -> Links | None:
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
