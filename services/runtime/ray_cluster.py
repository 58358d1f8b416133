"""A Ray head node of our own: own temp dir, own ports, stopped through its own process group; and
worker nodes beside it on the same machine, the way Ray's own tests simulate a cluster.

Usage::

    with RayHead(settings) as ray_head:
        ray_head.address          # 127.0.0.1:6380 (GCS)
        ray_head.dashboard_url    # http://127.0.0.1:8265
        with RayWorkerNode(ray_head, 1, num_cpus=1, resources={SERVING: 100}, log_file=...) as node:
            node.node_id()        # its raylet's node id, as the dashboard lists it

Never ``ray stop``: it kills every Ray process on the machine by name. ``ray start --block`` runs
in its own process group; SIGTERM to that group ends the head and every worker it started. A worker
node is one more ``ray start --block --address=<head GCS>``, in a session of its own, with its own
ports and the head's temp dir (one session folder, as in Ray's ``cluster_utils.Cluster``).

Node autoscaling (``NodeAutoscaling``) starts the head with Ray's fake multi-node provider, the one
``ray.cluster_utils.AutoscalingCluster`` uses in Ray's tests (``RAY_FAKE_CLUSTER=1``): the autoscaler
adds worker nodes (raylets started by the head's autoscaler process, inside the head's session) when
tasks or actors ask for resources no node has free, and removes them when idle. We start it ourselves:
``AutoscalingCluster.start`` runs ``ray stop --force``, which ends every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.retraining.training import TRAINING
from services.runtime.processes import (ManagedProcess, StartupFailed, free_ports, kill_session, rotate_log,
                                        session_members, wait_until)
from services.settings import Settings

# Offered by worker nodes only: Serve replicas ask for one unit each (stack.place_replicas). With TRAINING (Ray
# Train workers ask for one unit each), the custom resources that say which node does what.
SERVING = "serving"


def head_resources(settings: Settings) -> dict[str, float]:
    """Custom resources the head offers on one machine. ``training`` always: with no worker node it is the only
    node (else no run would ever schedule), with worker nodes the serving replicas are on them and the head's
    CPUs are left to retraining. One unit per core, and at least one per Ray Train worker of a run."""
    return {TRAINING: float(max(os.cpu_count() or 1, settings.retrain.workers))}


def worker_node_resources(settings: Settings) -> dict[str, float]:
    """What each worker node of ``make up`` offers besides its CPUs: room for Serve replicas (one unit each; the
    CPUs and max_replicas_per_node are what bound them)."""
    return {SERVING: 100.0}


@dataclass
class NodeAutoscaling:
    """Worker node types Ray's autoscaler may add (fake multi-node provider: raylets on this machine).

    ``node_types``: name -> {"resources": {...}, "min_workers": n, "max_workers": m}, as in an autoscaler
    cluster config; ``resources`` may hold ``CPU`` and ``object_store_memory`` (bytes) besides custom ones.
    """

    node_types: dict[str, dict]
    idle_timeout_minutes: float = 0.1
    upscaling_speed: float = 1.0
    update_interval_s: float = 1.0
    max_workers: int | None = None  # all node types together; default: the sum of their max_workers
    # Ray counts a node that holds the primary copy of an object as busy, so never idle, never removed. Serve's
    # controller keeps results of about 120 KB for as long as an application lives (the build task's, the last
    # `reconfigure` of each replica), and over Ray's 100 KB default those live in the object store of the node the
    # call ran on: measured here, the first worker node the autoscaler added stayed forever. Returned inline up to
    # this size, they live in the controller's memory, on the head. (RAY_max_direct_call_object_size)
    inline_results_up_to_bytes: int = 1024 * 1024

    def environment(self) -> dict[str, str]:
        """For every process of the cluster (the autoscaler starts the nodes with the head's environment)."""
        return {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": f"{self.update_interval_s:g}",
                "RAY_max_direct_call_object_size": str(self.inline_results_up_to_bytes)}

    def config(self, head_resources: dict[str, float], gcs_address: str) -> dict:
        """The cluster config Ray's fake multi-node provider reads (the fields of Ray's own
        ``fake_multi_node/example.yaml``, which the 2.60 wheel does not ship)."""
        types = {name: {"node_config": {}, "min_workers": 0, **t} for name, t in self.node_types.items()}
        types["ray.head.default"] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        return {
            "cluster_name": "fake_multinode",
            "max_workers": self.max_workers if self.max_workers is not None
            else sum(t.get("max_workers", 0) for t in self.node_types.values()),
            # The provider starts node i's raylet with node id fff...i and this GCS (its default is port 6379).
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": "ray.head.default",
            "upscaling_speed": self.upscaling_speed, "idle_timeout_minutes": self.idle_timeout_minutes,
            "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        }


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
                 num_cpus: int | None = None, resources: dict[str, float] | None = None,
                 autoscaling: NodeAutoscaling | None = None) -> None:
        super().__init__(log_file or settings.var_dir / "run" / "ray-head.log")
        self.settings = settings
        self.gcs_port = gcs_port or settings.ray.gcs_port
        self.dashboard_port = dashboard_port or settings.ray.dashboard_port
        self.temp_dir = temp_dir or settings.ray.temp_dir
        self.num_cpus = num_cpus if num_cpus is not None else os.cpu_count() or 2
        self.resources = resources or {}
        self.autoscaling = autoscaling
        self.autoscaling_file = self.log_file.with_name(self.log_file.stem + "-autoscaling.json")
        self.extra_env = {**(serve_fast_path_env(self.temp_dir, settings.serve.haproxy, settings.serve.retry_on)
                             if settings.serve.fast_path else {}), **(env or {})}

    def reserved_ports(self) -> set[int]:
        """The ports this stack's settings name (not all bound yet when Ray's own are chosen)."""
        st = self.settings
        return {self.gcs_port, self.dashboard_port, st.serve.http_port, st.triton.http_port, st.triton.grpc_port,
                st.triton.metrics_port, st.launcher.metrics_port}

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
        if self.autoscaling is not None:
            env.update(self.autoscaling.environment())
        if any(k.startswith("OTEL_EXPORTER_OTLP") for k in env) and env.get("OTEL_SDK_DISABLED") != "true":
            # Serve's own proxy/replica spans, exported with the same OTLP settings as ours.
            env.setdefault("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH",
                           "services.telemetry.tracing:serve_span_processors")
            env.setdefault("RAY_SERVE_TRACING_SAMPLING_RATIO", "1.0")
            env.setdefault("OTEL_SERVICE_NAME", "rts-serve")
        return env

    def argv(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        client, agent, agent_grpc, runtime_env, metrics = free_ports(5, avoid=self.reserved_ports())
        return [
            ray, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}",
            f"--object-store-memory={512 * 1024 * 1024}",
            *([f"--resources={json.dumps(self.resources, sort_keys=True)}"] if self.resources else []),
            *([f"--autoscaling-config={self.autoscaling_file}"] if self.autoscaling is not None else []),
        ]

    def prepare(self) -> None:
        if self.temp_dir.exists():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        rotate_log(self.log_file)
        if self.autoscaling is not None:
            head = {"CPU": float(self.num_cpus), **self.resources}
            self.autoscaling_file.parent.mkdir(parents=True, exist_ok=True)
            self.autoscaling_file.write_text(json.dumps(self.autoscaling.config(head, self.address), indent=2))

    def nodes(self) -> list[dict]:
        """Every node the GCS knows (alive and dead), as the dashboard's state API lists them."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=true", timeout=5) as resp:
            return json.load(resp)["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

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


class RayWorkerNode(ManagedProcess):
    """One more Ray node on this machine: ``ray start --address=<head GCS> --block`` with its own ports, the head's
    temp dir and environment (Serve's settings and ours reach the replicas it hosts), on 127.0.0.1."""

    startup_timeout_s = 90.0
    ready_interval_s = 0.5
    stop_timeout_s = 10.0

    def __init__(self, head: RayHead, index: int, *, num_cpus: int, resources: dict[str, float],
                 log_file: Path | None = None, object_store_mb: int = 128) -> None:
        super().__init__(log_file or head.log_file.with_name(f"ray-worker-{index}.log"))
        self.head, self.index = head, index
        self.num_cpus, self.resources, self.object_store_mb = num_cpus, dict(resources), object_store_mb
        self.what = f"Ray worker node {index}"
        self._node_id: str | None = None

    def argv(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        node_manager, object_manager, agent, agent_grpc, runtime_env, metrics = free_ports(
            6, avoid=self.head.reserved_ports())
        return [
            ray, "start", f"--address={self.head.address}", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--temp-dir={self.head.temp_dir}",
            f"--num-cpus={self.num_cpus}", f"--resources={json.dumps(self.resources, sort_keys=True)}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
        ]

    def environment(self) -> dict[str, str]:
        return self.head.environment()

    def prepare(self) -> None:
        rotate_log(self.log_file)  # never the temp dir: it is the head's

    def node_id(self) -> str | None:
        """The node id of this node's raylet (from its command line), or None before it runs."""
        if self._node_id is None and self.proc is not None:
            for pid in session_members(self.proc.pid):
                try:
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if any(a.endswith(b"/raylet") for a in args[:1]):
                    found = [a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id=")]
                    if found:
                        self._node_id = found[0]
        return self._node_id

    def ready(self) -> bool:
        node_id = self.node_id()
        return node_id is not None and any(n.get("node_id") == node_id for n in self.head.alive_nodes())

    def holds(self, pid: int) -> bool:
        """The process (a Serve replica, a Ray worker) runs on this node."""
        return self.proc is not None and pid in session_members(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL every process of this node at once (the raylet, its agents, the workers on it): a lost machine."""
        if self.proc is not None:
            kill_session(self.proc.pid)
            self.proc.poll()
