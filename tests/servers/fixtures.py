"""Session-scoped pytest fixtures for the real test servers in ``tests.servers``.

Usage (in a test folder's conftest.py; pytest refuses ``pytest_plugins`` below the rootdir)::

    from tests.servers.fixtures import fake_gcs, moto_server  # noqa: F401

    def test_something(moto_server, fake_gcs): ...

Each server starts on first use and once per session, in its own temp folder, on free loopback
ports. ``pubsub_emulator`` and ``fake_gcs`` also set ``PUBSUB_EMULATOR_HOST`` /
``STORAGE_EMULATOR_HOST`` for the rest of the session (the Google client libraries read them when a
client is made) and put back what was there before at the end.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from typing import Iterator

import pytest

from tests.servers.gcs import FakeGcsServer
from tests.servers.pubsub import PubSubEmulator
from tests.servers.s3 import MotoServer, SeaweedFS

GCP_PROJECT = "rts-test"
GCS_TOPIC = "gcs-object-events"  # fake-gcs-server publishes every object finalize here


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set these variables, and on exit restore only them (others may have changed meanwhile)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Shared:
    """One server per session even when several conftests import these fixtures.

    Each conftest that imports a fixture gets its own copy of it, so without this a session
    running tests/contract and tests/events would start every server twice. The last user stops it.
    """

    def __init__(self) -> None:
        self.entries: dict[str, list] = {}  # name -> [server, exit stack, users]

    @contextmanager
    def use(self, name: str, start) -> Iterator:
        if name not in self.entries:
            stack = ExitStack()
            try:
                server = start(stack)
            except BaseException:
                stack.close()
                raise
            self.entries[name] = [server, stack, 0]
        entry = self.entries[name]
        entry[2] += 1
        try:
            yield entry[0]
        finally:
            entry[2] -= 1
            if entry[2] == 0:
                del self.entries[name]
                entry[1].close()


_shared = _Shared()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with _shared.use("moto", lambda stack: stack.enter_context(MotoServer())) as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    def start(stack: ExitStack) -> SeaweedFS:
        return stack.enter_context(SeaweedFS(tmp_path_factory.mktemp("seaweedfs")))

    with _shared.use("seaweedfs", start) as server:
        yield server


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory) -> Iterator[PubSubEmulator]:
    def start(stack: ExitStack) -> PubSubEmulator:
        emulator = stack.enter_context(PubSubEmulator(tmp_path_factory.mktemp("pubsub")))
        stack.enter_context(environment(emulator.env))
        return emulator

    with _shared.use("pubsub", start) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory, pubsub_emulator) -> Iterator[FakeGcsServer]:
    def start(stack: ExitStack) -> FakeGcsServer:
        pubsub_emulator.create_topic(GCP_PROJECT, GCS_TOPIC)  # must exist before fake-gcs-server starts
        server = stack.enter_context(FakeGcsServer(tmp_path_factory.mktemp("fake-gcs"), pubsub_emulator,
                                                   project=GCP_PROJECT, topic=GCS_TOPIC))
        stack.enter_context(environment(server.env))
        return server

    with _shared.use("fake_gcs", start) as server:
        yield server
