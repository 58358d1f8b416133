"""A real tritonserver in OpenTelemetry mode, exporting to an in-memory OTLP receiver, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import Settings
from services.observability.otlp_receiver import OtlpReceiver
from services.observability.tracing import triton_trace_args
from services.runtime.ray_cluster import free_port


@pytest.fixture(scope="session")
def otlp_receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def digits_repository(tmp_path_factory) -> Path:
    """The digits ensemble (version 1), as `python -m services.models.digits.train --repository` writes it."""
    from services.models.digits.train import build_initial_version

    repo = tmp_path_factory.mktemp("model_repository")
    build_initial_version(f"file://{repo}")
    return repo


@pytest.fixture(scope="session")
def traced_triton(tmp_path_factory, digits_repository, otlp_receiver):
    pytest.importorskip("pytriton", reason="the tritonserver binary comes with nvidia-pytriton")
    from services.runtime.triton import TritonServer

    work = tmp_path_factory.mktemp("triton")
    settings = Settings(var_dir=work, triton_http_port=free_port(), triton_grpc_port=free_port(),
                        triton_metrics_port=free_port())
    # 100 ms export batches instead of Triton's 5 s, so the test waits less.
    args = triton_trace_args(otlp_receiver.traces_url, schedule_delay_ms=100)
    with TritonServer(digits_repository, settings, work_dir=work / "run", extra_args=tuple(args)) as server:
        yield server
