"""Event source port: every trigger of a retraining run becomes the same ``CloudEvent``.

Usage::

    source = SqsEventSource(queue_url)               # or LocalFolderSource, PubSubEventSource
    for received in source.receive(max_events=10, timeout_s=5):
        handle(received.event)                       # CloudEvent: id, type, data, traceparent...
        source.ack(received)                         # only after the work is safely recorded

Two event types, whatever the cloud:

- ``rts.object.created``: data ``bucket``, ``key``, ``size``, ``etag``, ``version`` (S3 VersionId /
  GCS generation / local mtime_ns), ``uri``;
- ``rts.retrain.requested``: data is free-form, e.g. ``{"reason": "drift", "model": "churn"}``.

Delivery is at least once: a source redelivers what was not acknowledged (after a crash, a
visibility timeout or an ack deadline). Event ids are deterministic for object events
(``bucket/key@etag``) so consumers dedupe redeliveries and re-listings by id.

``traceparent`` / ``tracestate`` follow the CloudEvents distributed-tracing extension: the W3C
trace context of whoever wrote the object or asked for the run, so the run continues that trace.
"""

from __future__ import annotations

import importlib
import uuid
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from services.settings import Settings

OBJECT_CREATED = "rts.object.created"
RETRAIN_REQUESTED = "rts.retrain.requested"


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event (JSON format attribute names), with the distributed-tracing extension."""

    model_config = ConfigDict(extra="forbid")

    specversion: str = Field("1.0", description="CloudEvents spec version")
    id: str = Field(description="Unique per event from a source; redeliveries keep it (consumers dedupe on it)")
    source: str = Field(description="URI of what produced it: s3://bucket, gs://bucket, file:///path, a topic")
    type: str = Field(description=f"{OBJECT_CREATED} or {RETRAIN_REQUESTED}")
    subject: str | None = Field(None, description="The object key, for object events")
    time: datetime = Field(default_factory=lambda: datetime.now(timezone.utc), description="When it happened")
    datacontenttype: str = Field("application/json", description="Always JSON here")
    data: dict[str, Any] = Field(default_factory=dict, description="Type-specific payload (see module docstring)")
    traceparent: str | None = Field(None, description="W3C traceparent of the producer (distributed tracing)")
    tracestate: str | None = Field(None, description="W3C tracestate of the producer")

    @property
    def trace_carrier(self) -> dict[str, str]:
        """The trace context as a carrier dict for ``opentelemetry.propagate.extract``."""
        return {k: v for k, v in (("traceparent", self.traceparent), ("tracestate", self.tracestate)) if v}


class ReceivedEvent(BaseModel):
    """An event plus what its source needs to acknowledge it (receipt handle, Pub/Sub message...)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    event: CloudEvent
    ack_handle: Any = Field(None, exclude=True, repr=False, description="Opaque to consumers; give it back to ack()")


class SourceNotConfigured(ValueError):
    """A source was asked for without what it needs (a queue URL, a subscription, a region)."""


class EventSource(ABC):
    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: "Settings") -> "EventSource":
        """The source the listener settings describe; SourceNotConfigured names what is missing."""

    @abstractmethod
    def receive(self, max_events: int = 10, timeout_s: float = 1.0) -> list[ReceivedEvent]:
        """Up to `max_events` events, waiting at most about `timeout_s` for the first one."""

    @abstractmethod
    def ack(self, received: ReceivedEvent) -> None:
        """Done with it: it will not be delivered again."""

    def close(self) -> None:
        """Release connections and threads. Unacknowledged events come back later."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def object_event_id(bucket: str, key: str, fingerprint: str) -> str:
    """Deterministic id of an object-created event: redeliveries and re-listings get the same one."""
    return f"{bucket}/{key}@{fingerprint}"


def object_created(*, scheme: str, bucket: str, key: str, size: int | None, etag: str | None,
                   version: str | None = None, time: datetime | str | None = None, event_id: str | None = None,
                   source: str | None = None, traceparent: str | None = None, tracestate: str | None = None,
                   sequencer: str | None = None, extra: dict[str, Any] | None = None) -> CloudEvent:
    """The normalized ``rts.object.created`` event, whichever store it comes from."""
    etag = (etag or "").strip('"')
    uri = f"{scheme}://{bucket}/{key}" if scheme != "file" else f"file://{bucket.rstrip('/')}/{key}"
    return CloudEvent(
        id=event_id or object_event_id(bucket, key, etag or sequencer or version or ""),
        source=source or (f"{scheme}://{bucket}" if scheme != "file" else f"file://{bucket}"),
        type=OBJECT_CREATED, subject=key, time=time or datetime.now(timezone.utc),
        data={"bucket": bucket, "key": key, "size": size, "etag": etag, "version": str(version or ""), "uri": uri,
              **(extra or {})},
        traceparent=traceparent or None, tracestate=tracestate or None)


def retrain_requested(data: dict[str, Any], *, source: str, event_id: str | None = None,
                      time: datetime | str | None = None, traceparent: str | None = None,
                      tracestate: str | None = None) -> CloudEvent:
    return CloudEvent(id=event_id or uuid.uuid4().hex, source=source, type=RETRAIN_REQUESTED,
                      subject=str(data.get("model")) if data.get("model") else None,
                      time=time or datetime.now(timezone.utc), data=dict(data),
                      traceparent=traceparent or None, tracestate=tracestate or None)


_SOURCES: dict[str, type[EventSource]] = {}
_SOURCE_MODULES = {"local": "services.events.local", "sqs": "services.events.sqs", "pubsub": "services.events.pubsub"}


def register_source(name: str) -> Callable[[type[EventSource]], type[EventSource]]:
    def decorator(cls: type[EventSource]) -> type[EventSource]:
        cls.name = name
        _SOURCES[name] = cls
        return cls

    return decorator


def source_class(name: str) -> type[EventSource]:
    """The source registered under `name`; its module is imported on first use (boto3, google-cloud)."""
    if name not in _SOURCES and name in _SOURCE_MODULES:
        importlib.import_module(_SOURCE_MODULES[name])
    try:
        return _SOURCES[name]
    except KeyError:
        raise SourceNotConfigured(f"no event source named {name!r} (known: {sorted(_SOURCE_MODULES)})") from None


def open_source(settings: "Settings") -> EventSource:
    """The event source of ``settings.listener`` (RTS_LISTENER_SOURCE and its options)."""
    return source_class(settings.listener.source).from_settings(settings)
