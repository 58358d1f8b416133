"""Retrain requests, built in one place, and which model an event asks to retrain.

Usage::

    event = retrain_request("churn", "asked by a person", source="rts/cli")     # a CloudEvent
    write_request(store, event)                 # into datasets/<model>/requests/: the same event path as data
    publish_retrain_request(topic_path, "churn", "nightly")                     # over Pub/Sub
    send_retrain_request_sqs(queue_url, "churn", "nightly")                     # over SQS

    model_of(event, models)                     # "churn", or None when it asks for nothing we retrain

A request carries the requester's trace context (CloudEvents distributed tracing), so the run
joins the trace of whoever asked: an operator's HTTP call, the drift check of a gateway replica.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Mapping

import boto3
from pydantic import BaseModel, ConfigDict, Field

from services.events.base import OBJECT_CREATED, RETRAIN_REQUESTED, CloudEvent, retrain_requested
from services.modelkit import ModelPackage
from services.retraining.dataset import DataPaths, classify_key, is_data_file
from services.storage import ObjectStore
from services.telemetry.propagation import sqs_trace_attributes, trace_carrier
from services.telemetry.tracing import current_traceparent

log = logging.getLogger(__name__)


class RunRequest(BaseModel):
    """What one run is asked to do; stored as runs/<run_id>.request.json before the run is submitted."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    model: str
    events: list[CloudEvent] = Field(description="every event this run answers (dedupe marks them once recorded)")
    force: bool = Field(False, description="train and publish even without new data since the serving version")

    @property
    def traceparent(self) -> str | None:
        return next((e.traceparent for e in self.events if e.traceparent), None)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def retrain_request(model: str, reason: str, *, source: str, force: bool = False,
                    extra: Mapping[str, Any] | None = None) -> CloudEvent:
    """An ``rts.retrain.requested`` event for `model`, carrying the current trace context."""
    data = {"model": model, "reason": reason, **({"force": True} if force else {}), **dict(extra or {})}
    return retrain_requested(data, source=source, traceparent=current_traceparent())


def request_key(event: CloudEvent) -> str:
    return f"{DataPaths(event.data['model']).requests}{event.id}.json"


def write_request(store: ObjectStore, event: CloudEvent, background: bool = False) -> str:
    """Put a request where the listener sees it (the event path new data takes). Returns its key."""
    key = request_key(event)
    body = event.model_dump_json().encode()
    metadata = trace_carrier() or None
    if background:  # off a request path: a bucket write can take a while on a cloud store
        threading.Thread(target=store.put_bytes, args=(key, body), kwargs={"metadata": metadata},
                         daemon=True).start()
    else:
        store.put_bytes(key, body, metadata=metadata)
    return key


def publish_retrain_request(topic_path: str, model: str, reason: str, *, force: bool = False, publisher: Any = None,
                            timeout_s: float = 30.0) -> str:
    """Ask for a run over Pub/Sub: the event as JSON, trace context in the attributes. Returns the message id."""
    if publisher is None:
        from google.cloud import pubsub_v1  # here: the serverless adapters import this module without it

        publisher = pubsub_v1.PublisherClient()
    event = retrain_request(model, reason, source=f"//pubsub.googleapis.com/{topic_path}", force=force)
    future = publisher.publish(topic_path, event.model_dump_json().encode(), **trace_carrier())
    return future.result(timeout=timeout_s)


def send_retrain_request_sqs(queue_url: str, model: str, reason: str, *, force: bool = False,
                             client: Any = None) -> str:
    """Ask for a run over SQS (the queue that also carries the bucket's notifications). Returns the message id."""
    client = client or boto3.client("sqs")
    event = retrain_request(model, reason, source=queue_url, force=force)
    return client.send_message(QueueUrl=queue_url, MessageBody=event.model_dump_json(),
                               MessageAttributes=sqs_trace_attributes())["MessageId"]


def model_of(event: CloudEvent, models: Mapping[str, ModelPackage]) -> str | None:
    """The model an event asks to retrain: new data under its prefix, or a request naming it.

    A request that names no model stands for the only model there is; with several it is ambiguous
    and asks for nothing (logged). Anything else (the run's own moves, reports, other prefixes) is None.
    """
    if event.type == RETRAIN_REQUESTED:
        name = event.data.get("model")
        if name is None and len(models) == 1:
            return next(iter(models))
        if name not in models:
            log.error("retrain request %s names model %r; models here: %s", event.id, name, sorted(models))
            return None
        return name
    if event.type == OBJECT_CREATED:
        found = classify_key(str(event.data.get("key", "")))
        if found is None or found[0] not in models:
            return None
        model, kind, name = found
        if kind == "incoming":
            return model if is_data_file(name, models[model]) else None
        return model if not name.startswith(".") and name.endswith(".json") else None
    return None


def forced(events: list[CloudEvent]) -> bool:
    """A request asked to train even without new data (an operator's --force)."""
    return any(e.type == RETRAIN_REQUESTED and e.data.get("force") is True for e in events)

