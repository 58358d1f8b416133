"""Gateway instrumentation: an ASGI middleware (ingress span + request metrics) and a stage helper.

Usage::

    from services.telemetry.instrument import ObservabilityMiddleware, add_metrics_route, stage

    app = create_app(...)
    app.add_middleware(ObservabilityMiddleware)     # added last = outermost: sees every response
    add_metrics_route(app)                          # GET /metrics (this process's registry)

    with stage("preprocess", model, batch_size=len(items)):   # span "preprocess" + rts_stage_seconds
        features = ...

The middleware

- continues the trace of the request: Ray Serve's replica span when Serve tracing is on (it is the
  current context then), else the request's ``traceparent`` header, else a new trace;
- opens the SERVER span ``ingress`` around the whole request and answers with ``X-Trace-Id``;
- counts ``rts_requests_total{route, model, version, status}`` with the matched route template and
  times ``rts_stage_seconds{stage="total"}`` for requests that name a model;
- reads what only the handlers know from ``request.state``: ``model``, ``model_version``,
  ``batch_size`` and ``error_code`` (set them where the handler learns them).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, ContextManager, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.responses import Response

from services.telemetry import metrics
from services.telemetry.propagation import extract_context
from services.telemetry.tracing import get_tracer, spans_recorded

INGRESS_SPAN = "ingress"


def stage(name: str, model: str, **attributes: Any) -> ContextManager[trace.Span]:
    """Span ``name`` (child of the current one) and ``rts_stage_seconds{stage=name, model}`` for the block.

    With tracing off it is only the timer (no span object) and yields ``trace.INVALID_SPAN``.
    """
    if not spans_recorded():
        return TimedStage(name, model)
    return _traced_stage(name, model, attributes)


class TimedStage:
    """``rts_stage_seconds{stage, model}`` for a block; a class, not a generator: it runs per stage."""

    __slots__ = ("name", "model", "started")

    def __init__(self, name: str, model: str) -> None:
        self.name, self.model = name, model

    def __enter__(self) -> trace.Span:
        self.started = time.perf_counter()
        return trace.INVALID_SPAN

    def __exit__(self, *exc) -> None:
        metrics.observe_stage(self.name, self.model, time.perf_counter() - self.started)


@contextlib.contextmanager
def _traced_stage(name: str, model: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
    attrs = {"rts.model": model, **{f"rts.{k}": v for k, v in attributes.items() if v is not None}}
    with get_tracer().start_as_current_span(name, attributes=attrs) as current:
        with metrics.stage_timer(name, model):
            yield current


class ObservabilityMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware): no extra task per request, streaming bodies untouched."""

    def __init__(self, app, *, exclude_paths: tuple[str, ...] = ("/metrics",)) -> None:
        self.app = app
        self.exclude_paths = exclude_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            return await self.app(scope, receive, send)
        if spans_recorded():
            return await self._traced(scope, receive, send)
        # Tracing off: no spans. A caller's traceparent is still passed on (to Triton, and back as
        # X-Trace-Id), so a traced client keeps one trace id even through an untraced gateway.
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()
                   if k in (b"traceparent", b"tracestate")}
        token, trace_id = None, 0
        if carrier:
            ctx = extract_context(carrier)
            span_context = trace.get_current_span(ctx).get_span_context()
            if span_context.is_valid:
                token, trace_id = otel_context.attach(ctx), span_context.trace_id
        try:
            await self._handle(scope, receive, send, trace.INVALID_SPAN, trace_id)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _traced(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        current = trace.get_current_span().get_span_context()
        # Serve's tracing (when on) already made its replica span current: stay under it.
        parent = None if current.is_valid else extract_context(headers)
        with get_tracer().start_as_current_span(INGRESS_SPAN, context=parent, kind=SpanKind.SERVER,
                                                record_exception=True, set_status_on_exception=True) as span:
            if span.is_recording():
                span.set_attributes({"http.request.method": scope.get("method", ""),
                                     "url.path": scope.get("path", "")})
                if "x-request-id" in headers:
                    span.set_attribute("rts.request_id", headers["x-request-id"])
            await self._handle(scope, receive, send, span, span.get_span_context().trace_id)

    async def _handle(self, scope, receive, send, span: trace.Span, trace_id: int) -> None:
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                if trace_id:
                    message["headers"] = [*message.get("headers", ()),
                                          (b"x-trace-id", format(trace_id, "032x").encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._finish(scope, state, span, scope.get("method", ""), status_holder["status"],
                         time.perf_counter() - started)

    @staticmethod
    def _finish(scope, state: dict, span: trace.Span, method: str, status: int, seconds: float) -> None:
        route_obj = scope.get("route")
        route = getattr(route_obj, "path", None) or "unmatched"
        # The model a route resolved (a served one), never the raw path value: GET /v2/models/<random>
        # must not make a new time series per name.
        model = state.get("model") or ""
        version = state.get("model_version") or ""
        metrics.record_request(route, model, version, status)
        if state.get("model"):
            metrics.observe_stage("total", model, seconds)
        if state.get("batch_size"):
            metrics.record_batch_size(model, int(state["batch_size"]))
        code = state.get("error_code")
        if code or status >= 400:
            metrics.record_error(code or f"http_{status}", route)
        if span.is_recording():
            span.set_attributes({"http.route": route, "http.response.status_code": status,
                                 "rts.model": model, "rts.model_version": str(version)})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


def add_metrics_route(app, path: str = "/metrics") -> None:
    """GET ``path`` with this process's Prometheus exposition (see metrics.py on replicas)."""

    async def metrics_endpoint(request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    app.add_route(path, metrics_endpoint, methods=["GET"], include_in_schema=False)
