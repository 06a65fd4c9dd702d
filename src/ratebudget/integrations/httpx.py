"""``BudgetTransport``: meter every LLM call an httpx client makes.

::

    client = AsyncOpenAI(http_client=httpx.AsyncClient(transport=BudgetTransport(limiter)))

Per request to a known endpoint (see ``usage.classify``; anything else passes
through untouched):

1. estimate it before it is sent: input tokens, the most output it may
   produce, and (when the limiter counts ``usd``) the USD of that estimate;
2. acquire a lease for ``requests``, ``tokens``, ``input_tokens``,
   ``output_tokens`` and ``usd``: the caller waits for the rates, and a hard
   cap refuses with ``BudgetExceeded`` *before* anything is sent;
3. read the real usage from the response, JSON or streamed (SSE), and commit
   it when the body is closed; a stream cut short commits what the provider
   reported so far, and at least the input;
4. release on an error response; on a ``429``, hold every later caller of
   this limiter for its ``Retry-After``.

One implementation serves ``httpx`` and ``httpx2`` (which current ``openai``
and ``anthropic`` SDKs are built on): the transport only uses what both
packages share, and builds its requests and responses with the classes of
the request it was given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import anyio

from .. import _telemetry as telemetry
from .._exceptions import AcquireTimeout, BudgetExceeded, InvalidRequest, UnmeteredCall
from .._http import retry_after
from .._telemetry import OBSERVERS
from ._call_amounts import charged, commit_amounts, priced, reserve_amounts
from ._classify import Endpoint, azure_deployment, classify, gemini_model, is_free
from ._estimate import DEFAULT_MAX_OUTPUT, Estimate, estimate
from ._parse import Usage, usage_from_json
from ._sse import StreamUsage

if TYPE_CHECKING:
    from .. import Limiter

__all__ = ("BudgetSyncTransport", "BudgetTransport")

_log = logging.getLogger("ratebudget")

_UNMETERED: Final = ("raise", "warn", "allow")

# the output limits of each API's request body, the first one set when none is
_OUTPUT_LIMITS: Final = {
    Endpoint.OPENAI_CHAT: ("max_tokens", "max_completion_tokens"),
    Endpoint.OPENAI_RESPONSES: ("max_output_tokens",),
    Endpoint.OPENAI_COMPLETIONS: ("max_tokens",),
    Endpoint.ANTHROPIC_MESSAGES: ("max_tokens",),
    Endpoint.GEMINI_GENERATE: ("maxOutputTokens", "max_output_tokens"),
    Endpoint.GEMINI_STREAM: ("maxOutputTokens", "max_output_tokens"),
}
_GEMINI: Final = (
    Endpoint.GEMINI_GENERATE,
    Endpoint.GEMINI_STREAM,
    Endpoint.GEMINI_EMBED,
)

# the ``operation`` label of each API (OpenTelemetry's gen_ai.operation.name)
OPERATIONS: Final = {
    Endpoint.OPENAI_CHAT: "chat",
    Endpoint.OPENAI_RESPONSES: "chat",
    Endpoint.OPENAI_COMPLETIONS: "text_completion",
    Endpoint.OPENAI_EMBEDDINGS: "embeddings",
    Endpoint.ANTHROPIC_MESSAGES: "chat",
    Endpoint.GEMINI_GENERATE: "generate_content",
    Endpoint.GEMINI_STREAM: "generate_content",
    Endpoint.GEMINI_EMBED: "embeddings",
}


SHRUNK_HEADER: Final = "x-ratebudget-max-output-tokens"
"""On a response to a call that ``shrink=True`` sent with a lower output
limit than asked for: the limit it was sent with."""

_CHARS_PER_TOKEN: Final = 4
_MAX_BODY: Final = (
    64 * 1024 * 1024
)  # a JSON answer larger than this is not read for usage

# what a provider says remains of its per-minute limits, by axis
_REMAINING: Final = (
    ("x-ratelimit-remaining-requests", "requests"),
    ("x-ratelimit-remaining-tokens", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "tokens"),
    ("anthropic-ratelimit-input-tokens-remaining", "input_tokens"),
    ("anthropic-ratelimit-output-tokens-remaining", "output_tokens"),
)

# limiter -> monotonic time before which no call may start (a provider's 429)
_held: weakref.WeakKeyDictionary[Limiter, float] = weakref.WeakKeyDictionary()


def _retry_delay(raw: bytes) -> float | None:
    """Seconds from an error body's ``google.rpc.RetryInfo`` (Gemini's 429:
    ``{"error": {"details": [{"retryDelay": "36s", ...}]}}``)."""
    try:
        body = json.loads(raw)
        details = body["error"]["details"]
    except (ValueError, TypeError, KeyError):
        return None
    for item in details if isinstance(details, list) else ():
        delay = item.get("retryDelay") if isinstance(item, Mapping) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                continue
            if math.isfinite(seconds):
                return max(0.0, seconds)
    return None


def _retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return retry_after(headers.get("retry-after"))


if TYPE_CHECKING:  # one class each, typed as a transport of both packages
    import httpx
    import httpx2

    class _Transport(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport): ...  # type: ignore[misc]

    class _SyncTransport(httpx.BaseTransport, httpx2.BaseTransport): ...  # type: ignore[misc]

else:
    _Transport = _SyncTransport = object


class _Meter:
    """What both transports share: reading a request, and the amounts."""

    def __init__(
        self,
        limiter: Limiter,
        transport: Any = None,
        *,
        base_path: str = "",
        count_tokens: Callable[[str], int] | None = None,
        default_max_output: int = DEFAULT_MAX_OUTPUT,
        timeout: float | None = None,
        unknown_model: str | Mapping[str, Decimal | str] = "raise",
        provider: str | None = None,
        adapt: bool = True,
        unmetered: str = "raise",
        models: Mapping[str, str] | None = None,
        shrink: bool = False,
        min_output_tokens: int = 256,
    ) -> None:
        from .. import Limiter  # at the call: no import of the limiter at load

        if not isinstance(limiter, Limiter):
            raise InvalidRequest(
                f"{type(self).__name__} needs a Limiter, not {limiter!r}"
            )
        if unmetered not in _UNMETERED:
            raise InvalidRequest(
                f"unmetered={unmetered!r}: expected 'raise', 'warn' or 'allow'"
            )
        models = dict(models or {})
        for key, value in models.items():
            if not (isinstance(key, str) and isinstance(value, str) and key and value):
                raise InvalidRequest(
                    f"models={{{key!r}: {value!r}}}: map a deployment or request "
                    "model name to a model name (both non-empty strings)"
                )
        if not isinstance(shrink, bool):
            raise InvalidRequest(f"shrink={shrink!r}: expected True or False")
        if (
            isinstance(min_output_tokens, bool)
            or not isinstance(min_output_tokens, int)
            or min_output_tokens < 1
        ):
            raise InvalidRequest(
                f"min_output_tokens={min_output_tokens!r}: expected a whole "
                "number of tokens, at least 1"
            )
        self.unmetered = unmetered
        self.models = models
        self.shrink = shrink
        self.min_output_tokens = min_output_tokens
        self.limiter = limiter
        self._inner = transport
        self.base_path = base_path
        self.count_tokens = count_tokens
        self.default_max_output = default_max_output
        self.timeout = timeout
        self.unknown_model = unknown_model
        self.provider = provider
        self.adapt = adapt
        if priced(limiter):
            from . import prices  # noqa: F401  (fails early without genai-prices)

    def _endpoint(self, request: Any) -> Endpoint | None:
        return classify(request.method, request.url.path, self.base_path)

    def _pass(self, request: Any, why: str) -> None:
        """A request that will not be metered: fine when the provider bills
        nothing for it, else as ``unmetered`` says (raise, warn or allow)."""
        method, path = request.method, request.url.path
        if (
            why == "unrecognised" and is_free(method, path)
        ) or self.unmetered == "allow":
            return
        what = (
            "is not an API call it recognises"
            if why == "unrecognised"
            else "has a body that is not a JSON object"
        )
        message = (
            f"{method} {path} {what}, so it would reach the provider unmetered; "
            f"pass {type(self).__name__}(..., unmetered='warn' or 'allow') to send "
            "such calls anyway"
        )
        if self.unmetered == "raise":
            raise UnmeteredCall(
                message + " (nothing was sent)", method=method, path=path
            )
        _log.warning("ratebudget: %s", message)

    def _plan(self, request: Any, endpoint: Endpoint, raw: bytes) -> _Planned | None:
        """What to reserve for ``request`` (``None``: the body is not a JSON
        object, it cannot be metered)."""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        if (
            endpoint is Endpoint.OPENAI_CHAT
            and body.get("stream")
            and not (body.get("stream_options") or {}).get("include_usage")
        ):
            # without it a chat stream never says what it used
            body["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
            request = _with_body(request, body)
        est = estimate(
            endpoint,
            body,
            self.count_tokens,
            default_max_output=self.default_max_output,
        )
        if endpoint in _GEMINI:  # Gemini names the model in the path
            est = dataclasses.replace(est, model=gemini_model(request.url.path))
        # the model to price: models= maps an Azure deployment or a request's
        # model name to it; an Azure deployment it does not map is priced at
        # commit by the model the response names
        deployment = azure_deployment(request.url.path)
        model = self.models.get(deployment or "") or self.models.get(est.model or "")
        if model is None and deployment is not None:
            model = est.model or deployment
            trust_response = True
        else:
            model = model or est.model
            trust_response = False
        est = dataclasses.replace(est, model=model)
        family = self.provider or endpoint.value.split(".")[0]
        # the current scope (``ratebudget.scope``): its limiter and labels
        limiter, labels = charged(
            self.limiter, operation=OPERATIONS[endpoint], provider=family, model=model
        )
        return _Planned(
            request,
            endpoint,
            est,
            family,
            self._amounts(est, family, priced(limiter)),
            trust_response,
            body,
            limiter,
            labels,
        )

    def _shrunk(self, planned: _Planned, refused: BudgetExceeded) -> _Planned | None:
        """``planned`` with its output limit lowered to what the USD cap that
        refused it still allows, or ``None`` (not a USD refusal, no output to
        lower, or less than ``min_output_tokens`` would fit)."""
        limits = _OUTPUT_LIMITS.get(planned.endpoint)
        if not self.shrink or refused.axis != "usd" or not limits:
            return None
        est, family = planned.est, planned.family
        left = (
            Decimal(refused.limit) - Decimal(refused.used) - Decimal(refused.reserved)
        )
        base = self._amounts(
            dataclasses.replace(est, max_output_tokens=0), family, True
        )
        one = self._amounts(dataclasses.replace(est, max_output_tokens=1), family, True)
        per_token = one["usd"] - base["usd"]  # one more token of every choice
        if per_token <= 0:
            return None
        fits = int((left - base["usd"]) // per_token)
        if fits < self.min_output_tokens or fits >= est.max_output_tokens:
            return None
        body = _with_output_limit(planned.endpoint, planned.body, limits, fits)
        raw = json.dumps(body, separators=(",", ":")).encode()
        again = self._plan(_with_body(planned.request, body), planned.endpoint, raw)
        if again is None:  # pragma: no cover - the body was a JSON object
            return None
        again.shrunk = fits
        return again

    def _amounts(self, est: Estimate, family: str, priced: bool) -> dict[str, Any]:
        return reserve_amounts(
            est,
            priced=priced,
            model=est.model,
            provider=family,
            unknown=self.unknown_model,
        )

    def actual(
        self,
        planned: _Planned,
        usage: Usage | None,
        model: str | None,
        text_chars: int,
    ) -> dict[str, Any]:
        """The amounts to commit for what a response used (``model``: the one
        it names)."""
        est = planned.est
        if planned.trust_response and model:
            model = self.models.get(model, model)
        else:
            model = est.model or model
        if usage is None:
            # the provider said nothing (a stream cut short before its usage
            # event): the input as estimated, plus the output seen so far
            usage = Usage(
                input_tokens=est.input_tokens,
                output_tokens=math.ceil(text_chars / _CHARS_PER_TOKEN),
            )
        return commit_amounts(
            usage,
            priced=priced(planned.limiter),
            model=model,
            provider=planned.family,
            unknown=self.unknown_model,
            booked=planned.limiter._ledger is not None,
        )

    def _tell(
        self,
        planned: _Planned,
        *,
        usage: Usage | None = None,
        model: str | None = None,
        usd: Any = None,
        error: str | None = None,
    ) -> None:
        """Tell the observers (``ratebudget.otel``) the call ended."""
        if not OBSERVERS:
            return
        url = planned.request.url
        host = url.host or None
        port = url.port or (443 if url.scheme == "https" else 80)
        telemetry.called(
            telemetry.Call(
                operation=OPERATIONS[planned.endpoint],
                provider=telemetry.provider_name(planned.family, host),
                request_model=planned.est.model,
                response_model=model,
                input_tokens=None if usage is None else usage.input_tokens,
                output_tokens=None if usage is None else usage.output_tokens,
                duration=time.perf_counter() - planned.started,
                error_type=error,
                server_address=host,
                server_port=port if host else None,
                scope=telemetry.scope_of(planned.limiter),
                usd=None if usd is None else Decimal(str(usd)),
            )
        )

    def _observe(self, response: Any) -> None:
        """Pull the per-minute rates down to what the provider says remains."""
        if not self.adapt:
            return
        remaining: dict[str, int] = {}
        headers = response.headers
        for header, axis in _REMAINING:
            value = headers.get(header)
            if value is not None:
                try:
                    remaining[axis] = max(0, int(float(value)))
                except ValueError:
                    continue
        if remaining:
            self.limiter.lower(per=60, **remaining)

    def _hold(self, seconds: float | None) -> None:
        until = time.monotonic() + (1.0 if seconds is None else seconds)
        if _held.get(self.limiter, 0.0) < until:
            _held[self.limiter] = until

    def _check_hold(self, left: float) -> None:
        """A hold longer than the caller's timeout fails at once (contract 4)."""
        if self.timeout is not None and left > self.timeout:
            raise AcquireTimeout(
                f"the provider asked to wait {left:.3f}s (429 Retry-After); "
                f"timeout is {self.timeout:g}s",
                retry_after=left,
            )

    def _held_for(self) -> float:
        return _held.get(self.limiter, 0.0) - time.monotonic()


class _Planned:
    __slots__ = (
        "amounts",
        "body",
        "endpoint",
        "est",
        "family",
        "labels",
        "limiter",
        "request",
        "shrunk",
        "started",
        "trust_response",
    )

    def __init__(
        self,
        request: Any,
        endpoint: Endpoint,
        est: Estimate,
        family: str,
        amounts: dict[str, Any],
        trust_response: bool,
        body: dict[str, Any],
        limiter: Limiter,
        labels: Mapping[str, str],
    ) -> None:
        self.limiter = limiter  # the one to charge: the scope's, or the transport's
        self.labels = labels
        self.request = request
        self.endpoint = endpoint
        self.est = est  # its model: the one to price
        self.family = family
        self.amounts = amounts
        self.trust_response = trust_response  # price the response's model
        self.body = body
        self.shrunk: int | None = None  # the output limit shrink=True set
        self.started = 0.0  # when it was sent (time.perf_counter())


def _with_output_limit(
    endpoint: Endpoint, body: dict[str, Any], limits: tuple[str, ...], fits: int
) -> dict[str, Any]:
    """``body`` (a copy) with every output limit it sets, else the first of
    ``limits``, set to ``fits`` (Gemini's in its ``generationConfig``)."""
    body = dict(body)
    settings = body
    if endpoint in _GEMINI:
        key = "generation_config" if "generation_config" in body else "generationConfig"
        config = body.get(key)
        settings = body[key] = dict(config) if isinstance(config, Mapping) else {}
    present = [k for k in limits if k in settings] or [limits[0]]
    for key in present:
        settings[key] = fits
    return body


def _with_body(request: Any, body: Mapping[str, Any]) -> Any:
    content = json.dumps(body, separators=(",", ":")).encode()
    headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    return type(request)(
        request.method,
        request.url,
        headers=headers,
        content=content,
        extensions=request.extensions,
    )


def _never_left(request: Any, error: BaseException) -> bool:
    package = _package(request)
    return isinstance(error, (package.ConnectError, package.ConnectTimeout))


def _rebuilt(response: Any, request: Any, headers: Any, **body: Any) -> Any:
    """``response`` anew, for ``request``: ``headers``, and its body as
    ``stream=`` or ``content=``."""
    return type(response)(
        status_code=response.status_code,
        headers=headers,
        extensions=response.extensions,
        request=request,
        **body,
    )


def _with_content(response: Any, request: Any, raw: bytes) -> Any:
    """``response`` anew, its body read (``raw``) and given again."""
    # the body is decoded now: its encoding and length go with the old one
    gone = (b"content-encoding", b"content-length", b"transfer-encoding")
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in gone]
    return _rebuilt(response, request, headers, content=raw)


def _respond(response: Any, request: Any, stream: Any, shrunk: int | None) -> Any:
    headers = response.headers
    if shrunk is not None:  # shrink=True lowered the output limit: say so
        headers = [*headers.raw, (SHRUNK_HEADER.encode(), str(shrunk).encode())]
    return _rebuilt(response, request, headers, stream=stream)


class BudgetTransport(_Meter, _Transport):
    """An async httpx (or httpx2) transport that meters LLM calls.

    ``transport`` is the inner transport (default: the HTTP transport of the
    package the client uses). ``base_path`` names an OpenAI-compatible
    server's API root (``"/openai/v1"``); ``count_tokens`` counts a text's
    tokens (default: about four characters per token); ``timeout`` bounds the
    wait for the limiter (``AcquireTimeout``); ``unknown_model`` is what to
    do with a model the price table does not know, when the limiter counts
    ``usd``: ``"raise"`` (``InvalidRequest``, before anything is sent) or a
    rate in USD per million tokens, like ``{"input_mtok": "1", "output_mtok": "4"}``.
    ``provider`` names the price table's provider (``"openai"``,
    ``"anthropic"``, ``"groq"``...); by default the API's own (OpenAI's for
    the OpenAI endpoints, Anthropic's for messages): give it for an
    OpenAI-compatible server that serves another provider's models.
    Inside ``with ratebudget.scope(limiter, **labels):`` a call is charged
    to the scope's limiter instead, and carries its labels; every lease is
    labelled ``model``, ``provider`` and ``operation`` (``"chat"``,
    ``"text_completion"``, ``"embeddings"``, ``"generate_content"``).
    ``adapt`` (default on): after each response, pull the limiter's
    per-minute rates down to what the provider's ``x-ratelimit-remaining-*``
    (``anthropic-ratelimit-*-remaining``) headers say remains, so clients
    sharing one API key converge (``Limiter.lower``; a memory store only).
    """

    def _transport(self, request: Any) -> Any:
        if self._inner is None:
            self._inner = _package(request).AsyncHTTPTransport()
        return self._inner

    async def __aenter__(self) -> BudgetTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()

    async def handle_async_request(self, request: Any) -> Any:
        inner = self._transport(request)
        endpoint = self._endpoint(request)
        if endpoint is None:
            self._pass(request, "unrecognised")
            return await inner.handle_async_request(request)
        planned = self._plan(request, endpoint, await request.aread())
        if planned is None:
            self._pass(request, "unreadable")
            return await inner.handle_async_request(request)
        request = planned.request
        # a provider's 429 said wait (a later 429 may extend it: look again)
        while (left := self._held_for()) > 0:
            self._check_hold(left)
            await anyio.sleep(left)
        try:
            lease = await planned.limiter.acquire(
                timeout=self.timeout, labels=planned.labels, **planned.amounts
            )
        except BudgetExceeded as refused:
            smaller = self._shrunk(planned, refused)
            if smaller is None:
                raise
            planned, request = smaller, smaller.request
            lease = await planned.limiter.acquire(
                timeout=self.timeout, labels=planned.labels, **planned.amounts
            )
        planned.started = time.perf_counter()
        try:
            response = await inner.handle_async_request(request)
        except BaseException as e:
            with anyio.CancelScope(shield=True):
                if _never_left(request, e):
                    await lease.release()
                else:  # it may have reached the provider: its input counts
                    await lease.commit(**self.actual(planned, None, None, 0))
            self._tell(planned, error=type(e).__qualname__)
            raise
        self._observe(response)
        if response.status_code >= 400:
            if response.status_code == 429:
                wait = _retry_after(response.headers)
                if wait is None and planned.endpoint in _GEMINI:
                    raw = await response.aread()  # its delay is in the body
                    wait = _retry_delay(raw)
                    response = _with_content(response, request, raw)
                self._hold(wait)
            with anyio.CancelScope(shield=True):
                await lease.release()
            self._tell(planned, error=str(response.status_code))
            return response
        stream = _stream_class(request, _AsyncMetered, "AsyncByteStream")(
            self, planned, lease, response.stream, _is_sse(response)
        )
        return _respond(response, request, stream, planned.shrunk)


class BudgetSyncTransport(_Meter, _SyncTransport):
    """``BudgetTransport`` for blocking clients (``OpenAI``, ``Anthropic``).

    ``httpx2.Client(transport=BudgetSyncTransport(limiter))``; it waits in
    ``limiter.sync`` and takes the same arguments as ``BudgetTransport``.
    """

    def _transport(self, request: Any) -> Any:
        if self._inner is None:
            self._inner = _package(request).HTTPTransport()
        return self._inner

    def __enter__(self) -> BudgetSyncTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def handle_request(self, request: Any) -> Any:
        inner = self._transport(request)
        endpoint = self._endpoint(request)
        if endpoint is None:
            self._pass(request, "unrecognised")
            return inner.handle_request(request)
        planned = self._plan(request, endpoint, request.read())
        if planned is None:
            self._pass(request, "unreadable")
            return inner.handle_request(request)
        request = planned.request
        while (left := self._held_for()) > 0:  # a provider's 429 said wait
            self._check_hold(left)
            time.sleep(left)
        try:
            lease = planned.limiter.sync.acquire(
                timeout=self.timeout, labels=planned.labels, **planned.amounts
            )
        except BudgetExceeded as refused:
            smaller = self._shrunk(planned, refused)
            if smaller is None:
                raise
            planned, request = smaller, smaller.request
            lease = planned.limiter.sync.acquire(
                timeout=self.timeout, labels=planned.labels, **planned.amounts
            )
        planned.started = time.perf_counter()
        try:
            response = inner.handle_request(request)
        except BaseException as e:
            if _never_left(request, e):
                lease.release()
            else:
                lease.commit(**self.actual(planned, None, None, 0))
            self._tell(planned, error=type(e).__qualname__)
            raise
        self._observe(response)
        if response.status_code >= 400:
            if response.status_code == 429:
                wait = _retry_after(response.headers)
                if wait is None and planned.endpoint in _GEMINI:
                    raw = response.read()  # its delay is in the body
                    wait = _retry_delay(raw)
                    response = _with_content(response, request, raw)
                self._hold(wait)
            lease.release()
            self._tell(planned, error=str(response.status_code))
            return response
        stream = _stream_class(request, _SyncMetered, "SyncByteStream")(
            self, planned, lease, response.stream, _is_sse(response)
        )
        return _respond(response, request, stream, planned.shrunk)


def _package(request: Any) -> Any:
    """The module (``httpx`` or ``httpx2``) that ``request`` comes from."""
    return sys.modules[type(request).__module__.split(".")[0]]


_stream_classes: dict[tuple[type, type], type] = {}


def _stream_class(request: Any, kind: type, base_name: str) -> Any:
    """``kind`` as a subclass of the client package's own byte stream class
    (the client checks that a response's stream is one)."""
    base: type = getattr(_package(request), base_name)
    cls = _stream_classes.get((kind, base))
    if cls is None:
        cls = _stream_classes[(kind, base)] = type(kind.__name__, (kind, base), {})
    return cls


def _is_sse(response: Any) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


class _Metered:
    """A response body that reads usage as it passes, and commits on close."""

    def __init__(
        self, meter: _Meter, planned: _Planned, lease: Any, inner: Any, sse: bool
    ) -> None:
        self.meter = meter
        self.planned = planned
        self.lease = lease
        self.inner = inner
        self.stream = StreamUsage(planned.endpoint) if sse else None
        self.body = bytearray()
        self.closed = False
        self.told: tuple[Usage | None, str | None, Any] = (None, None, None)

    def _see(self, chunk: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(chunk)
        elif len(self.body) + len(chunk) <= _MAX_BODY:
            self.body += chunk

    def _actual(self) -> dict[str, Any]:
        usage, model, chars = self._usage()
        amounts = self.meter.actual(self.planned, usage, model, chars)
        self.told = (usage, model, amounts.get("usd"))
        return amounts

    def _told(self) -> None:
        usage, model, usd = self.told
        self.meter._tell(self.planned, usage=usage, model=model, usd=usd)

    def _usage(self) -> tuple[Usage | None, str | None, int]:
        stream = self.stream
        if stream is not None:
            usage = stream.usage
            if usage is not None and not stream.usage_final:
                # cut short: the output reported so far may lag what was seen
                seen = math.ceil(stream.text_chars / _CHARS_PER_TOKEN)
                if seen > usage.output_tokens:
                    usage = dataclasses.replace(usage, output_tokens=seen)
            return usage, stream.model, stream.text_chars
        try:
            body = json.loads(bytes(self.body))
        except ValueError:
            return None, None, 0
        endpoint = self.planned.endpoint
        if endpoint in _GEMINI and isinstance(body, list):
            # streamGenerateContent without alt=sse: a JSON array of chunks,
            # each with the usage so far
            body = next((c for c in reversed(body) if isinstance(c, dict)), None)
        if not isinstance(body, dict):
            return None, None, 0
        model = body.get("modelVersion" if endpoint in _GEMINI else "model")
        return (
            usage_from_json(self.planned.endpoint, body),
            (model if isinstance(model, str) else None),
            0,
        )


class _AsyncMetered(_Metered):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self._see(chunk)
            yield chunk

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self.inner.aclose()
            finally:
                await self.lease.commit(**self._actual())
                self._told()


class _SyncMetered(_Metered):
    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self._see(chunk)
            yield chunk

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.inner.close()
        finally:
            self.lease.commit(**self._actual())
            self._told()
