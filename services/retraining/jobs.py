"""Submit retraining runs to the Ray cluster through the Jobs API, and wait for their records.

Every entry point (the event listener, ``rts retrain``, ``POST /admin/retrain``, the Lambda and
Cloud Functions adapters) starts runs through ``submit_run`` so they all look the same in the
Ray dashboard's Jobs view: submission id = run id, entrypoint ``python -m services.retraining.run``.
"""

from __future__ import annotations

import json
import os
import shlex
import time
import uuid

from services.common.settings import Settings, get_settings
from services.retraining.records import Records
from services.storage import open_store

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def job_env(settings: Settings) -> dict[str, str]:
    """RTS_* and cloud credentials the run needs, passed explicitly to the job's runtime env."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("RTS_", "AWS_", "GOOGLE_", "OTEL_", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"))}
    env.update({"RTS_VAR_DIR": str(settings.var_dir), "RTS_DATA_URI": settings.data_uri,
                "RTS_MODEL_REPOSITORY_URI": settings.model_repository_uri,
                "RTS_TRITON_URL": settings.effective_triton_url})
    return env


def dashboard_url(settings: Settings) -> str:
    return os.environ.get("RTS_RAY_DASHBOARD_URL") or f"http://127.0.0.1:{settings.ray_dashboard_port}"


def submit_run(events: list[dict], settings: Settings | None = None, run_id: str | None = None) -> str:
    from ray.job_submission import JobSubmissionClient

    settings = settings or get_settings()
    run_id = run_id or new_run_id()
    entrypoint = (f"python -m services.retraining.run --run-id {shlex.quote(run_id)} "
                  f"--events-json {shlex.quote(json.dumps(events, default=str))}")
    client = JobSubmissionClient(dashboard_url(settings))
    client.submit_job(entrypoint=entrypoint, submission_id=run_id,
                      runtime_env={"env_vars": job_env(settings)},
                      metadata={"kind": "retraining", "events": str(len(events))})
    return run_id


def wait_for_run(run_id: str, settings: Settings | None = None, timeout_s: float = 600.0) -> dict:
    """Wait for the job to end; return its run record (outcome 'lost' if the job left none)."""
    from ray.job_submission import JobSubmissionClient

    settings = settings or get_settings()
    client = JobSubmissionClient(dashboard_url(settings))
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = str(client.get_job_status(run_id).value if hasattr(client.get_job_status(run_id), "value")
                     else client.get_job_status(run_id))
        if status in TERMINAL:
            break
        time.sleep(1.0)
    record = Records(open_store(settings.data_uri)).run(run_id)
    if record is None or record.get("outcome") == "running":
        logs = client.get_job_logs(run_id)[-2000:] if status in TERMINAL else ""
        return {"run_id": run_id, "outcome": "lost", "job_status": status, "reason": logs or "no run record"}
    record["job_status"] = status
    return record
