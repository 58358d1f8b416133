"""Serverless entry points: an AWS Lambda for S3 (or S3 -> SQS) events, a Google Cloud Function /
Cloud Run handler for GCS finalize (or Pub/Sub) CloudEvents. Both start a retraining run.

Usage::

    # AWS Lambda, handler "services.events.serverless.lambda_handler"
    #   triggers: S3 ObjectCreated on the data bucket, or the SQS queue those notifications go to
    # Google Cloud Functions gen2 / Cloud Run functions, entry point "cloud_event_handler"
    #   (functions-framework: ``@functions_framework.cloud_event`` is applied in main.py of the deploy)
    #   triggers: google.cloud.storage.object.v1.finalized, or a Pub/Sub topic (retrain requests)

    # Tests and other hosts inject the submitter:
    lambda_handler(event, None, submit_retraining=lambda events: "run-1")

Both normalize to the same ``CloudEvent`` as the long-running sources, keep only events that
trigger retraining (new data under ``datasets/digits/incoming/``, explicit retrain requests: the
run itself writes to the same bucket, so anything else would retrigger it), and hand them to
``submit_retraining(events) -> run id``. The default submits a Ray Job through
``services.retraining.jobs.submit_run`` (entrypoint ``python -m services.retraining.run
--run-id ... --events-json ...``), the same path as the listener and the CLI.

Configuration: ``RTS_RAY_DASHBOARD_URL`` (the Ray Jobs API, e.g. ``http://ray-head:8265``) and the
``RTS_*`` settings the run needs (``RTS_DATA_URI``, ``RTS_MODEL_REPOSITORY_URI``, ``RTS_TRITON_URL``),
which are passed on to the job.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, Callable

from services.events.base import CloudEvent, object_created
from services.events.pubsub import event_from_pubsub_message
from services.events.sqs import events_from_s3_notification
from services.events.tracecontext import MappingGetter, SqsAttributesGetter, first_trace_fields

log = logging.getLogger("events.serverless")

SubmitRetraining = Callable[[list[CloudEvent]], str]
GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def submit_to_ray_jobs(events: list[CloudEvent]) -> str:
    """Start a retraining run as a Ray Job (RTS_RAY_DASHBOARD_URL); returns the run id."""
    from services.retraining.jobs import submit_run

    return submit_run([e.model_dump(mode="json") for e in events])


def triggers_retraining(event: CloudEvent) -> bool:
    from services.retraining.listener import triggers_retraining as listener_rule

    return listener_rule(event.model_dump(mode="json"))


def _submit(events: list[CloudEvent], submit_retraining: SubmitRetraining | None) -> dict[str, Any]:
    wanted = [e for e in events if triggers_retraining(e)]
    skipped = [e.id for e in events if e not in wanted]
    if skipped:
        log.info("ignoring %d events that do not trigger retraining: %s", len(skipped), skipped)
    if not wanted:
        return {"run_id": None, "events": [], "skipped": skipped}
    run_id = (submit_retraining or submit_to_ray_jobs)(wanted)
    log.info("started retraining run %s for %d events", run_id, len(wanted))
    return {"run_id": run_id, "events": [e.id for e in wanted], "skipped": skipped}


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


def lambda_handler(event: dict[str, Any], context: Any = None, *,
                   submit_retraining: SubmitRetraining | None = None) -> dict[str, Any]:
    """AWS Lambda entry point. Returns ``{"run_id", "events", "skipped"}`` (run_id None: nothing to do)."""
    return _submit(events_from_lambda_event(event), submit_retraining)


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


def cloud_event_handler(cloud_event: Any, *, submit_retraining: SubmitRetraining | None = None) -> dict[str, Any]:
    """Google Cloud Functions / Cloud Run entry point (functions-framework CloudEvent or a dict)."""
    event = event_from_google_cloud_event(cloud_event)
    return _submit([event] if event is not None else [], submit_retraining)
