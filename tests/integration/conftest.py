"""One real stack per test session: tritonserver, a Ray head and the Serve app, on free ports.

Everything is started by `services.runtime.stack.Stack`, the same code `make up` runs, and
stopped (process groups and sessions we created, nothing else) even when tests fail.

The stack serves the bundled models and a third one a user brings: ``tests/third_model/iris_pkg``
copied into a temporary folder under a name of its own, put on the Python path and in
``RTS_MODELS``, with no platform edit (``test_third_model.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

from services.modelkit.discovery import bundled_packages
from services.settings import REPO_ROOT, Settings
from services.telemetry.otlp_receiver import OtlpReceiver
from services.runtime.processes import free_ports
from services.runtime.stack import Stack
# Real S3/SQS, GCS and Pub/Sub servers for the cloud event paths (imported: pytest_plugins is root-only).
from tests.servers.fixtures import fake_gcs, moto_server, pubsub_emulator  # noqa: F401


@pytest.fixture(scope="session")
def otlp():
    """An OTLP/HTTP receiver; the stack's processes (replicas, Triton, jobs) export their spans to it."""
    keys = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_BSP_SCHEDULE_DELAY"}
    saved = {k: os.environ.get(k) for k in keys}
    with OtlpReceiver() as receiver:
        os.environ.update({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200"})
        try:
            yield receiver
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


THIRD_MODEL = "acme_iris"


@pytest.fixture(scope="session")
def third_model(tmp_path_factory):
    """The import path of a model package that lives outside this repository, as a user's would."""
    root = tmp_path_factory.mktemp("user_packages")
    shutil.copytree(REPO_ROOT / "tests" / "third_model" / "iris_pkg", root / THIRD_MODEL)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), saved) if p)  # Ray workers, jobs, the CLI
    sys.path.insert(0, str(root))
    try:
        yield THIRD_MODEL
    finally:
        sys.path.remove(str(root))
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, otlp, third_model, request) -> Stack:
    var_dir = tmp_path_factory.mktemp("var")
    http, grpc, metrics, gcs, dashboard, serve, launcher = free_ports(7)
    settings = Settings(
        var_dir=var_dir,
        models=[*bundled_packages(), third_model],
        triton={"http_port": http, "grpc_port": grpc, "metrics_port": metrics},
        ray={"gcs_port": gcs, "dashboard_port": dashboard, "temp_dir": Path(f"/tmp/rts-test-{os.getpid()}")},
        serve={"http_port": serve}, launcher={"metrics_port": launcher},
        limits={"max_body_bytes": 2 * 1024 * 1024, "max_batch_items": 64, "max_image_pixels": 4_000_000},
        # Tests start runs themselves; test_retraining_events runs its own listener.
        listener={"enabled": False},
    )
    s = Stack(settings, say=lambda msg: print(f"[stack] {msg}", flush=True))
    s.start()
    try:
        # The tests written before the rollout expect a version that passed its gates to serve at once;
        # test_rollout sets the policies it tests, through the same admin API, and puts this one back.
        set_policies(s, DIRECT)
        yield s
    finally:
        s.stop()
        if not request.session.testsfailed:  # Ray's session files (its logs) are kept only for a failed session
            shutil.rmtree(settings.ray.temp_dir, ignore_errors=True)


DIRECT = "strategy: direct\n"


def set_policies(stack: Stack, policy: str, models: list[str] | None = None) -> None:
    token = stack.settings.admin.token.get_secret_value()
    with httpx.Client(base_url=stack.gateway_url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
        for name in models or c.get("/v1/models").json()["models"]:
            name = name if isinstance(name, str) else name["name"]
            c.put(f"/admin/models/{name}/policy", json={"yaml": policy}).raise_for_status()


@pytest.fixture(scope="session")
def gateway(stack) -> httpx.Client:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client
