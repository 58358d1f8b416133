"""The serverless artefacts, built as `make package` builds them, installed into clean venvs and invoked
the way their platforms invoke them; the runs go to the session's stack (its real Ray Jobs API).

- AWS Lambda: ``lambda.zip`` unpacked into a task root, run by a venv with nothing installed in it (the
  zip carries its dependencies, as Lambda wants them) the way Lambda's python3.11 runtime runs a handler:
  the task root on ``sys.path``, the handler named by ``_HANDLER``, called with the event, in Lambda's
  environment (with credentials of the function's own role, which must not reach the job). The event
  is what Lambda's SQS trigger delivers: moto's real S3 -> SQS messages (the test event and the
  notification of an object put under ``datasets/<model>/incoming/``) as ``Records`` of ``aws:sqs``.
- Google Cloud Functions gen2: the source folder's ``requirements.txt`` installed into a fresh venv,
  the folder served by functions-framework (the framework Cloud Run functions run) as an HTTP server on
  127.0.0.1, and a push subscription of the Pub/Sub emulator delivering a published retrain request
  to it. The emulator posts Pub/Sub's push body; functions-framework makes the messagePublished
  CloudEvent of it (Eventarc would post that CloudEvent itself), and the function gets that.

Each function runs with the stack's settings, so the run's request lands in the stack's data bucket
and the job in its Ray cluster; the test finds the job there (submission id, entrypoint, metadata,
the environment it was given) and waits for its run record. The request brings no new data, so the
run normally ends as "skipped" after its checks (after other tests' feedback it may train). The moto
bucket only notifies here: the whole S3 and GCS loop through training is test_retraining_cloud's.

The artefacts' dependencies come from PyPI once, into ``var/cache/serverless-wheels/`` (Lambda's
platform wheels and this machine's); later runs, and runs without a network, install from there.
With neither, the test skips and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Sequence

import httpx
import pytest
from google.cloud import pubsub_v1

from services.retraining import artefacts
from services.retraining.jobs import RayJobs, wait_for_run
from services.retraining.requests import publish_retrain_request
from services.retraining.run import FINISHED
from services.runtime.processes import ManagedProcess, free_port, port_open
from services.settings import REPO_ROOT
from tests.servers.fixtures import GCP_PROJECT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

WHEELS = REPO_ROOT / "var" / "cache" / "serverless-wheels"
MODEL = "digits"
LAMBDA_ENV = {  # what Lambda's runtime sets besides the function's own variables
    "AWS_LAMBDA_FUNCTION_NAME": "rts-retrain-trigger", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11", "AWS_ACCESS_KEY_ID": "ASIAFUNCTIONROLE",
    "AWS_SECRET_ACCESS_KEY": "function-role-secret", "AWS_SESSION_TOKEN": "function-role-token"}
# Lambda's python runtime, reduced to what a handler sees: the task root first on the path, the handler by name.
LAMBDA_BOOTSTRAP = r"""
import importlib, json, os, sys
sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
module, _, name = os.environ["_HANDLER"].rpartition(".")
print(json.dumps(getattr(importlib.import_module(module), name)(json.load(sys.stdin), None)))
"""


def say(message: str) -> None:
    print(f"[serverless] {message}", flush=True)


def wheelhouse(name: str, requirements: Path, platform: Sequence[str]) -> list[str]:
    """pip arguments that install `requirements` from var/cache/serverless-wheels/<name>, filled from PyPI once."""
    folder = WHEELS / name
    folder.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                *platform, "--dest", str(folder), "-r", str(requirements)]
    offline = ["--no-index", "--find-links", str(folder)]
    if subprocess.run([*download, *offline], capture_output=True).returncode != 0:
        online = subprocess.run(download, capture_output=True, text=True, timeout=600)
        if online.returncode != 0:
            pytest.skip(f"the {name} artefact's dependencies are neither on PyPI (unreachable) nor in {folder}; run "
                        f"this test once with network access (CI has PyPI): {online.stderr.strip()[-400:]}")
    return offline


def outside_env() -> dict[str, str]:
    """This process's environment without what points Python at this checkout (the session's PYTHONPATH)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def clean_venv(path: Path, with_pip: bool) -> Path:
    subprocess.run([sys._base_executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)],
                   check=True, env=outside_env())
    return path / "bin"


def job_details(stack, run_id: str) -> dict:
    info = RayJobs(stack.ray.dashboard_url).get_job_info(run_id)
    assert info["submission_id"] == run_id
    assert info["entrypoint"] == f"python -m services.retraining.run --run-id {run_id}"
    assert info["metadata"] == {"kind": "retraining", "model": MODEL, "events": "1"}
    assert info["runtime_env"]["env_vars"]["RTS_DATA_URI"] == stack.settings.data_uri
    return info


def finished(stack, run_id: str, event_ids: list[str]) -> dict:
    started = time.monotonic()
    record = wait_for_run(stack.settings, run_id, timeout_s=300)
    say(f"run {run_id}: {record['outcome']} ({record.get('reason')}) after {time.monotonic() - started:.0f} s more")
    assert record["outcome"] in FINISHED and record["job_status"] == "SUCCEEDED", record
    assert [e["id"] for e in record["events"]] == event_ids
    return record


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serverless")


def sqs_trigger_event(moto_server) -> tuple[dict, str]:
    """Lambda's SQS-trigger event for what moto sends when an object is put under datasets/<model>/incoming/."""
    s3, sqs = moto_server.client("s3"), moto_server.client("sqs")
    bucket = f"rts-fn-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "data/datasets/"}]}}}]})
    key = f"data/datasets/{MODEL}/incoming/lambda-batch.npz"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"uploaded by a user")["ETag"].strip('"')
    messages, deadline = [], time.monotonic() + 15
    while len(messages) < 2 and time.monotonic() < deadline:  # s3:TestEvent, then the notification
        messages += sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                        AttributeNames=["All"]).get("Messages", [])
    assert len(messages) == 2, messages
    records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": "us-east-1"} for m in messages]
    return {"Records": records}, f"{bucket}/{key}@{etag}"


def test_lambda_zip_submits_the_run_of_an_s3_upload(stack, moto_server, out):
    started = time.monotonic()
    _, pins = artefacts.requirements(artefacts.TARGETS["aws"])
    (out / "aws-requirements.txt").write_text("\n".join(pins) + "\n")
    pip_args = wheelhouse("aws", out / "aws-requirements.txt", artefacts.LAMBDA_PIP_PLATFORM)
    zip_path = artefacts.build_lambda(out, settings=stack.settings, pip_args=pip_args)
    task_root = out / "task"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(task_root)
        unzipped = sum(i.file_size for i in zf.infolist())
    python = clean_venv(out / "lambda-venv", with_pip=False) / "python"
    say(f"lambda.zip {zip_path.stat().st_size / 1e6:.1f} MB ({unzipped / 1e6:.1f} MB unzipped) built and "
        f"unpacked in {time.monotonic() - started:.0f} s")
    assert unzipped < 250e6  # Lambda's limit for a function's unzipped code and layers

    event, event_id = sqs_trigger_event(moto_server)
    env = {"PATH": os.environ["PATH"], **stack.job_env(), **LAMBDA_ENV,
           "LAMBDA_TASK_ROOT": str(task_root), "_HANDLER": artefacts.LAMBDA_HANDLER}
    invoked = time.monotonic()
    proc = subprocess.run([str(python), "-c", LAMBDA_BOOTSTRAP], input=json.dumps(event), cwd=task_root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    say(f"handler answered {result} in {time.monotonic() - invoked:.1f} s")
    [(model, run_id)] = result["runs"].items()
    assert model == MODEL and result["events"] == [event_id] and result["skipped"] == []

    env_vars = job_details(stack, run_id)["runtime_env"]["env_vars"]
    assert env_vars["AWS_DEFAULT_REGION"] == "us-east-1"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_LAMBDA_FUNCTION_NAME"} & set(
        env_vars), "the function's own credentials reached the job"
    record = finished(stack, run_id, [event_id])
    assert record["events"][0]["data"]["key"] == f"data/datasets/{MODEL}/incoming/lambda-batch.npz"


class FunctionsFramework(ManagedProcess):
    """`functions-framework` serving the function's source folder, from the venv its requirements went into."""

    what = "functions-framework"
    startup_timeout_s = 60.0

    def __init__(self, bin_dir: Path, source: Path, env: dict[str, str], log_file: Path) -> None:
        super().__init__(log_file, cwd=source)
        self.bin_dir, self.env, self.port = bin_dir, env, free_port()

    def argv(self) -> list[str]:
        return [str(self.bin_dir / "functions-framework"), "--target", artefacts.FUNCTION_ENTRY_POINT,
                "--signature-type", "cloudevent", "--source", "main.py", "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return self.env

    def ready(self) -> bool:
        return port_open(self.port)


def ray_jobs(stack) -> dict[str, dict]:
    return {j["submission_id"]: j for j in httpx.get(f"{stack.ray.dashboard_url}/api/jobs/", timeout=30).json()}


def test_cloud_function_submits_the_run_of_a_pushed_retrain_request(stack, pubsub_emulator, out):
    started = time.monotonic()
    folder = artefacts.build_function(out, settings=stack.settings)
    pip_args = wheelhouse("gcp", folder / "requirements.txt", ["--only-binary=:all:"])
    bin_dir = clean_venv(out / "function-venv", with_pip=True)
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-compile", *pip_args, "-r", str(folder / "requirements.txt")], check=True, env=outside_env())
    say(f"function folder built and its requirements installed in {time.monotonic() - started:.0f} s")

    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **stack.job_env()}
    with FunctionsFramework(bin_dir, folder, env, out / "functions-framework.log") as function:
        topic = pubsub_emulator.create_topic(GCP_PROJECT, f"retrain-{uuid.uuid4().hex[:8]}")
        with pubsub_v1.SubscriberClient() as subscriber:
            subscriber.create_subscription(request={
                "name": subscriber.subscription_path(GCP_PROJECT, f"fn-push-{uuid.uuid4().hex[:8]}"), "topic": topic,
                "ack_deadline_seconds": 60,
                # The topic in the path, as infra/serverless/gcp's push subscription has it.
                "push_config": {"push_endpoint": f"http://127.0.0.1:{function.port}/{topic}"}})
        before = set(ray_jobs(stack))
        message_id = publish_retrain_request(topic, MODEL, "asked through the Cloud Function")
        deadline, new = time.monotonic() + 60, {}
        while not new and time.monotonic() < deadline:
            assert function.running, function.log_file.read_text()[-3000:]
            new = {k: v for k, v in ray_jobs(stack).items() if k not in before}
            time.sleep(0.5)
        log = function.log_file.read_text()
    assert new, f"no Ray job within 60 s of the push; functions-framework log:\n{log[-3000:]}"
    [run_id] = new
    say(f"Ray job {run_id} {time.monotonic() - started:.0f} s after the build started")
    job_details(stack, run_id)
    record = finished(stack, run_id, [message_id])
    assert record["events"][0]["type"] == "rts.retrain.requested"
    assert record["events"][0]["source"] == f"//pubsub.googleapis.com/{topic}"
