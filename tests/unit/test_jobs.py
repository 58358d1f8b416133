"""services.retraining.jobs: the Ray Jobs REST API as Ray's own server reads it, and what a job is given.

A local HTTP server stands in for the dashboard and parses each submission with Ray's own
``JobSubmitRequest`` (what the dashboard's job module does with the body), so a field the server
does not know fails here. The real dashboard answers it in tests/integration/test_serverless_artefacts.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
from ray.dashboard.modules.job.common import JobSubmitRequest

from services.retraining.jobs import RayJobs, job_env
from services.runtime.processes import free_port
from services.settings import Settings


class _Dashboard(BaseHTTPRequestHandler):
    jobs: dict[str, JobSubmitRequest]

    def _answer(self, status: int, body: object) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        assert self.path == "/api/jobs/" and self.headers["Content-Type"] == "application/json"
        request = JobSubmitRequest(**json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.jobs[request.submission_id] = request
        self._answer(200, {"job_id": "03000000", "submission_id": request.submission_id})

    def do_GET(self) -> None:
        job_id, _, what = self.path.removeprefix("/api/jobs/").partition("/")
        if job_id not in self.jobs:
            return self._answer(404, f"Job {job_id} does not exist")
        job = self.jobs[job_id]
        self._answer(200, {"logs": "hello\n"} if what == "logs" else
                     {"status": "SUCCEEDED", "submission_id": job_id, "entrypoint": job.entrypoint})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[tuple[str, dict]]:
    jobs: dict[str, JobSubmitRequest] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Dashboard", (_Dashboard,), {"jobs": jobs}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", jobs
    finally:
        server.shutdown()
        server.server_close()


def test_a_submission_is_what_rays_server_reads(dashboard):
    url, jobs = dashboard
    client = RayJobs(url)  # a trailing slash is fine, as with Ray's client
    env = {"env_vars": {"RTS_DATA_URI": "s3://b/data"}}
    assert client.submit_job(entrypoint="python -m x --run-id r1", submission_id="r1", runtime_env=env,
                             metadata={"kind": "retraining"}) == "r1"
    assert (jobs["r1"].entrypoint, jobs["r1"].runtime_env, jobs["r1"].metadata) == \
        ("python -m x --run-id r1", env, {"kind": "retraining"})
    assert client.get_job_status("r1") == "SUCCEEDED"
    assert client.get_job_info("r1")["entrypoint"] == "python -m x --run-id r1"
    assert client.get_job_logs("r1") == "hello\n"


def test_errors_are_those_of_rays_client(dashboard):
    url, _ = dashboard
    # wait_for_run tells a job the cluster never had (or lost) by this message.
    with pytest.raises(RuntimeError, match="status code 404: Job nope does not exist"):
        RayJobs(url).get_job_status("nope")
    # The admin route answers 503 jobs_unavailable on a ConnectionError.
    with pytest.raises(ConnectionError, match="cannot be reached"):
        RayJobs(f"http://127.0.0.1:{free_port()}", timeout_s=5).get_job_status("r1")


def test_a_lambda_keeps_its_own_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert job_env(Settings(var_dir=tmp_path))["AWS_SECRET_ACCESS_KEY"] == "secret"  # a listener's, an operator's
    for name, value in {"AWS_LAMBDA_FUNCTION_NAME": "rts-retrain", "AWS_SESSION_TOKEN": "token",
                        "AWS_ACCESS_KEY_ID": "ASIA0", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11"}.items():
        monkeypatch.setenv(name, value)
    env = job_env(Settings(var_dir=tmp_path))
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert not [k for k in env if k.startswith(("AWS_LAMBDA_", "AWS_SECRET", "AWS_SESSION", "AWS_ACCESS", "AWS_EXEC"))]
