"""W3C trace context through storage and messaging: S3/GCS metadata, SQS attributes, Pub/Sub attributes.

Usage::

    # producer: the trace of the upload travels with the object / message
    store.put_bytes(key, data, metadata=trace_carrier())
    sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=sqs_trace_attributes())

    # consumer: continue it
    ctx = extract_context(event.trace_carrier)
    with tracer.start_as_current_span("retrain", context=ctx): ...

Getter/Setter pairs follow opentelemetry-python-contrib's boto3sqs instrumentation: the propagator
configured globally (``OTEL_PROPAGATORS``, W3C tracecontext by default) decides which keys are
written, the carrier adapters decide how. With no active span nothing is injected, and every
function here still works.

Configuration: ``OTEL_PROPAGATORS`` (opentelemetry's own).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

TRACE_KEYS = ("traceparent", "tracestate")

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex. Version 00 is exactly these 55
# characters; a later version may add fields after a dash (read, never passed on as they came).
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_LATER_FIELDS = re.compile(rb"(-[0-9a-zA-Z._-]*)?")
_TRACESTATE = re.compile(rb"[\t\x20-\x7e]*")  # printable ASCII and tabs: list members, commas, OWS
MAX_TRACEPARENT = 256
MAX_TRACESTATE = 512  # what W3C asks every vendor to pass on at least; longer is dropped whole


def valid_traceparent(value: bytes) -> bool:
    """A W3C ``traceparent`` (bytes, as in ASGI headers) that may be continued."""
    if len(value) > MAX_TRACEPARENT:
        return False
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, span_id, _ = match.groups()
    if version == b"ff" or trace_id == b"0" * 32 or span_id == b"0" * 16:
        return False
    rest = value[match.end():]
    return not rest if version == b"00" else _LATER_FIELDS.fullmatch(rest) is not None


def clean_trace_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]] | None:
    """ASGI request headers without a trace context that cannot be trusted; None when they are fine as they are.

    A missing, repeated or malformed ``traceparent`` drops the whole context (its ``tracestate`` is
    then meaningless, as W3C says); a ``tracestate`` that is not printable ASCII or is longer than
    512 bytes in all is dropped alone. What is left is what OpenTelemetry reads: a caller's bytes are
    never logged or passed on unchecked.
    """
    parents = [v for k, v in headers if k == b"traceparent"]
    states = [v for k, v in headers if k == b"tracestate"]
    if not parents and not states:
        return None
    keep_parent = len(parents) == 1 and valid_traceparent(parents[0])
    keep_state = keep_parent and sum(len(v) + 1 for v in states) <= MAX_TRACESTATE + 1 and all(
        _TRACESTATE.fullmatch(v) for v in states)
    if keep_parent and (keep_state or not states):
        return None
    drop = {b"traceparent", b"tracestate"} if not keep_parent else {b"tracestate"}
    return [(k, v) for k, v in headers if k not in drop]


class SqsAttributesSetter(Setter[dict]):
    """SQS MessageAttributes: each value wrapped as a String attribute."""

    def set(self, carrier: dict, key: str, value: str) -> None:
        carrier[key] = {"DataType": "String", "StringValue": value}


class SqsAttributesGetter(Getter[dict]):
    """Reads both shapes SQS produces: receive_message's ``StringValue`` and Lambda's ``stringValue``."""

    def get(self, carrier: dict, key: str) -> list[str] | None:
        attr = carrier.get(key)
        if not isinstance(attr, dict):
            return None
        value = attr.get("StringValue", attr.get("stringValue"))
        return [value] if value is not None else None

    def keys(self, carrier: dict) -> list[str]:
        return list(carrier)


class MappingGetter(Getter[dict]):
    """Plain string maps, case-insensitive: S3 user metadata comes back lower-cased, HTTP headers vary."""

    def get(self, carrier: dict, key: str) -> list[str] | None:
        for k, v in carrier.items():
            if k.lower() == key.lower() and v is not None:
                return [str(v)]
        return None

    def keys(self, carrier: dict) -> list[str]:
        return list(carrier)


class MappingSetter(Setter[dict]):
    def set(self, carrier: dict, key: str, value: str) -> None:
        carrier[key] = value


def trace_carrier(context: Context | None = None) -> dict[str, str]:
    """The current trace context as a str->str map: S3 / GCS object metadata, Pub/Sub attributes."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context, setter=MappingSetter())
    return carrier


def sqs_trace_attributes(context: Context | None = None) -> dict[str, dict[str, str]]:
    """The current trace context as SQS MessageAttributes."""
    carrier: dict[str, dict[str, str]] = {}
    propagate.inject(carrier, context=context, setter=SqsAttributesSetter())
    return carrier


def extract_context(carrier: Mapping | None, getter: Getter = MappingGetter()) -> Context:
    """The remote trace context in `carrier`: HTTP headers or a message's attributes, any case
    (an empty context when there is none)."""
    return propagate.extract(carrier or {}, getter=getter)


def trace_fields(carrier: dict | None, getter: Getter = MappingGetter()) -> dict[str, str]:
    """``traceparent`` / ``tracestate`` found in `carrier`, as CloudEvent extension attributes."""
    found = {}
    for key in TRACE_KEYS:
        values = getter.get(carrier or {}, key)
        if values and values[0]:
            found[key] = values[0]
    return found


def first_trace_fields(*carriers: tuple[dict | None, Getter]) -> dict[str, str]:
    """The first carrier that has a traceparent wins (message attributes before object metadata)."""
    for carrier, getter in carriers:
        fields = trace_fields(carrier, getter)
        if "traceparent" in fields:
            return fields
    return {}
