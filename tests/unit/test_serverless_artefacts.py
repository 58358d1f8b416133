"""The serverless artefacts (services.retraining.artefacts) hold what their handlers import, and nothing heavy.

Each artefact's code is built (without downloading its dependencies) and its handler run in a fresh
interpreter from the artefact's folder, through the default path: the run's request into a
``file://`` bucket, the job to a stand-in of the Ray Jobs API; then that interpreter's
``sys.modules`` must hold none of the serving and training libraries. Installing the artefacts into
clean venvs and submitting to a real Ray cluster: tests/integration/test_serverless_artefacts.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from services.events.serverless import PUBSUB_PUBLISHED
from services.retraining import artefacts

# Libraries of the gateway, Triton, training and the Pub/Sub client: a handler that loads one of them
# no longer fits a Lambda (and would not start in the artefact's environment, which lacks them).
HEAVY = ("ray", "fastapi", "onnx", "onnxruntime", "skl2onnx", "sklearn", "scipy", "pandas", "torch", "tritonclient",
         "grpc", "PIL", "google.cloud.pubsub_v1")

DRIVER = r"""
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.getcwd())  # as Lambda puts its task root, and functions-framework its source folder
submitted = []


class RayJobsApi(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        submitted.append(body)
        answer = json.dumps({"job_id": "02000000", "submission_id": body["submission_id"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), RayJobsApi)
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["RTS_RAY_DASHBOARD_URL"] = f"http://127.0.0.1:{server.server_address[1]}"
target, event = sys.argv[1], json.loads(sys.argv[2])
if target == "aws":
    from services.retraining.serverless import lambda_handler
    lambda_handler(event, None)
else:
    from cloudevents.http import CloudEvent
    import main
    main.cloud_event_handler(CloudEvent(event["attributes"], event["data"]))
import services
print(json.dumps({"submitted": submitted, "services": services.__file__, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("serverless")
    task_root = out / "aws" / "task"  # what Lambda unpacks the zip into
    with zipfile.ZipFile(artefacts.build_lambda(out, deps=False)) as zf:
        zf.extractall(task_root)
    return {"aws": task_root, "gcp": artefacts.build_function(out)}


def first_model(root: Path) -> dict:
    return json.loads((root / "rts-models.json").read_text())[0]


def event_for(target: str, model: dict) -> dict:
    if target == "aws":  # S3 -> Lambda, as in tests/events/test_serverless.py
        key = f"datasets/{model['name']}/incoming/new{model['data_suffixes'][0]}"
        return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "awsRegion": "us-east-1",
                             "s3": {"bucket": {"name": "data"}, "object": {"key": key, "size": 3, "eTag": "e1",
                                                                           "sequencer": "01"}}}]}
    request = base64.b64encode(json.dumps({"model": model["name"], "reason": "test"}).encode()).decode()
    return {"attributes": {"type": PUBSUB_PUBLISHED, "source": "//pubsub.googleapis.com/projects/p/topics/retrain",
                           "id": "m-1", "specversion": "1.0"},
            "data": {"message": {"data": request, "messageId": "m-1", "attributes": {}},
                     "subscription": "projects/p/subscriptions/fn"}}


def run_handler(root: Path, target: str, tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTS_")}
    env.update(RTS_DATA_URI=f"file://{tmp_path / 'bucket'}", RTS_VAR_DIR=str(tmp_path / "var"), **settings)
    return subprocess.run([sys.executable, "-I", "-c", DRIVER, target, json.dumps(event_for(target, first_model(root)))],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("target", ["aws", "gcp"])
def test_the_handler_submits_a_run_without_heavy_libraries(built, target, tmp_path):
    root, model = built[target], first_model(built[target])
    proc = run_handler(root, target, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert Path(out["services"]).is_relative_to(root)  # the artefact's code, not this checkout's
    [job] = out["submitted"]
    run_id = job["submission_id"]
    assert job["entrypoint"] == f"python -m services.retraining.run --run-id {run_id}"
    assert job["metadata"]["model"] == model["name"]
    assert (tmp_path / "bucket" / "runs" / f"{run_id}.request.json").exists()
    loaded = set(out["modules"])
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)
    assert not heavy, f"the {target} handler loads {heavy}"
    assert not [m for m in loaded if m.startswith("services.models")], "a packaged handler imports no model package"


def test_an_artefact_refuses_models_it_was_not_built_for(built, tmp_path):
    proc = run_handler(built["aws"], "aws", tmp_path, RTS_MODELS='["acme.models.churn"]')
    assert proc.returncode != 0 and "build it again with the same RTS_MODELS" in proc.stderr


def test_requirements_are_pinned_from_the_lock_and_stay_small(built):
    lock = set(artefacts.LOCK.read_text().splitlines())
    names = {}
    for target, root in built.items():
        lines = [line for line in (root / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
        assert lines and set(lines) <= lock, f"{target}: {set(lines) - lock} not as requirements.lock pins them"
        names[target] = {line.split("==")[0].lower() for line in lines}
    assert {"boto3", "pydantic", "numpy"} <= names["aws"]
    assert not {"ray", "pillow", "grpcio", "google-cloud-pubsub", "tritonclient", "scikit-learn"} & names["aws"]
    assert {"functions-framework", "google-cloud-storage"} <= names["gcp"]
    assert not {"ray", "grpcio", "scikit-learn"} & names["gcp"]
    assert (built["gcp"] / "main.py").exists() and artefacts.FUNCTION_ENTRY_POINT in (built["gcp"] / "main.py").read_text()
