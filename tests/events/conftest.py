"""Event source tests against real servers (moto S3+SQS, Pub/Sub emulator, fake-gcs-server), once per session."""

# Imported, not listed in pytest_plugins: pytest refuses pytest_plugins in a conftest below the rootdir.
from tests.servers.fixtures import fake_gcs, moto_server, pubsub_emulator, seaweedfs  # noqa: F401
