"""A Ray head node of our own: own temp dir, own ports, stopped through its own process group.

Usage::

    with RayHead(settings) as ray_head:
        ray_head.address          # 127.0.0.1:6380 (GCS)
        ray_head.dashboard_url    # http://127.0.0.1:8265

Never ``ray stop``: it kills every Ray process on the machine by name. ``ray start --block`` runs
in its own process group; SIGTERM to that group ends the head and every worker it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from services.runtime.processes import ManagedProcess, StartupFailed, free_ports, rotate_log, wait_until
from services.settings import Settings

def serve_fast_path_env(temp_dir: Path, haproxy: bool, retry_on: str = "conn-failure") -> dict[str, str]:
    """Documented Serve settings that cut the per-hop cost on small machines (loadtests/README.md).

    Throughput-optimized mode: gRPC between replicas, user code on the replica's loop, direct
    ingress. HAProxy in place of the Python proxy on the HTTP port (c=1 p50 12 ms -> 3.4 ms here).
    HAProxy's files go under our own temp dir and its stats/metrics listeners on free ports, so
    two clusters on one machine do not collide.
    """
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    if haproxy:
        stats_port, metrics_port = free_ports(2)
        base = temp_dir / "h"  # HAProxy adds a 40-character folder; unix socket paths max out at 97
        env.update({
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
            # A replica killed with requests on it: HAProxy sends them to another replica (they are
            # answered, not failed). Replays are safe for predictions; see README "Faults we survive".
            "RAY_SERVE_HAPROXY_RETRY_ON": retry_on,
            # A client silent this long is cut off (Ray's default, an hour, lets slow-header clients hold
            # HAProxy's connection slots); longer than Serve's 30 s request timeout.
            "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
        })
    return env


class RayHead(ManagedProcess):
    what = "Ray head"
    startup_timeout_s = 90.0
    ready_interval_s = 0.5
    stop_timeout_s = 10.0

    def __init__(self, settings: Settings, *, gcs_port: int | None = None, dashboard_port: int | None = None,
                 temp_dir: Path | None = None, log_file: Path | None = None, env: dict[str, str] | None = None,
                 num_cpus: int | None = None) -> None:
        super().__init__(log_file or settings.var_dir / "run" / "ray-head.log")
        self.settings = settings
        self.gcs_port = gcs_port or settings.ray.gcs_port
        self.dashboard_port = dashboard_port or settings.ray.dashboard_port
        self.temp_dir = temp_dir or settings.ray.temp_dir
        self.num_cpus = num_cpus or os.cpu_count() or 2
        self.extra_env = {**(serve_fast_path_env(self.temp_dir, settings.serve.haproxy, settings.serve.retry_on)
                             if settings.serve.fast_path else {}), **(env or {})}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.update({
            "RAY_AUTH_MODE": "disabled",  # local loopback cluster; ray.init() would otherwise create a token
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "0",
            # Workers import services/ and ray_apps/ from the venv (pip install -e .), not from a
            # runtime_env working_dir: zipping the repo is slow and can swallow the temp dir.
        })
        # Job entrypoints say `python ...`: it must be this venv's, activated or not.
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
        env.update(self.extra_env)
        if any(k.startswith("OTEL_EXPORTER_OTLP") for k in env) and env.get("OTEL_SDK_DISABLED") != "true":
            # Serve's own proxy/replica spans, exported with the same OTLP settings as ours.
            env.setdefault("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH",
                           "services.telemetry.tracing:serve_span_processors")
            env.setdefault("RAY_SERVE_TRACING_SAMPLING_RATIO", "1.0")
            env.setdefault("OTEL_SERVICE_NAME", "rts-serve")
        return env

    def argv(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        client, agent, agent_grpc, runtime_env, metrics = free_ports(5)
        return [
            ray, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={512 * 1024 * 1024}",
        ]

    def prepare(self) -> None:
        if self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        rotate_log(self.log_file)

    def ready(self) -> bool:
        return self.dashboard_ready()

    def dashboard_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.dashboard_url}/api/serve/applications/", timeout=2) as resp:
            return resp.status == 200

    def serve_deploy(self, config: Path, timeout_s: float = 180.0) -> None:
        """`serve deploy` a config file and wait until every application in it is RUNNING."""
        serve = str(Path(sys.executable).with_name("serve"))
        done = subprocess.run([serve, "deploy", str(config), "--address", self.dashboard_url],
                              env=self.environment(), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise StartupFailed(f"serve deploy {config} failed:\n{done.stdout}\n{done.stderr}")
        wait_until(self._apps_running, timeout_s=timeout_s, what=f"Serve applications of {config}",
                   proc=self.proc, log_file=self.log_file, interval_s=0.5)

    def serve_status(self) -> dict:
        with urllib.request.urlopen(f"{self.dashboard_url}/api/serve/applications/", timeout=5) as resp:
            return json.load(resp)

    def _apps_running(self) -> bool:
        apps = self.serve_status().get("applications", {})
        failed = {n: a.get("message") for n, a in apps.items() if a.get("status") == "DEPLOY_FAILED"}
        if failed:
            raise StartupFailed(f"Serve deployment failed: {failed}")
        return bool(apps) and all(a.get("status") == "RUNNING" for a in apps.values())
