"""The whole local system: Triton, a Ray head with the dashboard, and the Serve application.

``make up`` runs ``rts up``, which is ``Stack(settings).run_forever()``; the integration tests use
the same class on other ports, so what is tested is what users run.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import yaml
from pydantic import SecretStr

from services.common.settings import Settings
from services.model_repository import ModelRepository
from services.retraining.dataset import INCOMING
from services.models.digits import train as digits_train
from services.runtime.processes import start_process, stop_process, wait_until
from services.runtime.ray_cluster import RayHead
from services.observability.tracing import triton_trace_args
from services.runtime.triton import TritonServer
from services.storage import open_store


def ensure_model_repository(settings: Settings, say: Callable[[str], None] = print) -> str:
    """Train the bundled digits models into the repository if it has no version yet.

    Returns the repository as Triton's --model-repository wants it (a path, or s3://... / gs://...).
    """
    store = open_store(settings.model_repository_uri)
    if not ModelRepository(store).versions(digits_train.ENSEMBLE):
        say(f"no models in {settings.model_repository_uri}: training the digits ensemble (a few seconds) ...")
        result = digits_train.build_initial_version(settings.model_repository_uri, data_uri=settings.data_uri)
        say(f"trained digits v1, holdout accuracy {result['holdout_accuracy']['ensemble']:.3f}")
    return store.triton_repository_uri()


def render_serve_config(source: Path, target: Path, *, http_port: int, triton_url: str,
                        triton_http_url: str | None = None, env_vars: dict[str, str] | None = None) -> Path:
    """Copy a Serve config with this stack's HTTP port and Triton address filled in.

    ``env_vars`` go into each application's ``runtime_env`` (e.g. OTEL_* to trace one deployment).
    """
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {})["port"] = http_port
    config["http_options"]["host"] = "127.0.0.1"
    for app in config.get("applications", []):
        app.setdefault("args", {}).setdefault("triton_url", triton_url)
        if triton_http_url:
            app["args"].setdefault("triton_http_url", triton_http_url)
        if env_vars:
            app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings this process was given explicitly, as RTS_* variables for the Ray workers."""
    env = {}
    for name, value in settings.model_dump(exclude_unset=True, by_alias=True).items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name if name.startswith("RTS_") else f"RTS_{name.upper()}"] = str(value)
    return env


class Stack:
    def __init__(self, settings: Settings, serve_config: Path | None = None, *, work_dir: Path | None = None,
                 ray_temp_dir: Path | None = None, say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.serve_config = serve_config or settings.serve_config
        self.work_dir = work_dir or settings.var_dir / "run"
        self.say = say
        self.ray_temp_dir = ray_temp_dir
        self.triton_repository: str | None = None
        self.triton: TritonServer | None = None
        self.ray: RayHead | None = None
        self.listener: subprocess.Popen | None = None
        if settings.admin_token is None:
            # A fresh token per `make up`, printed once; set RTS_ADMIN_TOKEN to choose your own.
            self.settings = settings = settings.model_copy(update={"admin_token": SecretStr(secrets.token_urlsafe(24))})
            settings.model_fields_set.add("admin_token")

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serve_http_port}"

    @property
    def triton_url(self) -> str:
        return self.settings.triton_url or self.triton.grpc_url

    @property
    def triton_http_url(self) -> str | None:
        return self.settings.effective_triton_http_url

    def start(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        repository = self.triton_repository = ensure_model_repository(self.settings, self.say)
        if self.settings.triton_url:
            self.say(f"using external Triton at {self.settings.triton_url}")
        else:
            self.say(f"[1/3] starting tritonserver on :{self.settings.triton_http_port} (HTTP) "
                     f"and :{self.settings.triton_grpc_port} (gRPC) ...")
            self.triton = TritonServer(repository, self.settings, work_dir=self.work_dir / "triton",
                                       extra_args=tuple(triton_trace_args(rate=self.settings.triton_trace_rate))).start()
            self.say(f"      Triton ready ({time.monotonic() - t0:.1f}s); log: {self.triton.log_file}")
        self.say(f"[2/3] starting a Ray head (dashboard :{self.settings.ray_dashboard_port}) ...")
        self.ray = RayHead(self.settings, log_file=self.work_dir / "ray-head.log", env=settings_env(self.settings),
                           temp_dir=self.ray_temp_dir).start()
        self.say(f"      Ray ready ({time.monotonic() - t0:.1f}s); temp dir {self.ray.temp_dir}")
        self.say(f"[3/3] deploying {self.serve_config.name} on :{self.settings.serve_http_port} ...")
        rendered = render_serve_config(self.serve_config, self.work_dir / "serve_config.yaml",
                                       http_port=self.settings.serve_http_port, triton_url=self.triton_url,
                                       triton_http_url=self.triton_http_url)
        self.ray.serve_deploy(rendered)
        wait_until(self.healthy, timeout_s=120, what="gateway /healthz", interval_s=0.5)
        self.say(f"      serving ({time.monotonic() - t0:.1f}s)")
        if self.settings.data_uri.startswith("file://"):
            # The folder users copy new data into exists from the start.
            incoming = Path(open_store(self.settings.data_uri).triton_repository_uri(INCOMING))
            incoming.mkdir(parents=True, exist_ok=True)
        if self.settings.retraining_listener:
            self.listener = start_process(
                [sys.executable, "-m", "services.retraining.listener", "--source", "local"],
                env={**os.environ, **self.job_env()}, log_file=self.work_dir / "listener.log")
            self.say(f"      retraining listener watching {self.settings.data_uri}/{INCOMING} "
                     f"(log: {self.work_dir / 'listener.log'})")

    def job_env(self) -> dict[str, str]:
        """Environment for processes that talk to this stack (listener, jobs, CLI)."""
        return {**settings_env(self.settings), "RTS_RAY_DASHBOARD_URL": self.ray.dashboard_url,
                "RTS_TRITON_URL": self.triton_url}

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=3) as resp:
            return resp.status == 200

    def stop(self) -> None:
        if self.listener is not None:
            stop_process(self.listener, timeout_s=10)
            self.listener = None
        if self.ray is not None:
            self.say("stopping Ray ...")
            self.ray.stop()
            self.ray = None
        if self.triton is not None:
            self.say("stopping Triton ...")
            self.triton.stop()
            self.triton = None

    def run_forever(self) -> None:
        """Start, print where everything is, and stop everything on Ctrl-C or SIGTERM."""

        def _terminate(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _terminate)
        try:
            self.start()
            self.say(
                f"\ngateway    {self.gateway_url}  (try {self.gateway_url}/docs)\n"
                f"dashboard  http://127.0.0.1:{self.settings.ray_dashboard_port}\n"
                f"triton     {self.triton_url}\n"
                f"admin      Authorization: Bearer {self.settings.admin_token.get_secret_value()}\n"
                "Ctrl-C stops everything this command started."
            )
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.say("\nshutting down ...")
        finally:
            self.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
