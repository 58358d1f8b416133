"""Submit retraining runs to the Ray cluster through the Jobs API, and wait for their records.

Every entry point (the event listener, ``rts models retrain``, ``POST /admin/models/<m>/retrain``,
the Lambda and Cloud Functions adapters) starts runs through ``submit_run``, so they all look the
same in the Ray dashboard's Jobs view: submission id = run id, entrypoint
``python -m services.retraining.run --run-id <id>``. The run's request (its model and the typed
CloudEvents it answers) is stored as ``runs/<id>.request.json`` in the data bucket first; the job
reads it there, so events never travel through a command line.
"""

from __future__ import annotations

import os
import time

from ray.job_submission import JobStatus, JobSubmissionClient

from services.events.base import CloudEvent
from services.registry.records import Records
from services.retraining.requests import RunRequest, forced, new_run_id
from services.settings import Settings
from services.storage import data_store

TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
# Variables a run needs besides the settings: cloud credentials and endpoints, tracing.
PASSED_ON = ("AWS_", "GOOGLE_", "OTEL_", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "CLOUDSDK_")


def job_env(settings: Settings) -> dict[str, str]:
    """The environment of a run: this process's settings, and how to reach this stack's Triton."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON)}
    env.update(settings.to_env())
    env.update({"RTS_VAR_DIR": str(settings.var_dir), "RTS_DATA_URI": settings.data_uri,
                "RTS_MODEL_REPOSITORY_URI": settings.model_repository_uri,
                "RTS_TRITON_URL": settings.triton.grpc_address})
    return env


def submit_run(settings: Settings, model: str, events: list[CloudEvent], run_id: str | None = None) -> str:
    """Store the run's request, then submit it as a Ray Job. Returns the run id."""
    run_id = run_id or new_run_id()
    request = RunRequest(run_id=run_id, model=model, events=events, force=forced(events))
    Records(data_store(settings)).save_request(run_id, request.model_dump(mode="json"))
    JobSubmissionClient(settings.ray.jobs_url).submit_job(
        entrypoint=f"python -m services.retraining.run --run-id {run_id}", submission_id=run_id,
        runtime_env={"env_vars": job_env(settings)},
        metadata={"kind": "retraining", "model": model, "events": str(len(events))})
    return run_id


def wait_for_run(settings: Settings, run_id: str, timeout_s: float | None = None) -> dict:
    """Wait for the job to end; its run record (outcome 'lost' if the job left none)."""
    client = JobSubmissionClient(settings.ray.jobs_url)
    deadline = time.monotonic() + (timeout_s or settings.retrain.timeout_s)
    status = None
    while time.monotonic() < deadline:
        try:
            status = client.get_job_status(run_id)
        except RuntimeError as exc:  # 404: never submitted, or the cluster that ran it is gone
            if "does not exist" not in str(exc):
                raise
            record = Records(data_store(settings)).run(run_id)
            if record is None or record.get("outcome") == "running":
                return {"run_id": run_id, "outcome": "lost", "job_status": "missing",
                        "reason": "the Ray cluster has no such job (never submitted, or the cluster restarted)"}
            return record
        if status in TERMINAL:
            break
        time.sleep(1.0)
    record = Records(data_store(settings)).run(run_id)
    if record is None or record.get("outcome") == "running":
        logs = client.get_job_logs(run_id)[-2000:] if status in TERMINAL else ""
        return {"run_id": run_id, "outcome": "lost", "job_status": str(status),
                "reason": logs or "no run record"}
    record["job_status"] = str(status.value if hasattr(status, "value") else status)
    return record
