"""Tracing setup, W3C context propagation, the gateway middleware and Triton's flags."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from services.telemetry import metrics, tracing
from services.telemetry.otlp_receiver import OtlpReceiver

OTEL_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
             "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER",
             "OTEL_TRACES_SAMPLER_ARG", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_RESOURCE_ATTRIBUTES")


def _reset_global_provider() -> None:
    # What opentelemetry-python's own test utilities do: the API allows one provider per process.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture(autouse=True)
def clean_otel(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    tracing._reset_for_tests()
    _reset_global_provider()
    yield
    tracing._reset_for_tests()
    _reset_global_provider()


@pytest.fixture
def memory_spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def test_off_without_endpoint_installs_nothing():
    assert tracing.configure_tracing("rts-gateway") is None
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    assert not tracing.tracing_enabled()
    with tracing.span("ingress") as s:
        assert not s.is_recording()
        assert tracing.current_trace_id_hex() is None
        assert tracing.inject_context({}) == {}
    assert tracing.triton_trace_args() == []


def test_sdk_disabled_wins_over_an_endpoint(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_tracing("rts-gateway") is None
    assert tracing.triton_trace_args() == []


def test_a_client_traceparent_passes_through_even_when_tracing_is_off():
    incoming = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.attached_context(incoming):
        assert tracing.current_trace_id_hex() == "0af7651916cd43dd8448eb211c80319c"
        assert tracing.triton_headers() == incoming


def test_spans_nest_and_inject_extract_round_trips(memory_spans):
    with tracing.span("ingress", {"rts.model": "digits"}) as ingress:
        carrier = tracing.inject_context({})
        trace_id = tracing.current_trace_id_hex()
    # flags: sampled (01), plus "random trace id" (02) in this SDK
    assert carrier["traceparent"].startswith(f"00-{trace_id}-{format(ingress.get_span_context().span_id, '016x')}-0")
    # The other side of a Serve handle call or a queued event (header names in any case).
    with tracing.attached_context({"Traceparent": carrier["traceparent"]}):
        with tracing.span("preprocess"):
            assert tracing.current_trace_id_hex() == trace_id
    spans = {s.name: s for s in memory_spans.get_finished_spans()}
    assert spans["preprocess"].parent.span_id == ingress.get_span_context().span_id
    assert format(spans["preprocess"].context.trace_id, "032x") == trace_id
    assert spans["ingress"].attributes["rts.model"] == "digits"
    ctx = trace.get_current_span(tracing.extract_context(carrier)).get_span_context()
    assert format(ctx.trace_id, "032x") == trace_id and ctx.is_remote


def test_stage_records_a_span_and_the_latency_histogram(memory_spans):
    from services.telemetry.instrument import stage

    metrics.reset_metrics("prometheus")
    with tracing.span("ingress"):
        with stage("preprocess", "digits", batch_size=3):
            pass
        with pytest.raises(RuntimeError):
            with stage("triton", "digits"):
                raise RuntimeError("Triton is down")
    spans = {s.name: s for s in memory_spans.get_finished_spans()}
    assert spans["preprocess"].parent.span_id == spans["ingress"].context.span_id
    assert spans["preprocess"].attributes["rts.batch_size"] == 3
    assert spans["triton"].status.status_code == trace.StatusCode.ERROR
    for name in ("preprocess", "triton"):
        assert metrics.sample_value("rts_stage_seconds_count", {"stage": name, "model": "digits"}) == 1


def test_configure_tracing_from_env_exports_protobuf_once_per_process():
    """A fresh process, as a Ray replica or job is: env only, idempotent, spans reach the receiver."""
    code = textwrap.dedent("""
        from services.telemetry import tracing
        provider = tracing.configure_tracing("rts-test")
        assert provider is not None and tracing.configure_tracing("other") is provider
        with tracing.span("ingress"):
            with tracing.span("preprocess"):
                print(tracing.current_trace_id_hex())
        assert tracing.force_flush()
    """)
    with OtlpReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if k not in OTEL_VARS}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        trace_id = out.stdout.strip()
        spans = receiver.wait_for(lambda s: len(s) == 2, timeout=10, trace_id=trace_id)
    by_name = {s.name: s for s in spans}
    assert by_name["preprocess"].parent_span_id == by_name["ingress"].span_id
    assert {s.service_name for s in spans} == {"rts-test"}
    assert {s.body_format for s in spans} == {"protobuf"}


def test_triton_trace_args_follow_the_otel_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")
    args = tracing.triton_trace_args(schedule_delay_ms=200)
    flags = [args[i + 1] for i in range(0, len(args), 2)]
    assert all(a == "--trace-config" for a in args[::2])
    # Triton starts no traces of its own: it joins those whose traceparent the gateway sends.
    assert flags[:3] == ["mode=opentelemetry", f"rate={2**31 - 1}", "level=TIMESTAMPS"]
    assert "opentelemetry,url=http://127.0.0.1:4318/v1/traces" in flags
    assert "opentelemetry,resource=service.name=triton-inference-server" in flags
    assert "opentelemetry,bsp_schedule_delay=200" in flags

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    flags = tracing.triton_trace_args(rate=50)[1::2]
    assert "opentelemetry,url=http://collector:4318/v1/traces" in flags and "rate=50" in flags
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert tracing.triton_trace_args() == []
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    with pytest.raises(ValueError, match="rate"):
        tracing.triton_trace_args(rate=0)

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert tracing.triton_trace_args() == []  # Triton cannot speak OTLP/gRPC
    assert "opentelemetry,url=http://c:4318/v1/traces" in tracing.triton_trace_args("http://c:4318")[1::2]
    with pytest.raises(ValueError, match="http"):
        tracing.triton_trace_args("grpc://c:4317")


def _app(native_tracing: bool = False):
    from services.telemetry.instrument import ObservabilityMiddleware, add_metrics_route

    # FastAPI >= 0.16x traces requests itself once a TracerProvider is installed (a SERVER span
    # "POST /route" parented ONLY on the request headers); the gateway turns that off and lets
    # the middleware's "ingress" span, which also joins Ray Serve's span, be the server span.
    app = FastAPI(telemetry={"tracing": native_tracing})

    @app.post("/v1/models/{model}/predict")
    async def predict(request: Request, model: str):
        request.state.model = model
        request.state.batch_size = 2
        if model == "nope":
            request.state.error_code = "unknown_model"
            return JSONResponse({"error": {"code": "unknown_model"}}, status_code=404)
        request.state.model_version = "3"
        return {"trace_id": tracing.current_trace_id_hex()}

    add_metrics_route(app)
    app.add_middleware(ObservabilityMiddleware)
    return app


def test_middleware_continues_the_client_trace_and_counts_requests(memory_spans):
    from fastapi.testclient import TestClient

    metrics.reset_metrics("prometheus")
    client = TestClient(_app())
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ok = client.post("/v1/models/digits/predict", headers={"traceparent": parent})
    assert ok.status_code == 200
    assert ok.json()["trace_id"] == ok.headers["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"
    assert client.post("/v1/models/nope/predict").status_code == 404

    ingresses = [s for s in memory_spans.get_finished_spans() if s.name == "ingress"]
    assert len(ingresses) == 2, [s.name for s in memory_spans.get_finished_spans()]
    ingress = min(ingresses, key=lambda s: s.start_time)
    assert ingress.kind == trace.SpanKind.SERVER
    assert format(ingress.parent.span_id, "016x") == "b7ad6b7169203331"
    assert ingress.attributes["http.route"] == "/v1/models/{model}/predict"
    assert ingress.attributes["http.response.status_code"] == 200

    route = "/v1/models/{model}/predict"
    assert metrics.sample_value("rts_requests_total",
                                {"route": route, "model": "digits", "version": "3", "status": "200"}) == 1
    assert metrics.sample_value("rts_requests_total",
                                {"route": route, "model": "nope", "version": "", "status": "404"}) == 1
    assert metrics.sample_value("rts_errors_total", {"code": "unknown_model", "route": route}) == 1
    assert metrics.sample_value("rts_stage_seconds_count", {"stage": "total", "model": "digits"}) == 1
    assert metrics.sample_value("rts_batch_size_count", {"model": "digits"}) == 1
    body = client.get("/metrics")
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/plain")
    assert 'rts_requests_total{model="digits",route="/v1/models/{model}/predict",status="200",version="3"} 1.0' \
        in body.text


def test_with_fastapi_native_tracing_left_on_ingress_is_its_child(memory_spans):
    from fastapi.testclient import TestClient

    metrics.reset_metrics("prometheus")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    TestClient(_app(native_tracing=True)).post("/v1/models/digits/predict", headers={"traceparent": parent})
    spans = {s.name: s for s in memory_spans.get_finished_spans()}
    server = spans["POST /v1/models/{model}/predict"]
    assert spans["ingress"].parent.span_id == server.context.span_id
    assert {format(s.context.trace_id, "032x") for s in spans.values()} == {"0af7651916cd43dd8448eb211c80319c"}



def test_stage_times_without_a_span_when_off_and_makes_one_when_a_provider_appears():
    from services.telemetry.instrument import stage

    metrics.reset_metrics("prometheus")
    labels = {"stage": "preprocess", "model": "digits"}
    assert not tracing.spans_recorded()
    with stage("preprocess", "digits", batch_size=1) as s:
        assert not s.is_recording()
    assert metrics.sample_value("rts_stage_seconds_count", labels) == 1

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # e.g. Serve's tracing, installed after our first request
    assert tracing.spans_recorded()
    with stage("preprocess", "digits", batch_size=1) as s:
        assert s.is_recording()
    spans = exporter.get_finished_spans()
    assert [x.name for x in spans] == ["preprocess"] and spans[0].attributes["rts.batch_size"] == 1
    assert metrics.sample_value("rts_stage_seconds_count", labels) == 2


def test_triton_is_sent_the_context_of_sampled_requests_only(monkeypatch):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    # Triton traces every request that carries a valid context, sampled or not: unsampled ones send none.
    for sampler, expect in ((ALWAYS_ON, True), (ALWAYS_OFF, False)):
        tracer = TracerProvider(sampler=sampler).get_tracer("t")
        with tracer.start_as_current_span("triton"):
            headers = tracing.triton_headers()
            assert bool(headers) is expect
            assert tracing.sampled(headers) is expect


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_trace_budget_lets_through_at_most_its_rate_and_refills():
    clock = FakeClock()
    budget = tracing.TraceBudget(5, clock=clock)
    assert [budget.take() for _ in range(7)] == [True] * 5 + [False] * 2  # one second's worth, then none
    clock.now += 0.4
    assert [budget.take() for _ in range(3)] == [True, True, False]  # 0.4 s refills two
    clock.now += 60
    assert sum(budget.take() for _ in range(20)) == 5  # never more than one second's worth saved up
    assert all(tracing.TraceBudget(0).take() for _ in range(1000))  # 0: no limit


def test_sampled_requests_over_the_triton_budget_go_without_context_and_say_so():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    budget = tracing.TraceBudget(2, clock=FakeClock())
    sent = []
    for _ in range(3):
        with tracer.start_as_current_span("triton"):
            sent.append(tracing.triton_headers(budget=budget))
    assert [tracing.sampled(h) for h in sent] == [True, True, False] and sent[2] == {}
    attrs = [dict(s.attributes or {}) for s in exporter.get_finished_spans()]
    assert [a.get("rts.triton_traced") for a in attrs] == [None, None, False]
