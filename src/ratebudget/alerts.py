"""Where alerts go: ``Webhook``, an ``on_alert`` sink that POSTs each alert.

::

    limiter = Limiter(
        Cap(usd="500", per="month", alert_at=(0.8, 1.0)),
        on_alert=[Webhook(SLACK_URL, format="slack"), page_oncall],
    )

Handlers run off the callers' path (see ``Limiter``'s ``on_alert``), so a
webhook that is slow, down or retrying never delays an acquisition or a
commit. Nothing here needs a dependency: the POST is the standard library's
``urllib``, run in a worker thread, so it works on asyncio and trio alike.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

import anyio
import anyio.to_thread

from ._alerts import logger
from ._exceptions import InvalidRequest, RateBudgetError
from ._http import retry_after
from ._snapshot import Alert

__all__ = ("Alert", "Webhook", "WebhookFailed")

_RETRIED: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses worth another try; any other error status is final."""


class WebhookFailed(RateBudgetError):
    """A webhook did not take an alert after every attempt (logged by the
    limiter's alert dispatcher; never raised into a caller's call)."""


def _positive(name: str, value: object, *, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name}={value!r}: expected a number")
    if whole and (not isinstance(value, int) or value < 1):
        raise InvalidRequest(f"{name}={value!r}: expected a whole number >= 1")
    if not value >= 0 or value == float("inf"):
        raise InvalidRequest(f"{name}={value!r}: expected a finite number >= 0")
    return float(value)


def _amount(value: int | Decimal) -> int | str:
    """An amount in JSON: a count as a number, USD as an exact string."""
    return str(value) if isinstance(value, Decimal) else value


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


class Webhook:
    """An ``on_alert`` sink: POST each alert as JSON to ``url``.

    ``format="json"`` (the default) sends the alert's fields (below);
    ``"slack"`` sends ``{"text": ...}``, which Slack's incoming webhooks
    (and Mattermost's, Discord's ``/slack`` endpoint...) display as is.
    ``headers`` are added to each request (an ``Authorization``, say).

    A failed delivery is retried ``attempts`` times in all, after a
    connection error, a timeout (``timeout`` seconds per attempt) or a
    status 408, 425, 429 or 5xx, waiting ``backoff`` seconds doubled after
    each failure (at most ``max_backoff``, with jitter), or what a
    ``Retry-After`` header asks, up to ``max_backoff``. Any other error
    status is final. A delivery that fails for good raises ``WebhookFailed``,
    which the limiter logs (ERROR) without the URL's path or query, where
    webhook secrets live; the next alert is still delivered.

    The JSON body: ``id`` (``Alert.id``, stable: deduplicate on it),
    ``kind``, ``scope``, ``axis``, ``threshold``, ``used`` and ``limit``
    (numbers; USD as exact decimal strings), ``period``, ``resets_at`` (ISO
    8601 or ``null``), ``cap`` (the cap's ``repr``) and ``text`` (the
    alert's one-line description).
    """

    def __init__(
        self,
        url: str,
        *,
        format: Literal["json", "slack"] = "json",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if not isinstance(url, str):
            raise InvalidRequest(f"url={url!r}: expected an http or https URL")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(
                f"url={_redact(url)!r}: expected an http:// or https:// URL with a host"
            )
        if format not in ("json", "slack"):
            raise InvalidRequest(f"format={format!r}: expected 'json' or 'slack'")
        extra = dict(headers or {})
        for key, value in extra.items():
            if not (isinstance(key, str) and isinstance(value, str)):
                raise InvalidRequest(f"headers: {key!r}: {value!r} is not two strings")
        self.url = url
        self.format = format
        self.headers = {"Content-Type": "application/json", **extra}
        self.timeout = _positive("timeout", timeout)
        if self.timeout == 0:
            raise InvalidRequest("timeout=0: a request needs some time")
        self.attempts = int(_positive("attempts", attempts, whole=True))
        self.backoff = _positive("backoff", backoff)
        self.max_backoff = _positive("max_backoff", max_backoff)

    def __repr__(self) -> str:
        return f"Webhook({_redact(self.url)!r}, format={self.format!r})"

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON object posted for ``alert``."""
        if self.format == "slack":
            return {"text": f":rotating_light: ratebudget alert: {alert}"}
        return {
            "id": alert.id,
            "kind": alert.kind,
            "scope": alert.scope,
            "axis": alert.axis,
            "threshold": alert.threshold,
            "used": _amount(alert.used),
            "limit": _amount(alert.limit),
            "period": alert.period,
            "resets_at": _iso(alert.resets_at),
            "cap": repr(alert.cap),
            "text": str(alert),
        }

    async def __call__(self, alert: Alert) -> None:
        body = json.dumps(self.payload(alert)).encode()
        problem = ""
        for attempt in range(1, self.attempts + 1):
            status, wait = await anyio.to_thread.run_sync(self._post, body)
            if status is not None and 200 <= status < 300:
                return
            problem = "no answer" if status is None else f"status {status}"
            if status is not None and status not in _RETRIED:
                break
            if attempt < self.attempts:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)
                if wait is not None:
                    delay = min(self.max_backoff, wait)
                logger.info(
                    "ratebudget: webhook %s: %s for alert %s; retrying in %.2fs",
                    _redact(self.url),
                    problem,
                    alert.id,
                    delay,
                )
                await anyio.sleep(delay)
        raise WebhookFailed(
            f"webhook {_redact(self.url)} did not take alert {alert.id} "
            f"({problem}; {attempt} attempt{'s' if attempt > 1 else ''})"
        )

    def _post(self, body: bytes) -> tuple[int | None, float | None]:
        """One POST: its status (``None``: no answer) and a ``Retry-After``."""
        request = urllib.request.Request(
            self.url, data=body, headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
                return int(response.status), None
        except urllib.error.HTTPError as error:
            with error:
                return int(error.code), retry_after(error.headers.get("Retry-After"))
        except (OSError, ValueError):  # refused, reset, timed out, bad answer
            return None, None


def _redact(url: str) -> str:
    """``url`` without what may be a secret (user info, path, query)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<a URL>"
    return f"{parts.scheme}://{host}{port}/***"
