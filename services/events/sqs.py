"""S3 object-created notifications (and retrain requests) from an SQS queue.

Usage::

    with SqsEventSource("https://sqs.eu-west-1.amazonaws.com/123/rts-data-events") as source:
        for received in source.receive(max_events=10, timeout_s=20):
            ...
            source.ack(received)            # deletes the SQS message

Set up on AWS: an S3 bucket notification (``s3:ObjectCreated:*``, prefix
``datasets/``) to this queue, directly or through SNS (both shapes are read). The
queue's visibility timeout is the redelivery delay of an event that was received and not acked.

What a message becomes:

- an S3 notification record ``ObjectCreated:*`` -> ``rts.object.created`` with id
  ``bucket/key@etag`` (keys URL-decoded with ``unquote_plus``, as S3 encodes them);
- ``s3:TestEvent`` (sent when the notification is configured) and other S3 events -> deleted, skipped;
- a JSON body ``{"type": "rts.retrain.requested", "data": {...}}`` -> ``rts.retrain.requested``;
- anything else -> logged and left on the queue (its redrive policy moves it to a dead-letter queue).

Trace context: the ``traceparent`` message attribute, else the object's S3 user metadata (S3's
own notifications carry no attributes; a producer that writes ``metadata=trace_carrier()`` is
still followed).

Configuration (``from_settings``): ``RTS_LISTENER_QUEUE_URL``, ``RTS_LISTENER_REGION`` (default: the
region in the queue URL, else boto3's chain), ``RTS_SQS_ENDPOINT_URL`` / ``RTS_S3_ENDPOINT_URL`` for
local servers; credentials from boto3's usual chain.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import unquote_plus

import boto3
from botocore.exceptions import ClientError

from services.events.base import (RETRAIN_REQUESTED, CloudEvent, EventSource, ReceivedEvent, SourceNotConfigured,
                                  object_created, register_source, retrain_requested)
from services.storage.s3 import default_endpoint_url
from services.telemetry.propagation import MappingGetter, SqsAttributesGetter, first_trace_fields

log = logging.getLogger("events.sqs")

MetadataLookup = Callable[[str, str], dict[str, str]]  # (bucket, key) -> S3 user metadata


def events_from_s3_notification(body: dict[str, Any], *, attributes: dict | None = None,
                                attributes_getter=SqsAttributesGetter(),
                                object_metadata: MetadataLookup | None = None) -> list[CloudEvent]:
    """The object-created events in one S3 notification (as SQS, SNS or Lambda deliver it)."""
    if body.get("Type") == "Notification" and "Message" in body:  # S3 -> SNS -> SQS
        body = json.loads(body["Message"])
    events = []
    for record in body.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            continue
        s3 = record["s3"]
        bucket, obj = s3["bucket"]["name"], s3["object"]
        key = unquote_plus(obj["key"])
        # Notifications carry no trace context of their own; the object's metadata may.
        carriers = [(attributes, attributes_getter)]
        if object_metadata is not None and not first_trace_fields(*carriers):
            carriers.append((object_metadata(bucket, key), MappingGetter()))
        events.append(object_created(
            scheme="s3", bucket=bucket, key=key, size=obj.get("size"), etag=obj.get("eTag"),
            version=obj.get("versionId"), sequencer=obj.get("sequencer"), time=record.get("eventTime"),
            extra={"event_name": record.get("eventName"), "region": record.get("awsRegion")},
            **first_trace_fields(*carriers)))
    return events


def region_of(queue_url: str) -> str | None:
    """The region in an AWS queue URL (https://sqs.eu-west-1.amazonaws.com/...), else None."""
    match = re.match(r"https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", queue_url or "")
    return match.group(1) if match else None


@dataclass
class _MessageHandle:
    """One SQS message may hold several records; it is deleted when the last of them is acked."""

    receipt_handle: str
    pending: set[str] = field(default_factory=set)


@register_source("sqs")
class SqsEventSource(EventSource):
    @classmethod
    def from_settings(cls, settings) -> "SqsEventSource":
        queue_url = settings.listener.queue_url
        if not queue_url:
            raise SourceNotConfigured("the sqs source needs a queue: pass --queue-url "
                                      "https://sqs.<region>.amazonaws.com/<account>/<queue> (RTS_LISTENER_QUEUE_URL)")
        region = settings.listener.region or region_of(queue_url) or boto3.session.Session().region_name
        if not region:
            raise SourceNotConfigured(f"the sqs source needs the queue's AWS region: pass --region, set "
                                      f"AWS_DEFAULT_REGION, or use the queue's regional URL (got {queue_url})")
        client = boto3.client("sqs", region_name=region, endpoint_url=settings.sqs_endpoint_url)
        s3 = boto3.client("s3", region_name=region, endpoint_url=settings.s3_endpoint_url or default_endpoint_url())
        return cls(queue_url, client=client, s3_client=s3)

    def __init__(self, queue_url: str, *, client: Any = None, s3_client: Any = None, endpoint_url: str | None = None,
                 visibility_timeout_s: int | None = None, read_object_metadata: bool = True) -> None:
        self.queue_url = queue_url
        self.client = client or boto3.client("sqs", endpoint_url=endpoint_url, region_name=region_of(queue_url))
        self._s3_client = s3_client
        self.visibility_timeout_s = visibility_timeout_s
        self.read_object_metadata = read_object_metadata

    @property
    def s3_client(self) -> Any:
        if self._s3_client is None:
            self._s3_client = boto3.client("s3", endpoint_url=default_endpoint_url())
        return self._s3_client

    def _object_metadata(self, bucket: str, key: str) -> dict[str, str]:
        try:
            return self.s3_client.head_object(Bucket=bucket, Key=key).get("Metadata") or {}
        except ClientError as exc:
            # Gone already (moved by a run) or not readable: the event still counts, untraced.
            log.info("no metadata for s3://%s/%s (%s); event continues without trace context", bucket, key,
                     exc.response.get("Error", {}).get("Code"))
            return {}

    def receive(self, max_events: int = 10, timeout_s: float = 1.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout_s
        out: list[ReceivedEvent] = []
        while len(out) < max_events:
            # Long-poll for the first events; once some arrived, only take what is already there.
            wait_s = 0 if out else min(20, max(0, math.ceil(deadline - time.monotonic())))
            kwargs: dict[str, Any] = {"QueueUrl": self.queue_url, "MaxNumberOfMessages": min(10, max_events - len(out)),
                                      "WaitTimeSeconds": wait_s, "MessageAttributeNames": ["All"],
                                      "AttributeNames": ["All"]}
            if self.visibility_timeout_s is not None:
                kwargs["VisibilityTimeout"] = self.visibility_timeout_s
            messages = self.client.receive_message(**kwargs).get("Messages", [])
            for message in messages:
                out.extend(self._events(message))
            if not messages and (out or time.monotonic() >= deadline):
                break
        return out

    def _events(self, message: dict) -> list[ReceivedEvent]:
        try:
            body = json.loads(message["Body"])
        except (json.JSONDecodeError, TypeError):
            log.error("SQS message %s is not JSON; leaving it for the dead-letter queue", message.get("MessageId"))
            return []
        attributes = message.get("MessageAttributes") or {}
        if body.get("type") == RETRAIN_REQUESTED:
            event = retrain_requested(body.get("data") or {}, source=self.queue_url, event_id=message["MessageId"],
                                      **first_trace_fields((attributes, SqsAttributesGetter())))
            events = [event]
        elif "Records" in body or body.get("Type") == "Notification":
            lookup = self._object_metadata if self.read_object_metadata else None
            events = events_from_s3_notification(body, attributes=attributes, object_metadata=lookup)
        elif body.get("Event") == "s3:TestEvent":
            events = []
        else:
            log.error("SQS message %s is neither an S3 notification nor a retrain request; leaving it for the "
                      "dead-letter queue", message.get("MessageId"))
            return []
        if not events:  # test events, deletions: nothing to do, never see them again
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            return []
        handle = _MessageHandle(message["ReceiptHandle"], {e.id for e in events})
        return [ReceivedEvent(event=e, ack_handle=handle) for e in events]

    def ack(self, received: ReceivedEvent) -> None:
        handle: _MessageHandle = received.ack_handle
        handle.pending.discard(received.event.id)
        if not handle.pending:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=handle.receipt_handle)

    def close(self) -> None:
        self.client.close()
        if self._s3_client is not None:
            self._s3_client.close()
