"""OpenTelemetry tracing: one trace from the HTTP request through Ray Serve, Triton and retraining.

Usage::

    from services.telemetry.tracing import configure_tracing, span, inject_context

    configure_tracing("rts-gateway")          # once per process; a no-op when no endpoint is set
    with span("preprocess", {"rts.model": "churn"}):
        ...
    headers = {"traceparent": ...}            # inject_context({}) gives the W3C headers of "now"

Configuration (only the standard OpenTelemetry variables, read when ``configure_tracing`` runs):

- ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (full URL, e.g. ``http://127.0.0.1:4318/v1/traces``) or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (base URL; ``/v1/traces`` is appended). Neither set: tracing is
  off, no provider is installed and every span is the API's no-op span.
- ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``
  (default) or ``grpc``.
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: override the ``service_name`` argument.
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: read by the SDK itself (default
  ``parentbased_always_on``). ``OTEL_BSP_*`` tune the BatchSpanProcessor.
- ``OTEL_SDK_DISABLED=true``: off, whatever else is set.

Triton exports its own spans (OTLP/HTTP, JSON body) when started with ``triton_trace_args()``, and
traces exactly the requests that carry a ``traceparent`` (it always samples a request with a valid
incoming context, whatever its rate): pass ``headers=triton_headers()``, which is empty unless the
current span is sampled. Send traced requests over HTTP: Triton's gRPC frontend loses the incoming
context of a few percent of requests (``services.triton.client.TritonClient`` does this).

Ray Serve: a handle call to another replica does not carry our context unless Serve's own tracing
is on; pass ``inject_context({})`` as an argument and wrap the callee in ``attached_context(carrier)``.
With ``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH=services.telemetry.tracing:serve_span_processors``
in the environment of ``ray start``, Serve's proxy and replica spans go to the same endpoint and
``configure_tracing`` reuses Serve's provider instead of installing a second one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any, Iterator, Mapping, MutableMapping
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from services.telemetry.propagation import extract_context

log = logging.getLogger(__name__)

TRACER_NAME = "rts"
TRITON_SERVICE_NAME = "triton-inference-server"

_lock = threading.Lock()
_configured = False
_provider = None  # the SDK TracerProvider we installed or joined, None when tracing is off
_serve_exports = False  # set when Serve's provider already exports through serve_span_processors()


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _disabled() -> bool:
    return _env("OTEL_SDK_DISABLED").lower() == "true"


def otlp_traces_endpoint() -> str | None:
    """The OTLP traces URL the OTEL_* variables point at, or None when tracing is off."""
    if _disabled():
        return None
    explicit = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if explicit:
        return explicit
    base = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    if _protocol() == "grpc":
        return base  # gRPC has no signal path
    return base.rstrip("/") + "/v1/traces"


def _protocol() -> str:
    return (_env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf").lower()


def tracing_enabled() -> bool:
    """True when this process exports spans (configure_tracing installed or joined a provider)."""
    return _provider is not None


_spans_recorded = False
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ  # the API then builds one lazily


def spans_recorded() -> bool:
    """True when a real (SDK) TracerProvider is installed in this process, by us, Serve or a test.

    Hot paths check this first: with tracing off they create no span objects at all, so "off"
    costs this call per stage (about 0.1 us) instead of a no-op span's context-manager machinery.
    OpenTelemetry installs a provider at most once per process, so a yes is final; a no is
    answered from the API module's global without its environment lookup.
    """
    global _spans_recorded
    if _spans_recorded:
        return True
    if not _PROVIDER_FROM_ENV and getattr(trace, "_TRACER_PROVIDER", ...) is None:
        return False
    _spans_recorded = not isinstance(trace.get_tracer_provider(),
                                     (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return _spans_recorded


def _make_exporter():
    protocol = _protocol()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported here; "
                         "use http/protobuf or grpc")
    return OTLPSpanExporter()  # reads endpoint, headers, timeout, compression from OTEL_* itself


def configure_tracing(service_name: str | None = None):
    """Install a TracerProvider exporting to the OTLP endpoint of the environment; idempotent.

    Returns the SDK TracerProvider, or None when tracing is off (no endpoint, or OTEL_SDK_DISABLED).
    ``service_name`` is the default ``service.name``; OTEL_SERVICE_NAME wins over it.
    If another SDK provider is already installed (Ray Serve's own tracing), spans are added to it
    rather than replacing it, since OpenTelemetry allows one global provider per process.
    """
    global _configured, _provider
    with _lock:
        if _configured:
            return _provider
        _configured = True
        if otlp_traces_endpoint() is None:
            return None
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            if not _serve_exports:
                current.add_span_processor(BatchSpanProcessor(_make_exporter()))
            _provider = current
            return _provider
        attributes = {} if _env("OTEL_SERVICE_NAME") or not service_name else {SERVICE_NAME: service_name}
        provider = TracerProvider(resource=Resource.create(attributes))  # sampler from OTEL_TRACES_SAMPLER
        provider.add_span_processor(BatchSpanProcessor(_make_exporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("tracing to %s (%s)", otlp_traces_endpoint(), _protocol())
        return _provider


def shutdown_tracing() -> None:
    """Flush and stop exporting (end of a job); tracing stays off for the rest of the process."""
    if _provider is not None:
        _provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export every finished span now (before a short-lived process exits)."""
    return _provider.force_flush(timeout_ms) if _provider is not None else True


def serve_span_processors() -> list:
    """Ray Serve's tracing hook: ``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH=<this module>:serve_span_processors``.

    Serve calls it with no arguments in its proxy and every replica; the spans go to the same OTLP
    endpoint as ours. Without an endpoint it returns no processors (Serve's spans are dropped).
    """
    global _serve_exports
    if otlp_traces_endpoint() is None:
        return []
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    _serve_exports = True
    return [BatchSpanProcessor(_make_exporter())]


def get_tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
         context: otel_context.Context | None = None) -> Iterator[trace.Span]:
    """A span named ``name``, current for the block; exceptions are recorded and mark it ERROR."""
    with get_tracer().start_as_current_span(name, context=context, kind=kind,
                                            attributes=dict(attributes) if attributes else None) as current:
        yield current


# ---- W3C trace context --------------------------------------------------------------------------

def inject_context(carrier: MutableMapping[str, str] | None = None,
                   context: otel_context.Context | None = None) -> MutableMapping[str, str]:
    """Write the current (or given) context as W3C headers into carrier and return it.

    Empty when there is no valid span context, so it is always safe to send.
    """
    carrier = {} if carrier is None else carrier
    propagate.inject(carrier, context=context)
    return carrier


def current_trace_id_hex() -> str | None:
    """The 32-hex-digit trace id of the current span, or None outside any (valid) trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_traceparent() -> str | None:
    """The current context as a W3C ``traceparent`` value (for an event's ``traceparent`` field)."""
    return inject_context({}).get("traceparent")


@contextlib.contextmanager
def attached_context(carrier: Mapping[str, str] | otel_context.Context | None) -> Iterator[None]:
    """Make the context in ``carrier`` (W3C headers dict from ``inject_context``) current for the block.

    The other side of a Ray Serve handle call, a Ray task or a queued event. A carrier with no
    valid ``traceparent`` changes nothing.
    """
    if carrier is None:
        yield
        return
    ctx = carrier if isinstance(carrier, otel_context.Context) else extract_context(carrier)
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


# ---- Triton -------------------------------------------------------------------------------------

# Triton samples 1 in ``rate`` requests that come without a trace context, and always samples one
# that carries a valid context. The default rate is the largest Triton accepts: it starts no traces
# of its own and joins exactly the ones its callers sampled (the gateway's parent-based sampler).
TRITON_CONTEXT_ONLY_RATE = 2**31 - 1


def _sampler_off() -> bool:
    return _env("OTEL_TRACES_SAMPLER").lower() in ("always_off", "parentbased_always_off")


def triton_trace_args(endpoint: str | None = None, *, rate: int | None = None, level: str = "TIMESTAMPS",
                      service_name: str = TRITON_SERVICE_NAME, schedule_delay_ms: int | None = None) -> list[str]:
    """``tritonserver`` flags for its OpenTelemetry mode, exporting to our OTLP/HTTP endpoint.

    ``endpoint`` defaults to the OTEL_* variables (the ``/v1/traces`` URL). Triton only speaks
    OTLP/HTTP: with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` pass the collector's HTTP URL explicitly,
    or Triton's spans are left out (with a warning). ``rate``: Triton also starts a trace for 1 in
    ``rate`` requests that arrive without a context (default: never, see TRITON_CONTEXT_ONLY_RATE);
    ``schedule_delay_ms`` defaults to OTEL_BSP_SCHEDULE_DELAY (Triton's own default: 5000).
    Empty list when tracing is off, so the result can always be appended to the command line.
    """
    if endpoint is None:
        if _disabled():
            return []
        endpoint = otlp_traces_endpoint()
        if endpoint is None:
            return []
        if _protocol() == "grpc":
            log.warning("Triton exports OTLP over HTTP only; OTEL_EXPORTER_OTLP_PROTOCOL=grpc, so Triton's "
                        "spans are off. Pass triton_trace_args(endpoint='http://collector:4318/v1/traces').")
            return []
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Triton needs an http(s):// OTLP traces URL, got {endpoint!r}")
    if not parts.path or parts.path == "/":
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    if _sampler_off():
        return []
    rate = TRITON_CONTEXT_ONLY_RATE if rate is None else rate
    if not 1 <= rate <= TRITON_CONTEXT_ONLY_RATE:
        raise ValueError(f"Triton's trace rate must be 1..{TRITON_CONTEXT_ONLY_RATE}, got {rate}")
    if schedule_delay_ms is None:
        delay = _env("OTEL_BSP_SCHEDULE_DELAY")
        schedule_delay_ms = int(delay) if delay.isdigit() else None
    args = [
        "--trace-config", "mode=opentelemetry",
        "--trace-config", f"rate={rate}",
        "--trace-config", f"level={level}",
        "--trace-config", "count=-1",
        "--trace-config", f"opentelemetry,url={endpoint}",
        "--trace-config", f"opentelemetry,resource=service.name={service_name}",
    ]
    if schedule_delay_ms is not None:
        args += ["--trace-config", f"opentelemetry,bsp_schedule_delay={schedule_delay_ms}"]
    return args


class TraceBudget:
    """At most ``per_s`` traces a second (a token bucket holding one second's worth); thread-safe.

    Why: Triton 2.x (pytriton 0.7's tritonserver here) crashes with SIGABRT/SIGSEGV once its
    OpenTelemetry BatchSpanProcessor queue overflows ("queue is full - dropping span"), which it does when
    every request is traced under load (triton-inference-server/server#7795; reproduced here: 16 clients,
    every request traced, dead in 27 s; the same load with 50 traced requests a second, 256,541 requests
    in 150 s, no crash).
    """

    def __init__(self, per_s: float, clock=time.monotonic) -> None:
        self.per_s, self.clock = per_s, clock
        self._tokens, self._at = per_s, clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self.per_s <= 0:
            return True  # no limit
        with self._lock:
            now = self.clock()
            self._tokens = min(self.per_s, self._tokens + (now - self._at) * self.per_s)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


def triton_headers(carrier: MutableMapping[str, str] | None = None,
                   budget: TraceBudget | None = None) -> dict[str, str]:
    """Headers that make Triton trace this request inside the current trace; empty unless it is sampled
    (and, with a ``budget``, unless the budget has room: the gateway's span then says ``rts.triton_traced``
    false, and Triton's part of that trace is missing).

    Triton traces every request that carries a valid context, sampled flag or not, so an unsampled
    request must not send one (its spans would be exported under a parent nobody records).
    """
    current = trace.get_current_span()
    if not current.get_span_context().trace_flags.sampled:
        return {}
    if budget is not None and not budget.take():
        current.set_attribute("rts.triton_traced", False)
        return {}
    return dict(inject_context(carrier))


def sampled(headers: Mapping[str, str] | None) -> bool:
    """True when ``headers`` carry a W3C ``traceparent`` with the sampled flag (``00-<trace>-<span>-01``)."""
    parts = (headers or {}).get("traceparent", "").split("-")
    if len(parts) != 4 or len(parts[3]) != 2:
        return False
    try:
        return int(parts[3], 16) & 1 == 1
    except ValueError:
        return False


def _reset_for_tests() -> None:
    """Forget this module's state (tests only; the global provider itself cannot be unset)."""
    global _configured, _provider, _serve_exports, _spans_recorded
    with _lock:
        _configured, _provider, _serve_exports, _spans_recorded = False, None, False, False
