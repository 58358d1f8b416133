"""What serverless triggers deliver: an AWS Lambda's S3 (or S3 -> SQS) event, a Google Cloud Function /
Cloud Run CloudEvent for GCS finalize (or a Pub/Sub message), each as our ``CloudEvent``.

Usage::

    events = events_from_lambda_event(lambda_event)              # list[CloudEvent]
    event = event_from_google_cloud_event(cloud_event)           # CloudEvent, or None for other types

Both normalize to the same ``CloudEvent`` as the long-running sources (same ids, same trace
context). The handlers that start runs from them are in ``services.retraining.serverless``.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from services.events.base import CloudEvent, object_created
from services.events.pubsub import event_from_pubsub_message
from services.events.sqs import events_from_s3_notification
from services.telemetry.propagation import MappingGetter, SqsAttributesGetter, first_trace_fields

log = logging.getLogger("events.serverless")

GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def events_from_lambda_event(event: dict[str, Any]) -> list[CloudEvent]:
    """S3 records as Lambda receives them, directly from S3 or through an SQS trigger."""
    out: list[CloudEvent] = []
    s3_records = []
    for record in event.get("Records") or []:
        if record.get("eventSource") == "aws:sqs":
            body = json.loads(record["body"])
            if body.get("Event") == "s3:TestEvent":
                continue
            out.extend(events_from_s3_notification(body, attributes=record.get("messageAttributes"),
                                                   attributes_getter=SqsAttributesGetter()))
        else:
            s3_records.append(record)
    if s3_records:
        out.extend(events_from_s3_notification({"Records": s3_records}))
    return out


def _attributes(cloud_event: Any) -> dict[str, Any]:
    """CloudEvent context attributes from the cloudevents SDK object, or a plain dict."""
    if hasattr(cloud_event, "get_attributes"):
        return dict(cloud_event.get_attributes())
    if isinstance(cloud_event, dict):
        return dict(cloud_event.get("attributes") or {k: v for k, v in cloud_event.items() if k != "data"})
    return dict(getattr(cloud_event, "attributes", {}) or {})


def _data(cloud_event: Any) -> Any:
    return cloud_event.get("data") if isinstance(cloud_event, dict) else cloud_event.data


def event_from_google_cloud_event(cloud_event: Any) -> CloudEvent | None:
    """A GCS-finalized or Pub/Sub-published CloudEvent (Eventarc) as our CloudEvent."""
    attrs, data = _attributes(cloud_event), _data(cloud_event) or {}
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    ce_type = attrs.get("type")
    if ce_type == PUBSUB_PUBLISHED:
        message = data["message"]
        payload = base64.b64decode(message.get("data") or "")
        return event_from_pubsub_message(message.get("attributes") or {}, payload,
                                         message_id=message.get("messageId") or attrs.get("id"),
                                         source=attrs.get("source") or data.get("subscription", ""),
                                         publish_time=message.get("publishTime") or attrs.get("time"))
    if ce_type != GCS_FINALIZED:
        log.info("ignoring CloudEvent of type %s", ce_type)
        return None
    generation = str(data.get("generation") or "")
    return object_created(
        scheme="gs", bucket=data["bucket"], key=data["name"], size=int(data["size"]) if data.get("size") else None,
        etag=data.get("md5Hash") or data.get("crc32c") or "", version=generation, sequencer=generation,
        time=attrs.get("time") or data.get("updated"), extra={"generation": generation, "event_name": ce_type},
        # Eventarc puts the producer's traceparent in the event's attributes; else the object's metadata.
        **first_trace_fields((attrs, MappingGetter()), (data.get("metadata"), MappingGetter())))
