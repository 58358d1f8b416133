"""Real servers for tests, started on free loopback ports in folders of their own.

Each is a context manager that starts the real program (moto's HTTP server, SeaweedFS, the
Google Pub/Sub emulator, fake-gcs-server), waits until it answers, and stops only what it
started (by process group) on exit. ``tests/servers/fixtures.py`` turns them into session-scoped
pytest fixtures; a test folder opts in with ``pytest_plugins = ["tests.servers.fixtures"]`` in
its conftest.

Usage::

    with MotoServer() as moto, PubSubEmulator(tmp) as pubsub, FakeGcsServer(tmp, pubsub, "p", "t") as gcs:
        moto.client("s3").create_bucket(Bucket="b")
        os.environ.update(gcs.env)   # STORAGE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST
"""

from tests.servers.gcs import FakeGcsServer
from tests.servers.pubsub import PubSubEmulator
from tests.servers.s3 import MotoServer, SeaweedFS

__all__ = ["FakeGcsServer", "MotoServer", "PubSubEmulator", "SeaweedFS"]
