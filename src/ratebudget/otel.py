"""OpenTelemetry metrics for ratebudget (extra ``otel``).

``instrument()`` emits, for every metered call (the httpx transport and
``limiter.meter()``), the GenAI client metrics as the semantic conventions
name them:

- ``gen_ai.client.token.usage`` (histogram, ``{token}``): input and output
  tokens, with ``gen_ai.operation.name``, ``gen_ai.provider.name``,
  ``gen_ai.token.type``, ``gen_ai.request.model`` and, when known,
  ``gen_ai.response.model``, ``server.address`` and ``server.port``;
- ``gen_ai.client.operation.duration`` (histogram, ``s``): the same
  attributes but the token type, and ``error.type`` for a call that failed
  (an HTTP status, or the exception's name);

both with the conventions' bucket boundaries. And ratebudget's own, each
with ``ratebudget.scope`` (a per-key scope counted as its parent's ``/*``
unless ``per_key=True``):

- ``ratebudget.cost`` (counter, ``{USD}``): what metered calls cost, with
  ``gen_ai.request.model`` and ``gen_ai.provider.name``;
- ``ratebudget.acquire.wait.duration`` (histogram, ``s``): how long
  acquisitions that had to wait waited;
- ``ratebudget.refusals`` (counter): refusals, by ``ratebudget.reason``
  (``cap``, ``runaway``, ``timeout``);
- ``ratebudget.callers.waiting`` (gauge): callers waiting now;
- ``ratebudget.cap.limit``, ``.used``, ``.reserved``, ``.remaining`` and
  ``.forecast`` (gauges): each cap's state now, with ``ratebudget.axis``
  and ``ratebudget.period`` (``day``, ``month``... or ``lifetime``); USD as
  a float of dollars.

Gauges are read from every limiter alive in the process when the reader
collects. ``prometheus(port)`` serves all of it on ``/metrics`` through the
OpenTelemetry Prometheus exporter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from . import __version__
from ._telemetry import LIMITERS, OBSERVERS, Call

__all__ = (
    "DURATION_BUCKETS",
    "TOKEN_BUCKETS",
    "Instrumentation",
    "instrument",
    "prometheus",
)

TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
    16777216, 67108864,
)  # fmt: skip
"""``gen_ai.client.token.usage``'s bucket boundaries (the conventions')."""
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
    40.96, 81.92,
)  # fmt: skip
"""``gen_ai.client.operation.duration``'s bucket boundaries (the conventions')."""
_FRESH: Final = 5.0  # s: the longest one collection of the gauges may take


@dataclass(frozen=True)
class _CapState:
    attributes: dict[str, str]
    limit: float
    used: float
    reserved: float
    remaining: float
    forecast: float | None


class Instrumentation:
    """The instruments ``instrument()`` made; ``uninstrument()`` stops them."""

    def __init__(self, meter: Any, per_key: bool) -> None:
        self.per_key = per_key
        self.port: int | None = None  # ``prometheus()``'s endpoint
        self._closers: list[Any] = []
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._served: set[str] = set()  # gauges given the last read
        self._waiting: list[tuple[str, int]] = []
        self._caps: list[_CapState] = []
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.cost = meter.create_counter(
            "ratebudget.cost", unit="{USD}", description="What metered calls cost."
        )
        self.wait = meter.create_histogram(
            "ratebudget.acquire.wait.duration",
            unit="s",
            description="How long acquisitions that had to wait waited.",
        )
        self.refusals = meter.create_counter(
            "ratebudget.refusals",
            unit="{refusal}",
            description="Acquisitions refused, by reason.",
        )
        meter.create_observable_gauge(
            "ratebudget.callers.waiting",
            callbacks=[self._observe_waiting],
            unit="{caller}",
            description="Callers waiting for a grant now.",
        )
        for field, description in (
            ("limit", "Each cap's limit."),
            ("used", "What each cap counts as used this period."),
            ("reserved", "What outstanding leases hold of each cap."),
            ("remaining", "What each cap has left."),
            ("forecast", "Each cap's usage expected at the end of its period."),
        ):
            meter.create_observable_gauge(
                f"ratebudget.cap.{field}",
                callbacks=[self._cap_gauge(field)],
                description=description,
            )
        OBSERVERS.append(self)

    def uninstrument(self) -> None:
        """Stop recording (the instruments stay with their meter)."""
        if self in OBSERVERS:
            OBSERVERS.remove(self)

    def close(self) -> None:
        """``uninstrument()``, and stop what ``prometheus()`` started."""
        self.uninstrument()
        while self._closers:
            self._closers.pop()()

    # -- the observer (ratebudget._telemetry) ---------------------------------

    def called(self, call: Call) -> None:
        base = {
            "gen_ai.operation.name": call.operation,
            "gen_ai.provider.name": call.provider,
        }
        if call.request_model:
            base["gen_ai.request.model"] = call.request_model
        if call.response_model:
            base["gen_ai.response.model"] = call.response_model
        where: dict[str, str | int] = {}
        if call.server_address:
            where["server.address"] = call.server_address
            if call.server_port:
                where["server.port"] = call.server_port
        timed: dict[str, str | int] = {**base, **where}
        if call.error_type:
            timed["error.type"] = call.error_type
        self.duration.record(call.duration, timed)
        for kind, n in (("input", call.input_tokens), ("output", call.output_tokens)):
            if n is not None:
                self.token_usage.record(n, {**base, **where, "gen_ai.token.type": kind})
        if call.usd is not None:
            attributes = {"ratebudget.scope": call.scope, **base}
            del attributes["gen_ai.operation.name"]
            attributes.pop("gen_ai.response.model", None)
            self.cost.add(float(call.usd), attributes)

    def waited(self, scope: str, seconds: float) -> None:
        self.wait.record(seconds, {"ratebudget.scope": scope})

    def refused(self, scope: str, reason: str) -> None:
        self.refusals.add(1, {"ratebudget.scope": scope, "ratebudget.reason": reason})

    # -- gauges ------------------------------------------------------------------

    def _read(self, gauge: str) -> None:
        """Every limiter's snapshot, once per collection: read again when a
        gauge asks a second time (the next collection), or after a while."""
        with self._lock:
            now = time.monotonic()
            if gauge not in self._served and now - self._read_at < _FRESH:
                self._served.add(gauge)
                return
            self._read_at = now
            self._served = {gauge}
            waiting: dict[str, int] = {}
            caps: dict[tuple[str, str, str], _CapState] = {}
            seen: set[tuple[int, str]] = set()
            for limiter in list(LIMITERS):
                if limiter._keyed and not self.per_key:
                    continue
                scope = limiter.name or ""
                state = (id(limiter.store), scope)  # objects of one state: once
                if state in seen:
                    continue
                seen.add(state)
                try:
                    snap = limiter.sync.snapshot()
                except Exception:  # a store down: its gauges skip this round
                    continue
                waiting[scope] = waiting.get(scope, 0) + snap.waiting
                for s in snap.limits:
                    if s.kind != "cap":
                        continue
                    per = getattr(s.limit, "per", None) or "lifetime"
                    key = (scope, s.axis, per)
                    if key in caps:  # two limiter objects of one name
                        continue
                    f = s.forecast
                    caps[key] = _CapState(
                        {
                            "ratebudget.scope": scope,
                            "ratebudget.axis": s.axis,
                            "ratebudget.period": per,
                        },
                        float(s.limit_amount),
                        float(s.used),
                        float(s.reserved),
                        float(s.remaining),
                        None if f is None or f.expected is None else float(f.expected),
                    )
            self._waiting = list(waiting.items())
            self._caps = list(caps.values())

    def _observe_waiting(self, _options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        self._read("waiting")
        for scope, n in self._waiting:
            yield Observation(n, {"ratebudget.scope": scope})

    def _cap_gauge(self, field: str) -> Any:
        def observe(_options: Any) -> Iterable[Any]:
            from opentelemetry.metrics import Observation

            self._read(field)
            out = []
            for cap in self._caps:
                value = getattr(cap, field)
                if value is not None:
                    out.append(Observation(value, cap.attributes))
            return out

        return observe


def instrument(meter_provider: Any = None, *, per_key: bool = False) -> Instrumentation:
    """Record ratebudget's metrics with ``meter_provider`` (default: the
    global one, ``opentelemetry.metrics.get_meter_provider()``).

    ``per_key=True`` gives each per-key scope its own series; by default
    they are counted under their parent's name with ``/*``, so that a
    million users do not make a million series. Returns the
    ``Instrumentation``; its ``uninstrument()`` stops it.
    """
    try:
        from opentelemetry import metrics
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise ImportError(
            "ratebudget.otel needs OpenTelemetry: pip install 'ratebudget[otel]'"
        ) from e
    provider = (
        metrics.get_meter_provider() if meter_provider is None else meter_provider
    )
    meter = provider.get_meter("ratebudget", __version__)
    return Instrumentation(meter, per_key)


def prometheus(
    port: int = 9464, addr: str = "127.0.0.1", *, per_key: bool = False
) -> Instrumentation:
    """Serve ratebudget's metrics for Prometheus on ``http://addr:port/metrics``
    (loopback by default), through OpenTelemetry's Prometheus exporter.

    Makes a ``MeterProvider`` with a ``PrometheusMetricReader``, instruments
    it, and starts ``prometheus_client``'s HTTP server in a thread (port 0:
    a free one, then read ``.port``). ``close()`` the result to stop it all.
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY, start_http_server

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server, _thread = start_http_server(port, addr)
    made = instrument(provider, per_key=per_key)
    made.port = server.server_port

    def close() -> None:
        server.shutdown()
        server.server_close()
        provider.shutdown()
        collector = getattr(reader, "_collector", None)
        if collector is not None:
            try:
                REGISTRY.unregister(collector)
            except KeyError:  # pragma: no cover - not registered
                pass

    made._closers.append(close)
    return made
