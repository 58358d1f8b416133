"""The official Google Cloud Pub/Sub emulator (Java), for tests.

Usage::

    with PubSubEmulator(tmp_path) as emulator:
        with mock.patch.dict(os.environ, emulator.env):    # PUBSUB_EMULATOR_HOST
            emulator.create_topic("rts-test", "gcs-events")

It comes from the Debian package ``google-cloud-cli-pubsub-emulator`` (installed on the project's
machines and in CI, not from PyPI). When it is missing the fixture fails, saying so: skipping
would let CI pass without ever testing the Pub/Sub path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

from google.cloud import pubsub_v1

from services.runtime.processes import ManagedProcess, free_port, port_open

EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


class PubSubEmulator(ManagedProcess):
    what = "Pub/Sub emulator"
    stop_timeout_s = 10.0

    def __init__(self, work_dir: Path, binary: Path | None = None) -> None:
        self.work_dir = Path(work_dir)
        super().__init__(self.work_dir / "pubsub-emulator.log", cwd=self.work_dir)
        self.binary = Path(binary or os.environ.get("PUBSUB_EMULATOR_BIN") or EMULATOR)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host}

    def prepare(self) -> None:
        if not self.binary.exists():
            raise RuntimeError(
                f"The Google Cloud Pub/Sub emulator is not installed (no {self.binary}). Install the Debian "
                "package google-cloud-cli-pubsub-emulator (it needs Java 17), or point PUBSUB_EMULATOR_BIN "
                "at its cloud-pubsub-emulator script.")
        if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
            raise RuntimeError("The Pub/Sub emulator needs Java 17 and no `java` is on PATH; install openjdk-17-jre.")
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        return [str(self.binary), "--host=127.0.0.1", f"--port={self.port}"]

    def ready(self) -> bool:
        return port_open(self.port)

    def create_topic(self, project: str, topic: str) -> str:
        with mock.patch.dict(os.environ, self.env):
            publisher = pubsub_v1.PublisherClient()
        path = publisher.topic_path(project, topic)
        publisher.create_topic(name=path)
        return path

    def create_subscription(self, project: str, topic: str, subscription: str, ack_deadline_s: int = 10) -> str:
        with mock.patch.dict(os.environ, self.env):
            subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(project, subscription)
        with subscriber:
            subscriber.create_subscription(name=path, topic=f"projects/{project}/topics/{topic}",
                                           ack_deadline_seconds=ack_deadline_s)
        return path
