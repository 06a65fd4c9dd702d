"""A minimal HTTP/1.1 server on loopback for an ASGI 3 app (the fake provider).

Content-Length or chunked request bodies, keep-alive, chunked responses for
streams; no TLS, no pipelining guarantees beyond sequential requests, no
HTTP/2, no upgrade, 64 KiB of headers and 64 MiB of body at most.
"""

from __future__ import annotations

import contextlib
import http
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ("ASGIApp", "Message", "Receive", "Scope", "Send", "serve", "serve_in_thread")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
_SERVER = "ratebudget-fake-provider"


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0: a free port); yields the base URL."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def connection(stream: anyio.abc.SocketStream) -> None:
        try:
            async with stream:
                await _serve_connection(app, stream)
        except Exception:  # a broken connection never stops the server
            return

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, connection)
        try:
            yield f"http://{host}:{bound}"
        finally:
            tg.cancel_scope.cancel()


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str, port: int, *, name: str) -> Iterator[str]:
    """Like :func:`serve`, on an asyncio loop of its own in daemon thread ``name``."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = anyio.Event()
        box["token"] = anyio.lowlevel.current_token()
        box["stop"] = stop
        async with serve(app, host, port) as url:
            box["url"] = url
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            anyio.run(main, backend="asyncio")
        except BaseException as exc:  # pragma: no cover - reported below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait()
    if "url" not in box:
        raise RuntimeError(f"{name} could not start serving") from box.get("error")
    try:
        yield box["url"]
    finally:
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(box["stop"].set, token=box["token"])
        thread.join(timeout=10)


async def _serve_connection(app: ASGIApp, stream: anyio.abc.SocketStream) -> None:
    reader = BufferedByteReceiveStream(stream)
    client = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
    server = stream.extra(anyio.abc.SocketAttribute.local_address, None)
    while True:
        try:
            head = await reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            return
        except anyio.DelimiterNotFound:
            await stream.send(_plain(431, "Request header fields too large"))
            return
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            await stream.send(_plain(400, "Bad request line"))
            return
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                await stream.send(_plain(400, "Bad header line"))
                return
            headers.append((name.strip().lower(), value.strip()))
        fields = dict(headers)
        connection = fields.get("connection", "").lower()
        keep_alive = (
            "close" not in connection
            if version == "HTTP/1.1"
            else "keep-alive" in connection
        )
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        else:
            length = int(fields.get("content-length", "0") or 0)
            if length > _MAX_BODY:
                await stream.send(_plain(413, "Body too large"))
                return
            body = await reader.receive_exactly(length) if length else b""
        path, _, query = target.partition("?")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version.removeprefix("HTTP/"),
            "method": method,
            "scheme": "http",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": tuple(client[:2]) if isinstance(client, tuple) else None,
            "server": tuple(server[:2]) if isinstance(server, tuple) else None,
        }
        exchange = _Exchange(stream, body, keep_alive, head_only=method == "HEAD")
        try:
            await app(scope, exchange.receive, exchange.send)
        except Exception:
            if not exchange.started:
                await stream.send(_plain(500, "The app failed"))
            return
        finally:
            exchange.finished.set()
        if not exchange.started:
            await stream.send(_plain(500, "The app sent no response"))
            return
        if not exchange.complete or not exchange.keep_alive:
            return


class _Exchange:
    """One request/response on a connection: the ASGI receive and send."""

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        body: bytes,
        keep_alive: bool,
        *,
        head_only: bool,
    ) -> None:
        self.stream = stream
        self.body: bytes | None = body
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.finished = anyio.Event()
        self.started = False
        self.complete = False
        self.chunked = False
        self.start: Message | None = None

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.start is not None:
                raise RuntimeError("http.response.start sent twice")
            self.start = message
            return
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r}")
        if self.start is None or self.complete:
            raise RuntimeError("http.response.body out of order")
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out = b""
        if not self.started:
            self.started = True
            out = self._head(len(data), more)
        if self.head_only:
            data = b""
        if self.chunked:
            if data:
                out += b"%x\r\n%s\r\n" % (len(data), data)
            if not more:
                out += b"0\r\n\r\n"
        else:
            out += data
        if not more:
            self.complete = True
        if out:
            await self.stream.send(out)

    def _head(self, length: int, more: bool) -> bytes:
        assert self.start is not None
        status = int(self.start["status"])
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in self.start.get("headers", [])
        ]
        names = {k.lower() for k, _ in headers}
        if "content-length" not in names:
            if more:
                self.chunked = True
                headers.append(("transfer-encoding", "chunked"))
            else:
                headers.append(("content-length", str(length)))
        headers.append(("connection", "keep-alive" if self.keep_alive else "close"))
        headers.append(("server", _SERVER))
        lines = [f"HTTP/1.1 {status} {_phrase(status)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _plain(status: int, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {_phrase(status)}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("latin-1") + body


async def _read_chunked(reader: BufferedByteReceiveStream) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.receive_until(b"\r\n", 1024)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while await reader.receive_until(b"\r\n", _MAX_HEAD):
                pass  # trailers
            return b"".join(parts)
        total += size
        if total > _MAX_BODY:
            raise ValueError("chunked body too large")
        parts.append(await reader.receive_exactly(size))
        await reader.receive_exactly(2)
