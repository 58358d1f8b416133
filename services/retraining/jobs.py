"""Submit retraining runs to the Ray cluster through the Jobs API, and wait for their records.

Every entry point (the event listener, ``rts models retrain``, ``POST /admin/models/<m>/retrain``,
the Lambda and Cloud Functions adapters) starts runs through ``submit_run``, so they all look the
same in the Ray dashboard's Jobs view: submission id = run id, entrypoint
``python -m services.retraining.run --run-id <id>``. The run's request (its model and the typed
CloudEvents it answers) is stored as ``runs/<id>.request.json`` in the data bucket first; the job
reads it there, so events never travel through a command line.

They speak the Ray Jobs REST API of the dashboard (``POST /api/jobs/``, ``GET /api/jobs/<id>``,
``GET /api/jobs/<id>/logs``: what ``ray.job_submission.JobSubmissionClient`` sends) with the standard
library, so a submitter never imports ``ray``: the Lambda and Cloud Functions artefacts stay small.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from services.events.base import CloudEvent
from services.registry.records import Records
from services.retraining.requests import RunRequest, forced, new_run_id
from services.settings import Settings
from services.storage import data_store

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}  # Ray's JobStatus values that never change again
# Variables a run needs besides the settings: cloud credentials and endpoints, tracing.
PASSED_ON = ("AWS_", "GOOGLE_", "OTEL_", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "CLOUDSDK_")
# Inside AWS Lambda these are the function's own role credentials and runtime: they stay there (the job
# would show them in the Ray dashboard, and they expire); the job runs as the cluster's identity.
LAMBDA_OWN = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_", "AWS_EXECUTION_ENV",
              "AWS_XRAY_")


class RayJobs:
    """The Ray Jobs REST API of one cluster (the dashboard's address, e.g. ``http://ray-head:8265``).

    Errors are those of Ray's own client: ``RuntimeError("Request failed with status code <N>: <body>.")``
    for an answer that is not 200 (a missing job says ``Job <id> does not exist``), and ``ConnectionError``
    when the dashboard cannot be reached.
    """

    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        self.address, self.timeout_s = address.rstrip("/"), timeout_s

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        request = urllib.request.Request(
            self.address + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"Request failed with status code {exc.code}: "
                               f"{exc.read().decode(errors='replace')}.") from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"the Ray Jobs API at {self.address} cannot be reached: {exc.reason}") from exc

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict, metadata: dict[str, str]) -> str:
        body = {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env,
                "metadata": metadata}
        return self._request("POST", "/api/jobs/", body)["submission_id"]

    def get_job_info(self, submission_id: str) -> dict:
        """The job's details: status, entrypoint, submission_id, metadata, runtime_env, message, times."""
        return self._request("GET", f"/api/jobs/{submission_id}")

    def get_job_status(self, submission_id: str) -> str:
        return self.get_job_info(submission_id)["status"]

    def get_job_logs(self, submission_id: str) -> str:
        return self._request("GET", f"/api/jobs/{submission_id}/logs")["logs"]

    def stop_job(self, submission_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM, then SIGKILL after its grace period); False if it had ended."""
        return bool(self._request("POST", f"/api/jobs/{submission_id}/stop")["stopped"])


def job_env(settings: Settings) -> dict[str, str]:
    """The environment of a run: this process's settings, and how to reach this stack's Triton."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ON)}
    if "AWS_LAMBDA_FUNCTION_NAME" in os.environ:
        env = {k: v for k, v in env.items() if not k.startswith(LAMBDA_OWN)}
    env.update(settings.to_env())
    env.update({"RTS_VAR_DIR": str(settings.var_dir), "RTS_DATA_URI": settings.data_uri,
                "RTS_MODEL_REPOSITORY_URI": settings.model_repository_uri,
                "RTS_TRITON_URL": settings.triton.grpc_address})
    return env


THREAD_CAPS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_caps(settings: Settings) -> dict[str, str]:
    """A run's BLAS/OpenMP threads per process at the logical CPUs of a Ray Train worker (at least one), read when
    each of the run's processes starts (the job's runtime_env reaches its Ray Train workers); none when
    ``RTS_RETRAIN_WORKER_NICE`` is 0 (the run may take what it finds)."""
    if settings.retrain.worker_nice <= 0:
        return {}
    threads = str(max(1, int(settings.retrain.worker_cpus)))
    return {name: threads for name in THREAD_CAPS}


def submit_run(settings: Settings, model: str, events: list[CloudEvent], run_id: str | None = None) -> str:
    """Store the run's request, then submit it as a Ray Job. Returns the run id."""
    run_id = run_id or new_run_id()
    request = RunRequest(run_id=run_id, model=model, events=events, force=forced(events))
    Records(data_store(settings)).save_request(run_id, request.model_dump(mode="json"))
    RayJobs(settings.ray.jobs_url).submit_job(
        entrypoint=f"python -m services.retraining.run --run-id {run_id}", submission_id=run_id,
        runtime_env={"env_vars": {**thread_caps(settings), **job_env(settings)}},
        metadata={"kind": "retraining", "model": model, "events": str(len(events))})
    return run_id


def wait_for_run(settings: Settings, run_id: str, timeout_s: float | None = None) -> dict:
    """Wait for the job to end; its run record (outcome 'lost' if the job left none)."""
    client = RayJobs(settings.ray.jobs_url)
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
    record["job_status"] = str(status)
    return record
