"""Run the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel, outside PyTriton.

Usage::

    with TritonServer(repository="/abs/path/or/s3://...", settings=get_settings()) as triton:
        triton.grpc_url  # grpc://127.0.0.1:8101

Explicit model control: the server starts with the models named in ``load_models`` and loads or
unloads others only when asked (``/v2/repository/models/<name>/load``). For production, point
``RTS_TRITON_URL`` at a Triton from the NGC image instead and do not start this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

from services.common.settings import Settings
from services.runtime.processes import start_process, stop_process, wait_until


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - the venv always has it
        raise RuntimeError("nvidia-pytriton is not installed; run `make venv`") from exc
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


class TritonServer:
    def __init__(self, repository: str | Path, settings: Settings, *, work_dir: Path | None = None,
                 load_models: tuple[str, ...] = ("digits",), extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.repository = str(repository)
        self.settings = settings
        self.work_dir = work_dir or settings.var_dir / "run" / "triton"
        self.load_models = load_models
        self.extra_args = extra_args
        self.extra_env = env or {}
        self.host = settings.triton_host
        self.http_port, self.grpc_port, self.metrics_port = (
            settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port)
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "tritonserver.log"

    def argv(self, backends: Path) -> list[str]:
        args = [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.load_models),
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            "--strict-readiness=true", "--exit-timeout-secs=10", "--log-verbose=0",
        ]
        if self.settings.triton_model_config_name:
            args.append(f"--model-config-name={self.settings.triton_model_config_name}")
        if self.settings.triton_response_cache_mb > 0:
            args.append(f"--cache-config=local,size={self.settings.triton_response_cache_mb * 1024 * 1024}")
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

    def start(self, timeout_s: float = 60.0) -> "TritonServer":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.work_dir / "backends")
        self.log_file.unlink(missing_ok=True)
        self.proc = start_process(self.argv(backends), env=self.environment(), log_file=self.log_file)
        try:
            wait_until(self.is_ready, timeout_s=timeout_s, what="tritonserver", proc=self.proc,
                       log_file=self.log_file)
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
