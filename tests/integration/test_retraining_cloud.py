"""The whole loop through cloud event paths, on real servers: S3 -> SQS (moto), GCS -> Pub/Sub
(fake-gcs-server + the Pub/Sub emulator), and a plain Pub/Sub "retrain" message.

Each test runs the listener process as a user would (`rts listen --source sqs|pubsub`), with the
data bucket in the cloud store; the run reads and writes its data there, publishes into the
session's model repository, and Triton serves the new version. (The gateway's rollout follows the
stages in the stack's own data bucket, which is not this one: so these tests ask Triton which
version its ``digits`` ensemble serves. A deployment has one data bucket for both.)
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.retraining.requests import publish_retrain_request
from services.models.digits.data import load_split
from services.runtime.stack import Listener
from services.triton.client import TritonClient
from tests.servers.fixtures import GCP_PROJECT, GCS_TOPIC

pytestmark = pytest.mark.integration

SPLIT = load_split()


def new_data(rows: slice, factor: float) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=np.clip(SPLIT.train.x[rows] * factor, 0, 16), labels=SPLIT.train.y[rows])
    return buf.getvalue()


def served_by_triton(stack) -> str:
    with TritonClient(stack.triton_url) as triton:
        return triton.served_version("digits")


def served_by_gateway(stack) -> str:
    body = {"instances": [{"pixels": SPLIT.holdout.x[0].tolist()}]}
    return httpx.post(f"{stack.gateway_url}/v1/predict", json=body, timeout=30).json()["model"]["version"]


def run_listener_until_new_version(stack, served, tmp_path: Path, args: list[str], env: dict[str, str],
                                   act) -> str:
    before = served(stack)
    log = tmp_path / "listener.log"
    with Listener({**stack.job_env(), **env}, log, ("--debounce", "1", *args)) as listener:
        time.sleep(3)  # subscribed before the event is produced
        act()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert listener.running, log.read_text()[-3000:]
            if served(stack) != before:
                return served(stack)
            time.sleep(2)
        raise AssertionError(f"no new version within 180 s; listener log:\n{log.read_text()[-3000:]}")


def test_s3_upload_via_sqs_notification(stack, gateway, moto_server, tmp_path):
    s3, sqs = moto_server.client("s3"), moto_server.client("sqs")
    bucket = f"rts-data-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName=bucket, Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "data/datasets/digits/"}]}}}]})
    env = {"RTS_DATA_URI": f"s3://{bucket}/data", "RTS_S3_ENDPOINT_URL": moto_server.endpoint_url,
           "RTS_SQS_ENDPOINT_URL": moto_server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    version = run_listener_until_new_version(
        stack, served_by_triton, tmp_path, ["--source", "sqs", "--queue-url", queue], env,
        lambda: s3.put_object(Bucket=bucket, Key="data/datasets/digits/incoming/s3-batch.npz",
                              Body=new_data(slice(600, 900), 0.8)))
    # The run moved the file within the bucket and kept its records there.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "data/datasets/digits/accepted/s3-batch.npz" in keys
    assert f"data/models/digits/versions/{version}.json" in keys


def test_gcs_upload_via_pubsub_notification(stack, gateway, fake_gcs, pubsub_emulator, tmp_path):
    from google.cloud import storage

    bucket = storage.Client().create_bucket(f"rts-data-{uuid.uuid4().hex[:8]}")
    subscription = pubsub_emulator.create_subscription(GCP_PROJECT, GCS_TOPIC, f"listener-{uuid.uuid4().hex[:8]}",
                                                       ack_deadline_s=60)
    env = {"RTS_DATA_URI": f"gs://{bucket.name}/data", **fake_gcs.env}
    version = run_listener_until_new_version(
        stack, served_by_triton, tmp_path, ["--source", "pubsub", "--subscription", subscription], env,
        lambda: bucket.blob("data/datasets/digits/incoming/gcs-batch.npz").upload_from_string(
            new_data(slice(900, 1200), 0.75)))
    assert bucket.blob("data/datasets/digits/accepted/gcs-batch.npz").exists()
    assert bucket.blob(f"data/models/digits/versions/{version}.json").exists()


def test_plain_pubsub_retrain_message(stack, gateway, pubsub_emulator, tmp_path):
    topic = pubsub_emulator.create_topic(GCP_PROJECT, f"retrain-{uuid.uuid4().hex[:8]}")
    subscription = pubsub_emulator.create_subscription(GCP_PROJECT, topic.rsplit("/", 1)[-1],
                                                       f"retrain-listener-{uuid.uuid4().hex[:8]}", ack_deadline_s=60)
    run_listener_until_new_version(
        stack, served_by_gateway, tmp_path, ["--source", "pubsub", "--subscription", subscription],
        dict(pubsub_emulator.env),
        # force: a request alone (no new data) is otherwise recorded as skipped, and nothing new would serve
        lambda: publish_retrain_request(topic, "digits", "asked by a person", force=True))
