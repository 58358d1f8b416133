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

from typing import Mapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

TRACE_KEYS = ("traceparent", "tracestate")


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
