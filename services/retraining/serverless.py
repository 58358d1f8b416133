"""Serverless entry points that start retraining runs: an AWS Lambda and a Google Cloud Function.

Usage::

    # AWS Lambda, handler "services.retraining.serverless.lambda_handler"
    #   triggers: S3 ObjectCreated on the data bucket (prefix datasets/), or the SQS queue those go to
    # Google Cloud Functions gen2 / Cloud Run functions, entry point "cloud_event_handler"
    #   triggers: google.cloud.storage.object.v1.finalized, or a Pub/Sub topic (retrain requests)

    # Tests and other hosts inject the submitter:
    lambda_handler(event, None, submit_retraining=lambda model, events: "run-1")

Both keep only events that ask to retrain a configured model (new data under
``datasets/<model>/incoming/``, retrain requests: the run itself writes to the same bucket, so
anything else would retrigger it) and start one run per model through
``services.retraining.jobs.submit_run``, the same path as the listener and the CLI. Lambda retries
give at-least-once delivery; runs dedupe by event id.

Configuration: ``RTS_RAY_DASHBOARD_URL`` (the Ray Jobs API, e.g. ``http://ray-head:8265``) and the
settings the run needs (``RTS_DATA_URI``, ``RTS_MODEL_REPOSITORY_URI``, ``RTS_TRITON_URL``,
``RTS_MODELS``), which are passed on to the job.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from services.events.base import CloudEvent
from services.events.serverless import event_from_google_cloud_event, events_from_lambda_event
from services.modelkit.discovery import load_models
from services.retraining.jobs import submit_run
from services.retraining.requests import model_of
from services.settings import get_settings

log = logging.getLogger("retraining.serverless")

SubmitRetraining = Callable[[str, list[CloudEvent]], str]  # (model, events) -> run id


def submit_to_ray_jobs(model: str, events: list[CloudEvent]) -> str:
    return submit_run(get_settings(), model, events)


def start_runs(events: list[CloudEvent], submit_retraining: SubmitRetraining | None = None) -> dict[str, Any]:
    """One run per model the events ask for. Returns ``{"runs": {model: run_id}, "events", "skipped"}``."""
    models = load_models(get_settings())
    by_model: dict[str, list[CloudEvent]] = {}
    skipped = []
    for event in events:
        model = model_of(event, models)
        if model is None:
            skipped.append(event.id)
        else:
            by_model.setdefault(model, []).append(event)
    if skipped:
        log.info("ignoring %d events that do not ask to retrain a model here: %s", len(skipped), skipped)
    submit = submit_retraining or submit_to_ray_jobs
    runs = {model: submit(model, wanted) for model, wanted in by_model.items()}
    for model, run_id in runs.items():
        log.info("started retraining run %s of %s for %d events", run_id, model, len(by_model[model]))
    return {"runs": runs, "events": [e.id for wanted in by_model.values() for e in wanted], "skipped": skipped}


def lambda_handler(event: dict[str, Any], context: Any = None, *,
                   submit_retraining: SubmitRetraining | None = None) -> dict[str, Any]:
    """AWS Lambda entry point."""
    return start_runs(events_from_lambda_event(event), submit_retraining)


def cloud_event_handler(cloud_event: Any, *, submit_retraining: SubmitRetraining | None = None) -> dict[str, Any]:
    """Google Cloud Functions / Cloud Run entry point (functions-framework CloudEvent or a dict)."""
    event = event_from_google_cloud_event(cloud_event)
    return start_runs([event] if event is not None else [], submit_retraining)
