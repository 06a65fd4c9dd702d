"""The dashboard's Starlette app: the page, its assets and the JSON API.

Read-only: every route is a ``GET``. The page and its script and style come
from the package (``static/``), never from the internet, and a Content
Security Policy keeps the browser to this origin. Blocking reads of the
store and the ledger run in a worker thread.

Routes: ``/`` (the page), ``/static/{name}``, ``/api/status`` (the scope
tree), ``/api/burn`` (a burn chart per USD cap), ``/api/report?by=model
&period=all|month|day`` (top spenders), ``/api/alerts`` (the newest alerts
and refusals the ledger keeps).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .._exceptions import InvalidRequest, StoreUnavailable
from ._burn import burn_charts

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ._source import Source

__all__ = ("create_app", "report_window")

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_HEADERS = {
    # nothing from anywhere else: no CDN, no font, no beacon, no framing
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_PERIODS = ("all", "month", "day")
_EVENTS = 20  # the newest alerts and refusals shown


def _asset(name: str) -> bytes:
    return (files(__package__ or "ratebudget.dashboard") / "static" / name).read_bytes()


def report_window(
    period: str, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """``period`` (``all``, ``month``, ``day``: UTC, the one under way) as
    a report's ``since`` and ``until``."""
    if period not in _PERIODS:
        raise InvalidRequest(f"period={period!r}: use one of {', '.join(_PERIODS)}")
    now = now.astimezone(timezone.utc)
    if period == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0), None
    if period == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), None
    return None, None


def create_app(source: Source, *, host: str = "127.0.0.1") -> Starlette:
    """The app serving ``source``; requests for another ``Host`` than
    ``host`` or loopback are refused (a guard against DNS rebinding)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    page = _asset("index.html")
    assets = {name: _asset(name) for name in _ASSETS}

    def guarded(
        read: Callable[[Request], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                body = await read(request)
            except InvalidRequest as e:
                return JSONResponse({"error": str(e)}, 400, headers=_HEADERS)
            except StoreUnavailable as e:
                return JSONResponse({"error": str(e)}, 503, headers=_HEADERS)
            return JSONResponse(body, headers=_HEADERS)

        return endpoint

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return Response("not found", 404, media_type="text/plain")
        return Response(assets[name], media_type=_ASSETS[name], headers=_HEADERS)

    async def api_status(request: Request) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(source.status)

    def read_burn() -> dict[str, Any]:
        return {
            **source.describe(),
            "charts": burn_charts(source.scopes(), source.ledger),
        }

    async def api_burn(request: Request) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(read_burn)

    async def api_report(request: Request) -> dict[str, Any]:
        by = tuple(
            k.strip() for k in request.query_params.get("by", "scope").split(",")
        )
        period = request.query_params.get("period", "all")
        since, until = report_window(period, datetime.now(timezone.utc))
        if source.ledger is None:
            return {**source.describe(), "period": period, "rows": [], "total": None}
        report = await source.ledger.report(by=by, since=since, until=until)
        return {
            **source.describe(),
            "by": list(report.by),
            "period": period,
            "since": None if since is None else since.isoformat(),
            "until": None if until is None else until.isoformat(),
            "rows": [r.as_dict() for r in report.rows],
            "total": report.total.as_dict(),
        }

    async def api_alerts(request: Request) -> dict[str, Any]:
        if source.ledger is None:
            return {
                **source.describe(),
                "available": False,
                "reason": "no ledger: alerts and refusals are kept in the ledger",
                "events": [],
            }
        events = await source.ledger.events(limit=_EVENTS)
        return {
            **source.describe(),
            "available": True,
            "reason": None,
            "events": [
                {
                    "at": e.at.isoformat(),
                    "scope": e.scope,
                    "kind": e.kind,
                    "message": e.message,
                    "count": e.detail.get("count", 1),
                    "reason": e.detail.get("reason"),
                }
                for e in events
            ],
        }

    routes = [
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/api/status", guarded(api_status)),
        Route("/api/burn", guarded(api_burn)),
        Route("/api/report", guarded(api_report)),
        Route("/api/alerts", guarded(api_alerts)),
    ]
    # bound to every interface, the page is reached by names we cannot know
    allowed = ["*"] if host in ("0.0.0.0", "::", "") else sorted({*_LOOPBACK, host})
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
    )
