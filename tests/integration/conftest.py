"""One real stack per test session: tritonserver, a Ray head and the Serve app, on free ports.

Everything is started by `services.runtime.stack.Stack`, the same code `make up` runs, and
stopped (process groups and sessions we created, nothing else) even when tests fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings
from services.observability.otlp_receiver import OtlpReceiver
from services.runtime.ray_cluster import free_port
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory, otlp) -> Stack:
    var_dir = tmp_path_factory.mktemp("var")
    settings = Settings(
        var_dir=var_dir,
        triton_http_port=free_port(), triton_grpc_port=free_port(), triton_metrics_port=free_port(),
        ray_gcs_port=free_port(), ray_dashboard_port=free_port(), serve_http_port=free_port(),
        ray_temp_dir=Path(f"/tmp/rts-test-{os.getpid()}"),
        max_body_bytes=2 * 1024 * 1024, max_batch_items=64, max_image_pixels=4_000_000,
        # Tests start runs themselves; test_retraining_events runs its own listener.
        retraining_listener=False,
    )
    s = Stack(settings, say=lambda msg: print(f"[stack] {msg}", flush=True))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def gateway(stack) -> httpx.Client:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client
