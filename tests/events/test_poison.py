"""Poison and duplicate events on a real SQS queue (moto) with a dead-letter queue, through the real listener.

Malformed bodies and messages of an unknown shape are left on the queue, so its redrive policy moves
them to the dead-letter queue after ``maxReceiveCount`` receives; events for an unknown prefix or an
unknown model are acknowledged and start nothing; a notification delivered twice starts one run; and
the good event behind all of them still starts its run. Runs are fakes (no Ray): what is tested is
the listener and the source.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from services.events.sqs import SqsEventSource
from services.modelkit.discovery import load_package
from services.registry.records import Records
from services.retraining.listener import RetrainingListener
from services.storage import open_store

pytestmark = pytest.mark.timeout(90)

DIGITS = load_package("services.models.digits")


def notification(bucket: str, key: str, etag: str) -> str:
    return json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "awsRegion": "us-east-1",
                                    "s3": {"bucket": {"name": bucket},
                                           "object": {"key": key, "size": 10, "eTag": etag}}}]})


@pytest.fixture
def queues(moto_server):
    sqs = moto_server.client("sqs")
    name = f"rts-{uuid.uuid4().hex[:10]}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})})["QueueUrl"]
    return sqs, url, dlq


def test_poison_is_dead_lettered_duplicates_run_once_and_good_events_still_run(moto_server, queues, tmp_path):
    sqs, url, dlq = queues
    bucket = "rts-data"
    poison = ["{not json", json.dumps({"hello": "world"})]
    ignored = [notification(bucket, "elsewhere/file.csv", "e0"),  # not under a model's incoming/
               json.dumps({"type": "rts.retrain.requested", "data": {"model": "cats"}})]  # no such model
    good = notification(bucket, "datasets/digits/incoming/good.npz", "e1")
    for body in [*poison, *ignored, good, good]:  # the good one delivered twice
        sqs.send_message(QueueUrl=url, MessageBody=body)

    submitted: list[list[str]] = []
    records = Records(open_store(f"file://{tmp_path}/bucket"))

    def submit(model, events, run_id):
        submitted.append([e.id for e in events])
        return run_id

    source = SqsEventSource(url, client=moto_server.client("sqs"), s3_client=moto_server.client("s3"),
                            visibility_timeout_s=1, read_object_metadata=False)
    listener = RetrainingListener(source, records, {"digits": DIGITS}, submit=submit,
                                  wait=lambda run_id: {"run_id": run_id, "outcome": "published"},
                                  debounce_s=0.5, max_wait_s=5)
    deadline = time.monotonic() + 45
    try:
        while time.monotonic() < deadline:
            listener.poll_once(receive_timeout_s=1)
            left = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
                       ["ApproximateNumberOfMessages"])
            in_flight = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
                            ["ApproximateNumberOfMessagesNotVisible"])
            if submitted and left == 0 and in_flight == 0:
                break
    finally:
        source.close()

    assert submitted == [[f"{bucket}/datasets/digits/incoming/good.npz@e1"]]  # once, though delivered twice
    dead = []
    while batch := sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages"):
        dead += [m["Body"] for m in batch]
        for m in batch:
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
    assert sorted(dead) == sorted(poison)  # only the poison, each once
