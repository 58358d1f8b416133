"""GCS on fake-gcs-server -> object-finalize notification -> Pub/Sub emulator -> PubSubEventSource.

Also plain retrain requests on their own topic, and redelivery of what was never acked.
"""

from __future__ import annotations

import time
import uuid

import pytest
from google.cloud import pubsub_v1, storage

from services.events import OBJECT_CREATED, RETRAIN_REQUESTED
from services.events.pubsub import PubSubEventSource
from services.retraining.requests import publish_retrain_request
from services.telemetry.propagation import trace_carrier
from tests.events.helpers import producer_span, receive_until
from tests.servers.fixtures import GCP_PROJECT, GCS_TOPIC

pytestmark = pytest.mark.timeout(90)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def gcs_subscription(fake_gcs, pubsub_emulator) -> str:
    return pubsub_emulator.create_subscription(GCP_PROJECT, GCS_TOPIC, unique("gcs-events"), ack_deadline_s=10)


@pytest.fixture
def retrain_topic(pubsub_emulator) -> tuple[str, str]:
    topic = unique("retrain")
    path = pubsub_emulator.create_topic(GCP_PROJECT, topic)
    return path, pubsub_emulator.create_subscription(GCP_PROJECT, topic, unique("retrain-sub"), ack_deadline_s=10)


def test_gcs_upload_becomes_object_created_with_trace_context(gcs_subscription):
    bucket = storage.Client().create_bucket(unique("rts-data"))
    key = "datasets/digits/incoming/new file ü.npz"
    blob = bucket.blob(key)
    with producer_span() as traceparent:
        blob.metadata = trace_carrier()
        blob.upload_from_string(b"digits")

    with PubSubEventSource(gcs_subscription) as source:
        [received] = receive_until(source, lambda r: r.event.data.get("bucket") == bucket.name, timeout_s=20)
        event = received.event
        assert event.type == OBJECT_CREATED
        assert event.subject == key and event.data["key"] == key
        assert event.data["size"] == 6
        assert event.data["etag"] == blob.md5_hash
        assert event.data["version"] == event.data["generation"] == str(blob.generation)
        assert event.data["uri"] == f"gs://{bucket.name}/{key}"
        assert event.id == f"{bucket.name}/{key}@{blob.md5_hash}"
        assert event.traceparent == traceparent  # from the object's metadata in the notification body
        source.ack(received)


def test_plain_message_on_retrain_topic_becomes_retrain_requested(retrain_topic):
    topic, subscription = retrain_topic
    with producer_span("ask") as traceparent:
        message_id = publish_retrain_request(topic, "digits", "drift")
    with PubSubEventSource(subscription) as source:
        [received] = receive_until(source, lambda r: True, timeout_s=20)
        assert received.event.type == RETRAIN_REQUESTED
        assert received.event.id == message_id
        assert received.event.data == {"reason": "drift", "model": "digits"}
        assert received.event.subject == "digits"
        assert received.event.traceparent == traceparent
        source.ack(received)


def test_messages_that_are_not_events_are_dropped(retrain_topic):
    topic, subscription = retrain_topic
    publisher = pubsub_v1.PublisherClient()
    publisher.publish(topic, b"not json").result(timeout=10)
    publisher.publish(topic, b"{}", eventType="OBJECT_DELETE", bucketId="b", objectId="k").result(timeout=10)
    publisher.publish(topic, b'{"reason": "after the junk"}').result(timeout=10)
    with PubSubEventSource(subscription) as source:
        [received] = receive_until(source, lambda r: True, timeout_s=20)
        assert received.event.data == {"reason": "after the junk"}
        source.ack(received)
        assert source.receive(timeout_s=1) == []


def test_unacked_message_is_redelivered(retrain_topic):
    """A consumer that never acks (hung, or gone) gets the message again once its lease runs out.

    Leases here are 10 s (the minimum) and stop being renewed after 10 s, so this takes about 20 s.
    """
    topic, subscription = retrain_topic
    publish_retrain_request(topic, "digits", "redelivery")
    with PubSubEventSource(subscription, max_lease_s=10, lease_extension_s=10) as source:
        [first] = receive_until(source, lambda r: True, timeout_s=20)
        [again] = receive_until(source, lambda r: True, timeout_s=40)
        assert again.event.id == first.event.id
        source.ack(again)
        assert source.receive(timeout_s=2) == []


def test_close_hands_back_unacked_messages_at_once(retrain_topic):
    """close() nacks what it holds: the next consumer need not wait for the ack deadline.

    The next consumer here is a plain synchronous pull: in the emulator (seen with the Debian
    google-cloud-cli-pubsub-emulator), a cancelled streaming pull leaves the subscription's
    streaming delivery broken (NoSuchMethodError in its gRPC server), so a second streaming
    consumer on the same subscription would receive nothing. Real Pub/Sub has no such problem.
    """
    topic, subscription = retrain_topic
    message_id = publish_retrain_request(topic, "digits", "deploy")
    source = PubSubEventSource(subscription)
    [first] = receive_until(source, lambda r: True, timeout_s=20)
    assert first.event.id == message_id
    source.close()  # a deploy: the consumer stops without having finished the event

    subscriber = pubsub_v1.SubscriberClient()
    deadline = time.monotonic() + 5  # well under the 60 s the lease would otherwise hold it
    received = []
    while not received and time.monotonic() < deadline:
        received = subscriber.pull(subscription=subscription, max_messages=10, timeout=5).received_messages
    assert [m.message.message_id for m in received] == [message_id]
    subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    subscriber.close()
