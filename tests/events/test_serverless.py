"""Lambda and Cloud Functions adapters (services.retraining.serverless), fed the real event bodies the
emulators produce.

moto's S3 -> SQS notification body becomes the Lambda event (direct S3 trigger and SQS trigger
shapes); fake-gcs-server's Pub/Sub notification becomes the Eventarc CloudEvents a Cloud Function
receives (storage ``object.v1.finalized`` and ``pubsub.topic.v1.messagePublished``).
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from google.cloud import pubsub_v1, storage

from services.events import OBJECT_CREATED, RETRAIN_REQUESTED
from services.events.serverless import GCS_FINALIZED, PUBSUB_PUBLISHED
from services.registry.records import Records
from services.retraining import jobs
from services.retraining.requests import RunRequest
from services.retraining.serverless import cloud_event_handler, lambda_handler
from services.settings import get_settings
from services.storage import data_store
from services.telemetry.propagation import trace_carrier
from tests.events.helpers import producer_span
from tests.servers.fixtures import GCP_PROJECT, GCS_TOPIC

pytestmark = pytest.mark.timeout(60)

KEY = "datasets/digits/incoming/batch 7+ü.npz"


class Recorder:
    """Stands in for submit_retraining: records what would have started a run."""

    def __init__(self) -> None:
        self.calls: list[list] = []
        self.models: list[str] = []

    def __call__(self, model, events) -> str:
        self.models.append(model)
        self.calls.append(events)
        return f"run-{len(self.calls)}"


class FakeCloudEvent:
    """The interface of the cloudevents SDK object functions-framework passes (not installed here)."""

    def __init__(self, attributes: dict, data: dict) -> None:
        self._attributes, self.data = attributes, data

    def get_attributes(self) -> dict:
        return dict(self._attributes)

    def __getitem__(self, key: str):
        return self._attributes[key]


@pytest.fixture(scope="module")
def s3_notification(moto_server) -> dict:
    """The raw SQS message moto delivers for an S3 put (AWS's own notification format)."""
    s3, sqs = moto_server.client("s3"), moto_server.client("sqs")
    bucket = f"rts-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    url = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"digits")
    etag = s3.head_object(Bucket=bucket, Key=KEY)["ETag"].strip('"')
    bodies = []
    deadline = time.monotonic() + 10
    while len(bodies) < 2 and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            bodies.append(m["Body"])
    test_event, notification = bodies  # S3 sends s3:TestEvent first
    assert "s3:TestEvent" in test_event
    return {"bucket": bucket, "etag": etag, "body": notification, "test_event": test_event}


@pytest.fixture(scope="module")
def gcs_notification(fake_gcs, pubsub_emulator) -> dict:
    """The raw Pub/Sub message fake-gcs-server publishes for an upload (GCS's notification format)."""
    subscription = pubsub_emulator.create_subscription(GCP_PROJECT, GCS_TOPIC, f"fn-{uuid.uuid4().hex[:8]}")
    bucket = storage.Client().create_bucket(f"rts-fn-{uuid.uuid4().hex[:8]}")
    blob = bucket.blob(KEY)
    with producer_span() as traceparent:
        blob.metadata = trace_carrier()
        blob.upload_from_string(b"digits")
    subscriber = pubsub_v1.SubscriberClient()
    deadline, found = time.monotonic() + 15, None
    while found is None and time.monotonic() < deadline:
        for m in subscriber.pull(subscription=subscription, max_messages=10, timeout=5).received_messages:
            if m.message.attributes.get("bucketId") == bucket.name:
                found = m.message
    assert found is not None, "fake-gcs-server published no notification for the upload"
    subscriber.close()
    return {"bucket": bucket.name, "md5": blob.md5_hash, "generation": str(blob.generation),
            "traceparent": traceparent, "attributes": dict(found.attributes), "data": found.data,
            "message_id": found.message_id, "subscription": subscription}


def test_lambda_with_a_direct_s3_trigger(s3_notification):
    event = {"Records": json.loads(s3_notification["body"])["Records"]}  # what Lambda gets from S3
    submit = Recorder()
    result = lambda_handler(event, None, submit_retraining=submit)
    [[cloud_event]] = submit.calls
    assert result["runs"] == {"digits": "run-1"} and submit.models == ["digits"]
    assert cloud_event.type == OBJECT_CREATED
    assert cloud_event.data["key"] == KEY  # URL-decoded
    assert cloud_event.data["etag"] == s3_notification["etag"]
    assert cloud_event.id == f"{s3_notification['bucket']}/{KEY}@{s3_notification['etag']}"


def test_lambda_with_an_sqs_trigger_keeps_the_trace_context(s3_notification):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = {"Records": [
        {"eventSource": "aws:sqs", "messageId": "m0", "body": s3_notification["test_event"], "messageAttributes": {}},
        {"eventSource": "aws:sqs", "messageId": "m1", "body": s3_notification["body"],
         "messageAttributes": {"traceparent": {"stringValue": traceparent, "dataType": "String"}}},
    ]}
    submit = Recorder()
    lambda_handler(event, None, submit_retraining=submit)
    [[cloud_event]] = submit.calls
    assert cloud_event.data["key"] == KEY
    assert cloud_event.traceparent == traceparent


def test_lambda_ignores_objects_that_are_not_new_data(s3_notification):
    body = json.loads(s3_notification["body"])
    body["Records"][0]["s3"]["object"]["key"] = "model_repository/digits/3/model.onnx"  # a run's own output
    submit = Recorder()
    result = lambda_handler(body, None, submit_retraining=submit)
    assert submit.calls == [] and result["runs"] == {} and len(result["skipped"]) == 1
    assert lambda_handler({"Records": []}, None, submit_retraining=submit)["runs"] == {}


def test_cloud_function_for_gcs_finalized(gcs_notification):
    resource = json.loads(gcs_notification["data"])  # the object resource, as Eventarc's data carries it
    bucket = gcs_notification["bucket"]
    cloud_event = FakeCloudEvent({
        "id": "1234", "specversion": "1.0", "type": GCS_FINALIZED, "time": resource["updated"],
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}", "subject": f"objects/{KEY}",
    }, resource)
    submit = Recorder()
    result = cloud_event_handler(cloud_event, submit_retraining=submit)
    [[event]] = submit.calls
    assert result["runs"] == {"digits": "run-1"}
    assert event.type == OBJECT_CREATED
    assert (event.data["bucket"], event.data["key"]) == (bucket, KEY)
    assert event.data["generation"] == gcs_notification["generation"]
    assert event.id == f"{bucket}/{KEY}@{gcs_notification['md5']}"
    assert event.traceparent == gcs_notification["traceparent"]  # from the object's metadata


def test_cloud_function_for_pubsub_messages(gcs_notification):
    def published(attributes: dict, data: bytes, message_id: str) -> FakeCloudEvent:
        return FakeCloudEvent({"id": message_id, "type": PUBSUB_PUBLISHED, "specversion": "1.0",
                               "source": f"//pubsub.googleapis.com/projects/{GCP_PROJECT}/topics/t"},
                              {"message": {"attributes": attributes, "data": base64.b64encode(data).decode(),
                                           "messageId": message_id, "publishTime": "2026-01-01T00:00:00Z"},
                               "subscription": gcs_notification["subscription"]})

    submit = Recorder()
    cloud_event_handler(published(gcs_notification["attributes"], gcs_notification["data"],
                                  gcs_notification["message_id"]), submit_retraining=submit)
    cloud_event_handler(published({}, b'{"reason": "weekly", "model": "digits"}', "m-2"), submit_retraining=submit)
    [[storage_event], [retrain]] = submit.calls
    assert storage_event.type == OBJECT_CREATED and storage_event.data["key"] == KEY
    assert storage_event.traceparent == gcs_notification["traceparent"]
    assert retrain.type == RETRAIN_REQUESTED and retrain.id == "m-2"
    assert retrain.data == {"reason": "weekly", "model": "digits"}


def test_default_submitter_starts_a_ray_job(s3_notification, monkeypatch, tmp_path):
    submitted = {}

    class FakeJobClient:
        def __init__(self, address):
            submitted["address"] = address

        def submit_job(self, **kwargs):
            submitted.update(kwargs)
            return kwargs["submission_id"]

    monkeypatch.setattr(jobs, "RayJobs", FakeJobClient)  # the Jobs REST API itself: tests/unit/test_jobs.py
    monkeypatch.setenv("RTS_RAY_DASHBOARD_URL", "http://ray-head.example:8265")
    monkeypatch.setenv("RTS_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = lambda_handler({"Records": json.loads(s3_notification["body"])["Records"]}, None)
        run_id = result["runs"]["digits"]
        assert submitted["address"] == "http://ray-head.example:8265"
        assert submitted["submission_id"] == run_id
        assert submitted["entrypoint"] == f"python -m services.retraining.run --run-id {run_id}"
        assert submitted["runtime_env"]["env_vars"]["RTS_VAR_DIR"] == str(tmp_path)
        # The events reach the run typed, through the data bucket, not through a command line.
        request = RunRequest.model_validate(Records(data_store(get_settings())).request(run_id))
        assert request.model == "digits" and [e.id for e in request.events] == result["events"]
        assert request.events[0].data["key"] == KEY
    finally:
        get_settings.cache_clear()
