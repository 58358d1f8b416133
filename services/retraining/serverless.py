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
``RTS_MODELS``, ``RTS_VAR_DIR`` as the cluster has it), which are passed on to the job.

Packaged (``make package``, ``services.retraining.artefacts``), the adapters carry no model package: the
build writes what they need of each one (name, data suffixes) to ``rts-models.json`` beside the code,
so a Lambda never imports a model's training libraries. Without that file (this repository, a host
that has the packages) they load the packages as everything else does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from services.events.base import CloudEvent
from services.events.serverless import event_from_google_cloud_event, events_from_lambda_event
from services.modelkit import ModelPackage
from services.modelkit.discovery import load_models
from services.retraining.jobs import submit_run
from services.retraining.requests import model_of
from services.settings import REPO_ROOT, Settings, get_settings

log = logging.getLogger("retraining.serverless")

SubmitRetraining = Callable[[str, list[CloudEvent]], str]  # (model, events) -> run id
MODELS_MANIFEST = REPO_ROOT / "rts-models.json"  # in a packaged artefact only


@dataclass(frozen=True)
class PackagedModel:
    """What the adapters need of a model package (``model_of``), as an artefact was built with it."""

    name: str
    import_path: str
    data_suffixes: tuple[str, ...]


def models_manifest(models: Mapping[str, ModelPackage]) -> list[dict[str, Any]]:
    """The contents of ``rts-models.json`` for these packages (written by the artefact build)."""
    return [{"name": name, "import_path": package.import_path, "data_suffixes": list(package.data_suffixes)}
            for name, package in models.items()]


def models_here(settings: Settings) -> Mapping[str, ModelPackage | PackagedModel]:
    """The models events may ask for: from the artefact's manifest when packaged, else the packages."""
    if not MODELS_MANIFEST.exists():
        return load_models(settings)
    built = [PackagedModel(m["name"], m["import_path"], tuple(m["data_suffixes"]))
             for m in json.loads(MODELS_MANIFEST.read_text())]
    if settings.models and list(settings.models) != [m.import_path for m in built]:
        raise ValueError(f"RTS_MODELS is {list(settings.models)} but this artefact was built for "
                         f"{[m.import_path for m in built]}: build it again with the same RTS_MODELS")
    return {m.name: m for m in built}


def submit_to_ray_jobs(model: str, events: list[CloudEvent]) -> str:
    return submit_run(get_settings(), model, events)


def start_runs(events: list[CloudEvent], submit_retraining: SubmitRetraining | None = None) -> dict[str, Any]:
    """One run per model the events ask for. Returns ``{"runs": {model: run_id}, "events", "skipped"}``."""
    models = models_here(get_settings())
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
