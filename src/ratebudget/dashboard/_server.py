"""Serving the dashboard with uvicorn: in the foreground (the command) or on
a thread of its own (tests, scripts). starlette and uvicorn are imported
only here and in the app, when a dashboard is served: the core install
does not need them (extra ``dashboard``)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._source import Source

__all__ = ("MissingExtra", "bind", "require", "run", "serve_in_thread", "url_of")

_EXTRA = "pip install 'ratebudget[dashboard]'"


class MissingExtra(ImportError):
    """starlette or uvicorn is not installed."""


def require() -> None:
    """Raise ``MissingExtra``, saying what to install, unless the
    dashboard's packages can be imported."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtra(
            f"the dashboard needs starlette and uvicorn ({e.name or e} is missing): "
            f"{_EXTRA}"
        ) from e


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``0``: a free port), made before
    serving so that the URL printed is the one served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL a bound socket serves."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(source: Source, host: str) -> Any:
    require()
    import uvicorn

    from ._app import create_app

    config = uvicorn.Config(
        create_app(source, host=host),
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    return uvicorn.Server(config)


def run(source: Source, sock: socket.socket) -> None:
    """Serve on ``sock`` (``bind``) until interrupted (blocking; uvicorn's
    asyncio loop)."""
    host = sock.getsockname()[0]
    _server(source, host).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(
    source: Source, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve on a daemon thread while the block runs; yields the base URL
    (``port=0``: a free port)."""
    server = _server(source, host)
    with bind(host, port) as sock:
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name="ratebudget-dashboard",
            daemon=True,
        )
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError(
                        f"the dashboard could not serve on {url_of(sock)}"
                    )
                thread.join(0.01)
            yield url_of(sock)
        finally:
            server.should_exit = True
            thread.join(10)
