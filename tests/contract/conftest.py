"""Contract tests run against real servers (moto, SeaweedFS, fake-gcs-server) started once per session."""

# Imported, not listed in pytest_plugins: pytest refuses pytest_plugins in a conftest below the rootdir.
from tests.servers.fixtures import fake_gcs, moto_server, pubsub_emulator, seaweedfs  # noqa: F401
