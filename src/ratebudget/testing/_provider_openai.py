"""The fake provider's OpenAI family: its endpoints, errors and rate-limit headers.

Errors are ``{"error": {"message", "type", "param", "code"}}``; the headers
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, the reset as a Go
duration (``"6m0s"``); the request id is ``x-request-id``.
"""

from __future__ import annotations

import math
from typing import Any

from ._provider_api import Dialect, Plan
from ._provider_openai_chat import plan_chat
from ._provider_openai_completions import plan_completions
from ._provider_openai_embeddings import plan_embeddings
from ._provider_openai_responses import plan_responses

__all__ = ("OPENAI", "OPENAI_ROUTES")

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
}


def _error_payload(status: int, message: str, limit: str | None) -> dict[str, Any]:
    kind = limit or _ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    code = "rate_limit_exceeded" if status == 429 else None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def _limit_headers(
    kind: str, limit: int, remaining: int, reset: float
) -> list[tuple[str, str]]:
    return [
        (f"x-ratelimit-limit-{kind}", str(limit)),
        (f"x-ratelimit-remaining-{kind}", str(remaining)),
        (f"x-ratelimit-reset-{kind}", _go_duration(reset)),
    ]


OPENAI = Dialect(
    request_id_header="x-request-id",
    error_payload=_error_payload,
    limit_headers=_limit_headers,
)

OPENAI_ROUTES: dict[str, tuple[Dialect, Plan]] = {
    "/v1/chat/completions": (OPENAI, plan_chat),
    "/v1/responses": (OPENAI, plan_responses),
    "/v1/completions": (OPENAI, plan_completions),
    "/v1/embeddings": (OPENAI, plan_embeddings),
}
