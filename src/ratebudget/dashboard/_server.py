"""Serving the dashboard with uvicorn: in the foreground (the command) or on
a thread of its own (tests, scripts). starlette and uvicorn are imported
only here and in the app, when a dashboard is served: the core install
does not need them (extra ``dashboard``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._source import Source

__all__ = ("MissingExtra", "require", "run", "serve_in_thread")

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


def _server(source: Source, host: str, port: int) -> Any:
    require()
    import uvicorn

    from ._app import create_app

    config = uvicorn.Config(
        create_app(source, host=host),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    return uvicorn.Server(config)


def run(source: Source, host: str, port: int) -> None:
    """Serve until interrupted (blocking; uvicorn's asyncio loop)."""
    _server(source, host, port).run()


@contextlib.contextmanager
def serve_in_thread(
    source: Source, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Serve on a daemon thread while the block runs; yields the base URL
    (``port=0``: a free port)."""
    server = _server(source, host, port)
    thread = threading.Thread(
        target=server.run, name="ratebudget-dashboard", daemon=True
    )
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the dashboard could not serve on {host}:{port}")
            thread.join(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        thread.join(10)
