"""S3 on moto -> bucket notification -> SQS -> SqsEventSource, all real HTTP."""

from __future__ import annotations

import time
import uuid

import pytest

from services.events import OBJECT_CREATED, RETRAIN_REQUESTED
from services.events.sqs import SqsEventSource
from services.retraining.requests import send_retrain_request_sqs
from services.telemetry.propagation import trace_carrier
from tests.events.helpers import producer_span, receive_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def bucket_queue(moto_server):
    """A fresh bucket whose ObjectCreated notifications go to a fresh queue."""
    s3, sqs = moto_server.client("s3"), moto_server.client("sqs")
    name = f"rts-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=name, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    return name, url


def make_source(moto_server, url, **kwargs) -> SqsEventSource:
    return SqsEventSource(url, client=moto_server.client("sqs"), s3_client=moto_server.client("s3"), **kwargs)


def test_s3_put_becomes_object_created_with_trace_context(moto_server, bucket_queue):
    bucket, url = bucket_queue
    key = "datasets/digits/incoming/new file+1 ü.npz"  # S3 URL-encodes this in the notification
    s3 = moto_server.client("s3")
    with producer_span() as traceparent:
        s3.put_object(Bucket=bucket, Key=key, Body=b"digits", Metadata=trace_carrier())
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')

    with make_source(moto_server, url) as source:
        [received] = receive_until(source, lambda r: True, timeout_s=15)  # the s3:TestEvent is skipped
        event = received.event
        assert event.type == OBJECT_CREATED
        assert event.subject == key
        assert event.data["bucket"] == bucket and event.data["key"] == key
        assert event.data["etag"] == etag and event.data["size"] == 6
        assert event.data["uri"] == f"s3://{bucket}/{key}"
        assert event.id == f"{bucket}/{key}@{etag}"
        assert event.source == f"s3://{bucket}"
        assert event.traceparent == traceparent  # read back from the object's metadata
        source.ack(received)
        assert source.receive(timeout_s=1) == []


def test_retrain_request_over_sqs_carries_trace_context_in_attributes(moto_server, bucket_queue):
    _, url = bucket_queue
    with producer_span("ask") as traceparent:
        message_id = send_retrain_request_sqs(url, "digits", "drift",
                                              client=moto_server.client("sqs"))
    with make_source(moto_server, url) as source:
        [received] = receive_until(source, lambda r: True, timeout_s=15)
        assert received.event.type == RETRAIN_REQUESTED
        assert received.event.id == message_id
        assert received.event.data == {"reason": "drift", "model": "digits"}
        assert received.event.traceparent == traceparent
        source.ack(received)


def test_unacked_event_is_redelivered_after_the_visibility_timeout(moto_server, bucket_queue):
    bucket, url = bucket_queue
    moto_server.client("s3").put_object(Bucket=bucket, Key="datasets/digits/incoming/a.csv", Body=b"x")
    with make_source(moto_server, url, visibility_timeout_s=1) as source:
        [first] = receive_until(source, lambda r: True, timeout_s=15)
        assert source.receive(timeout_s=0) == []  # invisible while we hold it
        time.sleep(1.5)  # a crashed consumer never acks: the message comes back
        [again] = receive_until(source, lambda r: True, timeout_s=10)
        assert again.event.id == first.event.id
        source.ack(again)
        time.sleep(1.5)
        assert source.receive(timeout_s=1) == []  # acked: gone for good
