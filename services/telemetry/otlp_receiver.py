"""A small OTLP/HTTP trace receiver for tests and local debugging (no collector is installable here).

Usage::

    with OtlpReceiver() as receiver:                 # 127.0.0.1, a free port
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint   # http://127.0.0.1:PORT
        ...
        spans = receiver.wait_for(lambda s: any(x.name == "compute" for x in s), timeout=10)

It accepts ``POST /v1/traces`` with a protobuf body (``application/x-protobuf``, what the Python
SDK sends) or a JSON body (``application/json``, what Triton sends), gzip or not, and keeps every
span in memory. ``POST /v1/metrics`` and ``/v1/logs`` are accepted and dropped.
``python -m services.telemetry.otlp_receiver --port 4318`` prints spans as they arrive.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gzip
import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # 32 lowercase hex characters
    span_id: str  # 16 hex characters
    parent_span_id: str | None
    name: str
    service_name: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0
    kind: int = 0
    status_code: int = 0
    scope: str | None = None
    body_format: str = "protobuf"  # how it arrived: protobuf | json


Predicate = Callable[[list[ReceivedSpan]], Any]


class OtlpReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._spans: list[ReceivedSpan] = []
        self._cond = threading.Condition()
        self.errors: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = self.path.split("?", 1)[0].rstrip("/")
                try:
                    body = _decompress(body, self.headers.get("Content-Encoding", ""))
                    ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    if path == "/v1/traces":
                        if ctype == "application/json":
                            spans = parse_json(body)
                            reply, reply_type = b"{}", "application/json"
                        else:
                            spans = parse_protobuf(body)
                            reply, reply_type = _empty_proto_response(), "application/x-protobuf"
                        receiver._add(spans)
                    elif path in ("/v1/metrics", "/v1/logs"):
                        reply, reply_type = b"{}", "application/json"
                    else:
                        self._reply(404, b"not found", "text/plain")
                        return
                except Exception as exc:  # a malformed export is a test failure, not a crash
                    receiver.errors.append(f"{type(exc).__name__}: {exc}")
                    self._reply(400, str(exc).encode(), "text/plain")
                    return
                self._reply(200, reply, reply_type)

            def _reply(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """Base URL, for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{self._server.server_address[0]}:{self.port}"

    @property
    def traces_url(self) -> str:
        """Full traces URL, for OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and Triton's opentelemetry,url."""
        return self.endpoint + "/v1/traces"

    def start(self) -> "OtlpReceiver":
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- queries --------------------------------------------------------------------------------
    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._cond:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id.lower()]

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    def wait_for(self, predicate: Predicate, timeout: float = 10.0, trace_id: str | None = None) -> list[ReceivedSpan]:
        """Block until ``predicate(spans)`` is truthy (spans of ``trace_id`` if given); return those spans.

        Raises TimeoutError listing what did arrive, so a failing test says what was missing.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                spans = [s for s in self._spans if trace_id is None or s.trace_id == trace_id.lower()]
                if predicate(spans):
                    return spans
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({(s.service_name, s.name) for s in spans})
                    where = f"of trace {trace_id} " if trace_id else ""
                    raise TimeoutError(f"spans did not arrive within {timeout:g}s; received {len(spans)} spans "
                                       f"{where}{seen} ({len(self._spans)} in all); "
                                       f"export errors: {self.errors or 'none'}")
                self._cond.wait(left)


# ---- decoding -----------------------------------------------------------------------------------

def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _empty_proto_response() -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    return ExportTraceServiceResponse().SerializeToString()


def _proto_value(value) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_proto_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _proto_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def parse_protobuf(body: bytes) -> list[ReceivedSpan]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: _proto_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(ReceivedSpan(
                    trace_id=sp.trace_id.hex(), span_id=sp.span_id.hex(),
                    parent_span_id=sp.parent_span_id.hex() or None, name=sp.name,
                    service_name=resource.get("service.name"),
                    attributes={kv.key: _proto_value(kv.value) for kv in sp.attributes},
                    start_ns=sp.start_time_unix_nano, end_ns=sp.end_time_unix_nano, kind=sp.kind,
                    status_code=sp.status.code, scope=ss.scope.name or None, body_format="protobuf"))
    return out


def _json_id(value: str | None) -> str | None:
    """OTLP/JSON ids are hex (the spec); tolerate base64 (proto3 JSON mapping of bytes) too."""
    if not value:
        return None
    text = value.strip()
    try:
        if len(text) in (16, 32):
            int(text, 16)
            return text.lower()
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True).hex() or None
    except (binascii.Error, ValueError):
        return text.lower()


def _json_value(value: dict) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    (kind, inner), = value.items()
    if kind == "intValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)
    if kind == "arrayValue":
        return [_json_value(v) for v in inner.get("values", [])]
    if kind == "kvlistValue":
        return {kv["key"]: _json_value(kv.get("value", {})) for kv in inner.get("values", [])}
    return inner


def _json_attrs(items: list | None) -> dict[str, Any]:
    return {kv["key"]: _json_value(kv.get("value", {})) for kv in items or []}


def _first(d: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in d:
            return d[key]
    return default


def parse_json(body: bytes) -> list[ReceivedSpan]:
    """OTLP/JSON (camelCase per the spec; snake_case accepted as some exporters write it)."""
    doc = json.loads(body or b"{}")
    out = []
    for rs in _first(doc, "resourceSpans", "resource_spans", default=[]):
        resource = _json_attrs(rs.get("resource", {}).get("attributes"))
        for ss in _first(rs, "scopeSpans", "scope_spans", "instrumentationLibrarySpans", default=[]):
            scope = _first(ss, "scope", "instrumentationLibrary", default={}) or {}
            for sp in ss.get("spans", []):
                status = sp.get("status") or {}
                code = status.get("code", 0)
                out.append(ReceivedSpan(
                    trace_id=_json_id(_first(sp, "traceId", "trace_id")) or "",
                    span_id=_json_id(_first(sp, "spanId", "span_id")) or "",
                    parent_span_id=_json_id(_first(sp, "parentSpanId", "parent_span_id")),
                    name=sp.get("name", ""), service_name=resource.get("service.name"),
                    attributes=_json_attrs(sp.get("attributes")),
                    start_ns=int(_first(sp, "startTimeUnixNano", "start_time_unix_nano", default=0)),
                    end_ns=int(_first(sp, "endTimeUnixNano", "end_time_unix_nano", default=0)),
                    kind=sp.get("kind", 0) if isinstance(sp.get("kind", 0), int) else 0,
                    status_code=code if isinstance(code, int) else 0,
                    scope=scope.get("name"), body_format="json"))
    return out


def main() -> None:  # pragma: no cover - a debugging aid
    parser = argparse.ArgumentParser(description="print OTLP/HTTP spans as they arrive")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    with OtlpReceiver(port=args.port) as receiver:
        print(f"OTLP/HTTP receiver on {receiver.endpoint} (Ctrl-C stops)", flush=True)
        seen = 0
        try:
            while True:
                spans = receiver.wait_for(lambda s: len(s) > seen, timeout=3600)
                for s in spans[seen:]:
                    print(f"{s.trace_id} {s.span_id} <- {s.parent_span_id or '-':16} "
                          f"{s.service_name}: {s.name} {(s.end_ns - s.start_ns) / 1e6:.2f} ms", flush=True)
                seen = len(spans)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
