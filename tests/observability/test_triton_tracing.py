"""One trace across our process and a real tritonserver: our span -> InferRequest -> ensemble -> members.

Triton (OpenTelemetry mode, flags from ``triton_trace_args``) continues the W3C ``traceparent``
sent as an HTTP header with the inference call and exports its spans as OTLP/HTTP JSON; our own
span goes out as OTLP/HTTP protobuf through the SDK. The receiver must see both in one trace.
(Over gRPC, Triton loses the context of a few % of requests; traced requests use HTTP.)
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.telemetry.tracing import inject_context

MEMBERS = {"digits_logreg", "digits_mlp", "digits_combine"}


@pytest.fixture
def tracer(otlp_receiver):
    # A local provider (not the global one) so this test leaves no process-wide state behind.
    provider = TracerProvider(resource=Resource.create({"service.name": "rts-gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp_receiver.traces_url)))
    yield provider.get_tracer("test")
    provider.shutdown()


async def _infer(url: str, headers: dict) -> np.ndarray:
    import tritonclient.http.aio as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("pixels", [2, 64], "FP32")
        inp.set_data_from_numpy(np.random.default_rng(0).uniform(0, 16, (2, 64)).astype(np.float32))
        result = await client.infer("digits", [inp], headers=headers)
        return result.as_numpy("probabilities")
    finally:
        await client.close()


def _tree_ok(spans, triton_span_id: str) -> bool:
    names = [s.name for s in spans]
    return "InferRequest" in names and MEMBERS <= set(names) and names.count("compute") >= 3 \
        and triton_span_id in {s.span_id for s in spans}


def test_triton_continues_our_trace(traced_triton, otlp_receiver, tracer):
    with tracer.start_as_current_span("triton") as ours:
        headers = inject_context({})
        probabilities = asyncio.run(_infer(traced_triton.http_url.removeprefix("http://"), headers))
    assert probabilities.shape == (2, 10)
    trace_id = format(ours.get_span_context().trace_id, "032x")
    our_id = format(ours.get_span_context().span_id, "016x")
    spans = otlp_receiver.wait_for(lambda s: _tree_ok(s, our_id), timeout=20, trace_id=trace_id)

    by_id = {s.span_id: s for s in spans}
    (request,) = [s for s in spans if s.name == "InferRequest"]
    assert request.parent_span_id == our_id and request.service_name == "triton-inference-server"
    assert request.body_format == "json" and by_id[our_id].body_format == "protobuf"
    (ensemble,) = [s for s in spans if s.name == "digits"]
    assert ensemble.parent_span_id == request.span_id
    assert ensemble.attributes["triton.model_name"] == "digits"
    for member in MEMBERS:
        (span,) = [s for s in spans if s.name == member]
        assert span.parent_span_id == ensemble.span_id
        assert any(c.name == "compute" and c.parent_span_id == span.span_id for c in spans)
    assert all(s.end_ns >= s.start_ns > 0 for s in spans)


def test_without_traceparent_triton_starts_no_trace_of_its_own(traced_triton, otlp_receiver, tracer):
    # Sampling is the caller's decision: a request with no context is not traced by Triton at all.
    before = {s.trace_id for s in otlp_receiver.spans()}
    url = traced_triton.http_url.removeprefix("http://")
    asyncio.run(_infer(url, {}))
    with tracer.start_as_current_span("triton") as ours:  # then a traced one, exported after it
        asyncio.run(_infer(url, inject_context({})))
    trace_id = format(ours.get_span_context().trace_id, "032x")
    otlp_receiver.wait_for(lambda s: any(x.name == "InferRequest" for x in s), timeout=20, trace_id=trace_id)
    time.sleep(0.5)  # two of Triton's 100 ms export batches
    new = {s.trace_id for s in otlp_receiver.spans() if s.name == "InferRequest"} - before
    assert new == {trace_id}


def test_triton_metrics_port_serves_nv_inference_metrics(traced_triton):
    url = f"http://{traced_triton.host}:{traced_triton.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for name in ("nv_inference_request_success", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_exec_count"):
        assert name in text, name
