"""GCS object-finalize notifications and retrain requests from a Pub/Sub subscription (streaming pull).

Usage::

    with PubSubEventSource("projects/P/subscriptions/rts-data-events") as source:
        for received in source.receive(max_events=10, timeout_s=5):
            ...
            source.ack(received)            # acks the Pub/Sub message; nothing is acked before

Set up on GCP: a bucket notification (``gcloud storage buckets notifications create gs://B
--topic=T --event-types=OBJECT_FINALIZE --object-prefix=datasets/``), and/or a
"retrain" topic that people and schedulers publish JSON to
(``services.retraining.requests.publish_retrain_request``); one
subscription per topic, or one topic for both.

What a message becomes:

- attributes ``eventType=OBJECT_FINALIZE``, ``bucketId``, ``objectId``, ``objectGeneration`` ->
  ``rts.object.created`` with id ``bucket/object@md5`` (generation when there is no hash);
- other ``eventType`` values (deletes, metadata updates) -> acked and skipped;
- no ``eventType``: a JSON object body -> ``rts.retrain.requested`` with that object as data (or its
  ``data`` member when the body is ``{"type": "rts.retrain.requested", "data": {...}}``), id = message id;
- a body that is not a JSON object -> logged as an error and acked: it can never become valid, and a
  nacked message would come straight back, forever.

The client keeps extending the ack deadline of messages it holds (up to ``max_lease_s``), so a
slow consumer does not get duplicates while it is alive. ``close()`` nacks what was received and
not acked, so it comes back at once; after a crash it comes back when the last deadline extension
(``lease_extension_s``, the library's 60 s by default) runs out.

Trace context: the ``traceparent`` / ``tracestate`` message attributes, else the object's custom
metadata in the notification body.

Configuration: Application Default Credentials; ``PUBSUB_EMULATOR_HOST`` for the emulator.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
from typing import Any

from services.events.base import (RETRAIN_REQUESTED, CloudEvent, EventSource, ReceivedEvent, SourceNotConfigured,
                                  object_created, register_source, retrain_requested)
from services.telemetry.propagation import MappingGetter, first_trace_fields

log = logging.getLogger("events.pubsub")

OBJECT_FINALIZE = "OBJECT_FINALIZE"


class NotAnEvent(ValueError):
    """The message is neither a storage notification nor a retrain request."""


def event_from_pubsub_message(attributes: dict[str, str], data: bytes, *, message_id: str, source: str,
                              publish_time: Any = None) -> CloudEvent | None:
    """The event in one Pub/Sub message; None for notifications that trigger nothing (deletes...)."""
    attributes = dict(attributes or {})
    event_type = attributes.get("eventType")
    if event_type is not None:
        if event_type != OBJECT_FINALIZE:
            return None
        resource = _json_object(data) if data else {}  # payloadFormat JSON_API_V1: the object resource
        bucket, key = attributes["bucketId"], attributes["objectId"]
        generation = attributes.get("objectGeneration") or resource.get("generation")
        return object_created(
            scheme="gs", bucket=bucket, key=key, size=_int(resource.get("size")),
            etag=resource.get("md5Hash") or resource.get("crc32c") or "", version=generation,
            sequencer=generation, time=attributes.get("eventTime") or publish_time,
            extra={"generation": str(generation or ""), "event_name": event_type},
            **first_trace_fields((attributes, MappingGetter()), (resource.get("metadata"), MappingGetter())))
    body = _json_object(data)
    payload = body.get("data") if body.get("type") == RETRAIN_REQUESTED and isinstance(body.get("data"), dict) else body
    return retrain_requested(payload, source=source, event_id=message_id, time=publish_time,
                             **first_trace_fields((attributes, MappingGetter())))


def _json_object(data: bytes) -> dict:
    try:
        body = json.loads(data or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotAnEvent(f"the message body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise NotAnEvent(f"the message body is JSON {type(body).__name__}, not an object")
    return body


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


@register_source("pubsub")
class PubSubEventSource(EventSource):
    @classmethod
    def from_settings(cls, settings) -> "PubSubEventSource":
        subscription = settings.listener.subscription
        if not subscription:
            raise SourceNotConfigured("the pubsub source needs a subscription: pass --subscription "
                                      "projects/<project>/subscriptions/<name> (RTS_LISTENER_SUBSCRIPTION)")
        if not re.fullmatch(r"projects/[^/]+/subscriptions/[^/]+", subscription):
            raise SourceNotConfigured(f"--subscription must look like projects/<project>/subscriptions/<name>, "
                                      f"got {subscription!r}")
        return cls(subscription)

    def __init__(self, subscription: str, *, subscriber: Any = None, max_outstanding: int = 100,
                 max_lease_s: int = 3600, lease_extension_s: int = 0) -> None:
        # Imported here: the parsing above serves the serverless adapters, which do without google-cloud-pubsub.
        from google.cloud import pubsub_v1

        self.subscription = subscription
        self.source = f"//pubsub.googleapis.com/{subscription}"
        self.subscriber = subscriber or pubsub_v1.SubscriberClient()
        self._messages: queue.Queue = queue.Queue()
        self._outstanding: dict[str, Any] = {}  # message id -> message handed out and not yet acked
        # lease_extension_s (10..600) bounds each deadline extension, and so how long messages held by
        # a consumer that died stay invisible; 0 keeps the library's 60 s.
        flow = pubsub_v1.types.FlowControl(max_messages=max_outstanding, max_lease_duration=max_lease_s,
                                           max_duration_per_lease_extension=lease_extension_s)
        # The callback only queues the message: acking is the consumer's decision (ack()), never automatic.
        self._future = self.subscriber.subscribe(subscription, callback=self._messages.put, flow_control=flow)

    def receive(self, max_events: int = 10, timeout_s: float = 1.0) -> list[ReceivedEvent]:
        if self._future.done():  # the stream died for good (subscription deleted, permissions...)
            self._future.result()
        deadline = time.monotonic() + timeout_s
        out: list[ReceivedEvent] = []
        while len(out) < max_events:
            remaining = deadline - time.monotonic()
            try:
                # Wait for the first event; after that, only take what is already queued.
                message = self._messages.get(timeout=remaining) if not out and remaining > 0 else \
                    self._messages.get_nowait()
            except queue.Empty:
                break
            try:
                event = event_from_pubsub_message(dict(message.attributes), message.data,
                                                  message_id=message.message_id, source=self.source,
                                                  publish_time=message.publish_time)
            except (NotAnEvent, KeyError) as exc:
                log.error("dropping Pub/Sub message %s on %s: it is not an event we understand (%s)",
                          message.message_id, self.subscription, exc)
                message.ack()
                continue
            if event is None:
                message.ack()
                continue
            self._outstanding[message.message_id] = message
            out.append(ReceivedEvent(event=event, ack_handle=message))
        return out

    def ack(self, received: ReceivedEvent) -> None:
        received.ack_handle.ack()
        self._outstanding.pop(received.ack_handle.message_id, None)

    def close(self) -> None:
        self._future.cancel()  # first stop the stream, so nothing renews the leases we give up below
        try:
            self._future.result(timeout=10)
        except Exception:  # noqa: BLE001 - a cancelled stream ends with an error; we are closing anyway
            pass
        # Hand back what we hold but did not finish (received or still queued), so another consumer
        # gets it now rather than after the ack deadline. A synchronous call: message.nack() only
        # queues the request on the stream we just closed.
        ack_ids = [m.ack_id for m in [*self._outstanding.values(), *self._drain_queue()]]
        self._outstanding.clear()
        for start in range(0, len(ack_ids), 1000):
            try:
                self.subscriber.modify_ack_deadline(subscription=self.subscription,
                                                    ack_ids=ack_ids[start:start + 1000], ack_deadline_seconds=0)
            except Exception as exc:  # noqa: BLE001 - they come back after the deadline anyway
                log.warning("could not hand back %d unacked messages on close (%s); they return after their "
                            "ack deadline", len(ack_ids[start:start + 1000]), exc)
        self.subscriber.close()

    def _drain_queue(self) -> list[Any]:
        drained = []
        while True:
            try:
                drained.append(self._messages.get_nowait())
            except queue.Empty:
                return drained
