"""Run the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel, outside PyTriton.

Usage::

    with TritonServer(repository="/abs/path/or/s3://...", settings=get_settings(), load_models=("churn",)) as triton:
        triton.grpc_url  # grpc://127.0.0.1:8101

Explicit model control: the server starts with the models named in ``load_models`` (each model's
ensemble; Triton loads its members with it) and loads or unloads others only when asked. For
production, point ``RTS_TRITON_URL`` at a Triton from the NGC image instead and do not start this.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

import pytriton

from services.runtime.processes import ManagedProcess, rotate_log
from services.settings import Settings
from services.triton.client import TritonClient


def pytriton_root() -> Path:
    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_backends(target: Path) -> Path:
    """Copy the wheel's backends to a folder we own and put the Python stub for this interpreter in it."""
    root = pytriton_root()
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"the pytriton wheel has no Python backend stub for Python {python_version}")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(root / "backends", target)
    shutil.copy2(stub, target / "python" / "triton_python_backend_stub")
    return target


class TritonServer(ManagedProcess):
    what = "tritonserver"

    def __init__(self, repository: str | Path, settings: Settings, *, load_models: tuple[str, ...],
                 work_dir: Path | None = None, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir or settings.var_dir / "run" / "triton"
        super().__init__(self.work_dir / "tritonserver.log")
        self.repository = str(repository)
        self.settings = settings
        self.load_models = load_models
        self.extra_args = extra_args
        self.extra_env = env or {}
        triton = settings.triton
        self.host, self.http_port, self.grpc_port, self.metrics_port = (
            triton.host, triton.http_port, triton.grpc_port, triton.metrics_port)
        self.client = TritonClient(self.grpc_url)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def backends(self) -> Path:
        return self.work_dir / "backends"

    def prepare(self) -> None:
        prepare_backends(self.backends)
        rotate_log(self.log_file)  # a restarted Triton keeps the log of the one that crashed

    def argv(self) -> list[str]:
        args = [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.load_models),
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            "--strict-readiness=true", "--exit-timeout-secs=10", "--log-verbose=0",
        ]
        if self.settings.triton.model_config_name:
            args.append(f"--model-config-name={self.settings.triton.model_config_name}")
        if self.settings.triton.response_cache_mb > 0:
            args.append(f"--cache-config=local,size={self.settings.triton.response_cache_mb * 1024 * 1024}")
        return [*args, *self.extra_args]

    def environment(self) -> dict[str, str]:
        site_packages = sysconfig.get_paths()["purelib"]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(Path(site_packages) / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH")) if p)
        # model.py files import numpy and onnxruntime from this venv. The embedded interpreter of the
        # Python backend stub finds its prefix through PATH, so the venv's bin goes first too.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site_packages, env.get("PYTHONPATH")) if p)
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
        env.update(self.extra_env)
        return env

    def ready(self) -> bool:
        return self.client.server_ready()

    def stop(self) -> None:
        self.client.close()
        super().stop()
