"""``limiter.meter()``: meter a call made without the httpx transport.

::

    async with limiter.meter(model="gpt-4o", messages=messages, max_tokens=500) as m:
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=messages, max_tokens=500
        )
        await m.settle(reply)

The block reserves an estimate (as the transport does: the prompt's tokens,
the most output the call may produce, and its USD when the limiter counts
``usd``); ``settle`` reads the usage from the SDK's response object (OpenAI
chat completion, response, completion or embeddings; Anthropic message;
google-genai ``GenerateContentResponse``) and commits it. Leaving the block without ``settle`` commits the estimate;
leaving it by an exception releases the reservation, as a lease does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .. import _telemetry as telemetry
from .._exceptions import InvalidRequest
from .._telemetry import OBSERVERS
from ._call_amounts import charged, commit_amounts, priced, reserve_amounts
from ._classify import Endpoint
from ._estimate import DEFAULT_MAX_OUTPUT, Estimate, estimate
from ._parse import Usage, usage_from_json

if TYPE_CHECKING:
    from .. import Lease, Limiter

__all__ = ("Meter",)


def _endpoint_of(body: Mapping[str, Any]) -> Endpoint | None:
    """Which API a response body came from, by its own ``type``/``object``."""
    if any(key in body for key in ("usageMetadata", "usage_metadata", "candidates")):
        return Endpoint.GEMINI_GENERATE
    kind = body.get("object") or body.get("type")
    if kind == "message":
        return Endpoint.ANTHROPIC_MESSAGES
    if kind in ("chat.completion", "chat.completion.chunk"):
        return Endpoint.OPENAI_CHAT
    if kind == "response":
        return Endpoint.OPENAI_RESPONSES
    if kind == "text_completion":
        return Endpoint.OPENAI_COMPLETIONS
    if kind == "list":
        return Endpoint.OPENAI_EMBEDDINGS
    return None


def _as_dict(response: object) -> Mapping[str, Any]:
    if isinstance(response, Mapping):
        return response
    dump = getattr(response, "model_dump", None)  # the SDKs' pydantic models
    if callable(dump):
        got = dump()
        if isinstance(got, Mapping):
            return got
    raise InvalidRequest(
        f"settle() takes an SDK response (or its JSON as a dict), not {type(response).__name__}"
    )


class Meter:
    """One metered call: ``async with limiter.meter(...) as m: ...; await m.settle(reply)``."""

    def __init__(
        self,
        limiter: Limiter,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]] | None = None,
        prompt: str | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        n: int = 1,
        provider: str | None = None,
        timeout: float | None = None,
        count_tokens: Callable[[str], int] | None = None,
        unknown_model: Literal["raise"] | Mapping[str, Decimal | str] = "raise",
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise InvalidRequest(f"model={model!r}: name the model the call uses")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequest(f"n={n!r}: expected a count >= 1")
        # the current scope (``ratebudget.scope``): its limiter and labels
        limiter, self.labels = charged(
            limiter,
            labels,
            operation="chat",
            provider=provider or "openai",
            model=model,
        )
        self.limiter = limiter
        self.model = model
        self.provider = provider
        self.timeout = timeout
        self.unknown_model = unknown_model
        endpoint = (
            Endpoint.ANTHROPIC_MESSAGES
            if provider == "anthropic"
            else Endpoint.OPENAI_CHAT
        )
        body: dict[str, Any] = {"model": model, "n": n}
        if messages is not None:
            body["messages"] = list(messages)
        if prompt is not None:
            body.setdefault("messages", []).append({"role": "user", "content": prompt})
        if system is not None:
            body["system"] = system
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        self.estimate: Estimate = estimate(
            endpoint,
            body,
            count_tokens,
            default_max_output=DEFAULT_MAX_OUTPUT,
        )
        self._priced = priced(limiter)
        self._lease: Lease | None = None
        self._started = 0.0  # when the call was let go (time.perf_counter())
        self.usage: Usage | None = None

    def _family(self, endpoint: Endpoint | None = None) -> str:
        if self.provider:
            return self.provider
        if endpoint is not None:
            return endpoint.value.split(".")[0]
        return "openai"

    def _reserve(self) -> dict[str, Any]:
        return reserve_amounts(
            self.estimate,
            priced=self._priced,
            model=self.model,
            provider=self._family(),
            unknown=self.unknown_model,
        )

    async def __aenter__(self) -> Meter:
        if self._lease is not None:
            raise InvalidRequest(
                "this meter was already entered; call limiter.meter() again"
            )
        self._lease = await self.limiter.acquire(
            timeout=self.timeout, labels=self.labels, **self._reserve()
        )
        self._started = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._lease
        if lease is not None and not lease.settled:
            await lease.__aexit__(exc_type, exc, tb)
            if exc_type is not None:
                self._tell(None, None, exc_type.__qualname__)

    async def settle(self, response: object) -> Usage:
        """Commit the usage ``response`` reports; returns it.

        ``response`` is an SDK response object (or its JSON as a dict).
        Raises ``InvalidRequest`` if it reports no usage.
        """
        lease = self._lease
        if lease is None:
            raise InvalidRequest(
                "settle() belongs inside `async with limiter.meter(...)`"
            )
        body = _as_dict(response)
        endpoint = _endpoint_of(body)
        usage = None if endpoint is None else usage_from_json(endpoint, body)
        if usage is None:
            raise InvalidRequest(
                "the response reports no usage: commit it by hand with "
                "limiter.acquire(...) and lease.commit(...)"
            )
        actual = commit_amounts(
            usage,
            priced=self._priced,
            model=self.model,
            provider=self._family(endpoint),
            unknown=self.unknown_model,
            booked=lease._limiter._ledger is not None,
        )
        await lease.commit(**actual)
        self.usage = usage
        self._tell(usage, actual.get("usd"), None, endpoint, body.get("model"))
        return usage

    def _tell(
        self,
        usage: Usage | None,
        usd: Any,
        error: str | None,
        endpoint: Endpoint | None = None,
        model: object = None,
    ) -> None:
        """Tell the observers (``ratebudget.otel``) the call ended."""
        if not OBSERVERS:
            return
        telemetry.called(
            telemetry.Call(
                operation="chat",
                provider=telemetry.provider_name(self._family(endpoint), None),
                request_model=self.model,
                response_model=model if isinstance(model, str) else None,
                input_tokens=None if usage is None else usage.input_tokens,
                output_tokens=None if usage is None else usage.output_tokens,
                duration=time.perf_counter() - self._started,
                error_type=error,
                server_address=None,
                server_port=None,
                scope=telemetry.scope_of(self.limiter),
                usd=None if usd is None else Decimal(str(usd)),
            )
        )
