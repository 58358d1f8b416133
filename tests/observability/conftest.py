"""A real tritonserver in OpenTelemetry mode, exporting to an in-memory OTLP receiver, once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.modelkit.discovery import load_package
from services.retraining.run import build_first_version
from services.runtime.processes import free_ports
from services.runtime.triton import TritonServer
from services.settings import Settings
from services.telemetry.otlp_receiver import OtlpReceiver
from services.telemetry.tracing import triton_trace_args


@pytest.fixture(scope="session")
def otlp_receiver():
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def digits_repository(tmp_path_factory) -> Path:
    """The digits ensemble (version 1), as `rts models init digits` writes it."""
    var = tmp_path_factory.mktemp("var")
    build_first_version(load_package("services.models.digits"), Settings(var_dir=var))
    return var / "model_repository"


@pytest.fixture(scope="session")
def traced_triton(tmp_path_factory, digits_repository, otlp_receiver):
    work = tmp_path_factory.mktemp("triton")
    settings = Settings(var_dir=work, triton=dict(zip(("http_port", "grpc_port", "metrics_port"),
                                                   free_ports(3))))
    # 100 ms export batches instead of Triton's 5 s, so the test waits less.
    args = triton_trace_args(otlp_receiver.traces_url, schedule_delay_ms=100)
    with TritonServer(digits_repository, settings, load_models=("digits",), work_dir=work / "run",
                      extra_args=tuple(args)) as server:
        yield server
