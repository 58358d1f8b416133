"""The OTLP/HTTP test receiver: protobuf from the SDK's exporter, JSON as Triton sends it."""

from __future__ import annotations

import gzip
import json
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.telemetry.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver():
    with OtlpReceiver() as r:
        yield r


def test_protobuf_from_the_sdk_exporter(receiver):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent:
        with tracer.start_as_current_span("child", attributes={"n": 3, "ok": True, "tags": ["a", "b"]}):
            pass
    assert OTLPSpanExporter(endpoint=receiver.traces_url).export(memory.get_finished_spans()) \
        == SpanExportResult.SUCCESS
    trace_id = format(parent.get_span_context().trace_id, "032x")
    spans = {s.name: s for s in receiver.wait_for(lambda s: len(s) == 2, timeout=5, trace_id=trace_id)}
    assert spans["child"].parent_span_id == spans["parent"].span_id == format(parent.get_span_context().span_id, "016x")
    assert spans["parent"].parent_span_id is None
    assert spans["child"].attributes == {"n": 3, "ok": True, "tags": ["a", "b"]}
    assert spans["child"].service_name == "unit" and spans["child"].body_format == "protobuf"


def _post(url: str, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        return resp.status


def test_json_as_triton_sends_it_plain_and_gzipped(receiver):
    doc = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "triton-inference-server"}}]},
        "scopeSpans": [{"scope": {"name": "triton-server"}, "spans": [
            {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "4ad83243fe861a59",
             "parentSpanId": "b7ad6b7169203331", "name": "InferRequest", "kind": 2,
             "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000001000000",
             "attributes": [{"key": "triton.model_version", "value": {"intValue": "1"}}]},
        ]}]}]}
    body = json.dumps(doc).encode()
    assert _post(receiver.traces_url, body, {"Content-Type": "application/json"}) == 200
    assert _post(receiver.traces_url, gzip.compress(body),
                 {"Content-Type": "application/json", "Content-Encoding": "gzip"}) == 200
    spans = receiver.wait_for(lambda s: len(s) == 2, timeout=5, trace_id="0af7651916cd43dd8448eb211c80319c")
    span = spans[0]
    assert (span.name, span.parent_span_id, span.service_name) == ("InferRequest", "b7ad6b7169203331",
                                                                  "triton-inference-server")
    assert span.attributes == {"triton.model_version": 1} and span.end_ns - span.start_ns == 1_000_000
    assert span.body_format == "json"


def test_wait_for_says_what_arrived(receiver):
    with pytest.raises(TimeoutError, match="received 0 spans"):
        receiver.wait_for(lambda s: s, timeout=0.2)
