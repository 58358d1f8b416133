"""The whole local system: Triton, a Ray head with the dashboard (and ``RTS_RAY_WORKER_NODES`` worker nodes
beside it), the Serve application, the listener.

``make up`` runs ``rts up``, which is ``Stack(settings).run_forever()``; the integration tests use
the same class on other ports, so what is tested is what users run.
"""

from __future__ import annotations

import logging
import math
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import yaml
from pydantic import SecretStr

from services.modelkit.discovery import load_models
from services.registry.publish import Registry
from services.registry.repository import ModelRepository, version_ensemble
from services.retraining.dataset import DataPaths
from services.retraining.jobs import job_env
from services.retraining.run import build_first_version
from services.runtime.leftovers import STATE_FILE, StackState, find_leftovers
from services.runtime.processes import ManagedProcess, wait_until
from services.runtime.ray_cluster import (SERVING, NodeAutoscaling, RayHead, RayWorkerNode, head_resources,
                                          worker_node_resources)
from services.runtime.supervisor import Supervisor
from services.runtime.triton import TritonServer
from services.settings import Settings
from services.storage import data_store, repository_store
from services.telemetry.supervision import status_path
from services.telemetry.tracing import triton_trace_args

log = logging.getLogger("runtime.stack")


class StackInTheWay(RuntimeError):
    """An earlier stack still holds what this one needs; the message names it and says how to end it."""


def ensure_models(settings: Settings, say: Callable[[str], None] = print) -> str:
    """Build version 1 of every configured model the repository has no version of.

    Returns the repository as Triton's --model-repository wants it (a path, or s3://... / gs://...).
    """
    store = repository_store(settings)
    repository = ModelRepository(store)
    registry = Registry.open(settings)
    for name, package in load_models(settings).items():
        if repository.versions(package.family.ensemble):
            registry.adopt(name, package.family)  # a repository from before stages: production is what served
            continue
        say(f"no {name} model in {settings.model_repository_uri}: training version 1 (a few seconds) ...")
        record = build_first_version(package, settings)
        if record["outcome"] != "published":
            raise RuntimeError(f"the first {name} version was not published: {record.get('reason')}")
        metrics = record["stages"]["evaluate_and_gate"]["metrics"]["candidate"]
        say(f"trained {name} v1, holdout {package.task.primary_metric} {metrics[package.task.primary_metric]:.3f}")
    return store.triton_repository_uri()


def place_replicas(config: dict, worker_nodes: int) -> dict:
    """With worker nodes, Serve replicas run on them only, spread out: each replica asks for one unit of ``serving``
    (worker nodes offer it, the head does not: the head keeps Serve's controller, HAProxy and retraining), and a
    deployment of up to M replicas gets Serve's ``max_replicas_per_node`` = ceil(M / N), so with two or more nodes
    no node holds all of them. A node lost with replicas at M comes back only where a node has room left: keep a
    spare node (N > M) to have them back at once. Deployments the config does not list keep their code's options."""
    if worker_nodes <= 0:
        return config
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            options = deployment.setdefault("ray_actor_options", {})
            options["resources"] = {SERVING: 1, **(options.get("resources") or {})}
            most = (deployment.get("autoscaling_config") or {}).get("max_replicas", deployment.get("num_replicas", 1))
            if isinstance(most, int):
                deployment["max_replicas_per_node"] = max(1, math.ceil(most / worker_nodes))
    return config


def render_serve_config(source: Path, target: Path, *, http_port: int, env_vars: dict[str, str] | None = None,
                        worker_nodes: int = 0) -> Path:
    """Copy a Serve config with this stack's HTTP port filled in.

    ``env_vars`` go into each application's ``runtime_env`` (e.g. OTEL_* to trace one deployment);
    ``worker_nodes`` (the stack's ``RTS_RAY_WORKER_NODES``) places the replicas on them (``place_replicas``).
    """
    config = yaml.safe_load(source.read_text())
    config.setdefault("http_options", {})["port"] = http_port
    config["http_options"]["host"] = "127.0.0.1"
    for app in config.get("applications", []):
        if env_vars:
            app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
    place_replicas(config, worker_nodes)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


class Listener(ManagedProcess):
    """``rts listen [args]`` as a child process (the stack's, with the local folder source, or a test's)."""

    what = "retraining listener"

    def __init__(self, env: dict[str, str], log_file: Path, args: tuple[str, ...] = ()) -> None:
        super().__init__(log_file)
        self.env, self.args = env, args

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "services.cli", "listen", *self.args]

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.env}


class Stack:
    """Triton, a Ray head (and its worker nodes), the Serve application and the listener: started in that order,
    stopped in the reverse one. Triton and the listener are supervised (restarted with backoff when they crash).

    ``autoscaling`` starts the head with Ray's autoscaler on the fake multi-node provider (worker nodes added and
    removed on demand, on this machine; tests/integration/test_node_autoscaling.py)."""

    def __init__(self, settings: Settings, serve_config: Path | None = None, *, work_dir: Path | None = None,
                 ray_temp_dir: Path | None = None, say: Callable[[str], None] = print,
                 autoscaling: NodeAutoscaling | None = None) -> None:
        if settings.admin.token is None:
            # A fresh token per `make up`, printed once; set RTS_ADMIN_TOKEN to choose your own.
            admin = settings.admin.model_copy(update={"token": SecretStr(secrets.token_urlsafe(24))})
            admin.model_fields_set.add("token")
            settings = settings.model_copy(update={"admin": admin})
            settings.model_fields_set.add("admin")
        self.settings = settings
        self.serve_config = serve_config or settings.serve.config
        self.work_dir = work_dir or settings.var_dir / "run"
        self._say = say
        self.ray_temp_dir = ray_temp_dir
        self.triton_repository: str | None = None
        self.ray: RayHead | None = None
        self.worker_nodes: list[RayWorkerNode] = []
        self.autoscaling = autoscaling
        self.state = StackState(self.work_dir / STATE_FILE)
        self._stopped: list[ManagedProcess] = []  # stop() twice says and does nothing the second time
        self.supervisor = Supervisor(settings.launcher, status_file=status_path(settings), say=self.say,
                                     on_start=lambda name, proc: self.state.record(name, proc.pid))

    def say(self, message: str) -> None:
        try:
            self._say(message)
        except OSError:  # the terminal is gone (a closed window, a broken pipe): stopping must go on
            log.info(message)

    @property
    def triton(self) -> TritonServer | None:
        return self.supervisor.current("triton")  # type: ignore[return-value]

    @property
    def listener(self) -> "Listener | None":
        return self.supervisor.current("listener")  # type: ignore[return-value]

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serve.http_port}"

    @property
    def triton_url(self) -> str:
        return self.settings.triton.grpc_address

    def start(self) -> "Stack":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def new_triton(self) -> TritonServer:
        """The bundled tritonserver of this stack, loading every configured model's ensemble and the version
        ensembles of the versions in play (production, the ones on their way, the production before)."""
        registry = Registry.open(self.settings)
        ensembles = []
        for name, package in load_models(self.settings).items():
            ensembles.append(package.family.ensemble)
            ensembles += [version_ensemble(package.family.ensemble, v) for v in registry.stages(name).in_play()]
        ensembles = tuple(ensembles)
        return TritonServer(self.triton_repository, self.settings, load_models=ensembles,
                            work_dir=self.work_dir / "triton",
                            extra_args=tuple(triton_trace_args(rate=self.settings.triton.trace_rate)))

    def new_listener(self) -> "Listener":
        return Listener(self.job_env(), self.work_dir / "listener.log")

    def check_the_way_is_clear(self) -> None:
        """Refuse to start over an earlier stack (ours or not), naming what is in the way."""
        leftovers = find_leftovers(self.settings, self.state.path)
        for note in leftovers.notes:
            self.say(note)
        if leftovers.problems:
            raise StackInTheWay(leftovers.message())

    def _start(self) -> None:
        t0 = time.monotonic()
        self.check_the_way_is_clear()
        self.state.begin(self.settings)
        self.triton_repository = ensure_models(self.settings, self.say)
        if self.settings.triton.url:
            self.say(f"using external Triton at {self.settings.triton.url}")
        else:
            self.say(f"[1/3] starting tritonserver on :{self.settings.triton.http_port} (HTTP) "
                     f"and :{self.settings.triton.grpc_port} (gRPC) ...")
            self._supervise("triton", self.new_triton)
            self.say(f"      Triton ready ({time.monotonic() - t0:.1f}s); log: {self.triton.log_file}")
        nodes = self.settings.ray.worker_nodes
        self.say(f"[2/3] starting a Ray head (dashboard :{self.settings.ray.dashboard_port})"
                 + (f" and {nodes} worker node{'s' * (nodes > 1)}" if nodes else "") + " ...")
        self.ray = RayHead(self.settings, log_file=self.work_dir / "ray-head.log", env=self.settings.to_env(),
                           temp_dir=self.ray_temp_dir, resources=head_resources(self.settings),
                           autoscaling=self.autoscaling)
        self.ray.start()
        self.state.record("ray head", self.ray.pid)
        for index in range(1, nodes + 1):
            node = RayWorkerNode(self.ray, index, num_cpus=self.settings.ray.worker_node_cpus,
                                 resources=worker_node_resources(self.settings),
                                 log_file=self.work_dir / f"ray-worker-{index}.log")
            self.worker_nodes.append(node)  # known before it starts: a stop meanwhile ends it
            node.start()
            self.state.record(f"ray worker node {index}", node.pid)
        self.say(f"      Ray ready ({time.monotonic() - t0:.1f}s); temp dir {self.ray.temp_dir}"
                 + (f"; {nodes} worker node(s) take the Serve replicas, the head retraining" if nodes else ""))
        self.say(f"[3/3] deploying {self.serve_config.name} on :{self.settings.serve.http_port} ...")
        rendered = render_serve_config(self.serve_config, self.work_dir / "serve_config.yaml",
                                       http_port=self.settings.serve.http_port, worker_nodes=nodes)
        self.ray.serve_deploy(rendered)
        wait_until(self.healthy, timeout_s=120, what="gateway /healthz", interval_s=0.5)
        self.say(f"      serving {', '.join(load_models(self.settings))} ({time.monotonic() - t0:.1f}s)")
        if self.settings.data_uri.startswith("file://"):
            # The folders users copy new data into exist from the start.
            root = Path(data_store(self.settings).triton_repository_uri())
            for name in load_models(self.settings):
                (root / DataPaths(name).incoming).mkdir(parents=True, exist_ok=True)
        if self.settings.listener.enabled:
            self._supervise("listener", self.new_listener)
            self.say(f"      retraining listener watching {self.settings.data_uri}/datasets/<model>/incoming/ "
                     f"(log: {self.listener.log_file})")
        self.supervisor.start()

    def _supervise(self, name: str, factory: Callable[[], ManagedProcess]) -> None:
        process = factory()
        self.supervisor.watch(name, factory, process)  # known before it starts: a stop meanwhile ends it
        process.start()
        self.state.record(name, process.pid)

    def job_env(self) -> dict[str, str]:
        """Environment for processes that talk to this stack (listener, jobs, CLI)."""
        return {**job_env(self.settings), "RTS_RAY_DASHBOARD_URL": self.ray.dashboard_url}

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.gateway_url}/healthz", timeout=3) as resp:
            return resp.status == 200

    def stop(self) -> None:
        """Stop everything this stack started, last started first; safe to call twice and from a signal's
        unwinding. One child that will not stop never keeps the others running."""
        children = {name: self.supervisor.current(name) for name in ("listener", "triton")}
        self.supervisor.stop()
        steps = [("listener", children["listener"]),
                 *((node.what, node) for node in reversed(self.worker_nodes)),
                 ("Ray", self.ray), ("Triton", children["triton"])]
        failed = []
        for what, process in steps:
            if process is None or process in self._stopped:
                continue
            self.say(f"stopping {what} ...")
            try:
                process.stop()
                self._stopped.append(process)
            except Exception:
                log.exception("could not stop %s", what)
                failed.append(what)
        if not failed:
            self.state.end()

    def run_forever(self) -> None:
        """Start, print where everything is, and stop everything on Ctrl-C, SIGTERM or SIGHUP.

        The first signal starts the shutdown; any later one (a process manager's second SIGTERM, `make`
        passing the group's signal on, an impatient Ctrl-C) is acknowledged and ignored, so the shutdown
        always finishes: every child gets SIGTERM, then SIGKILL after its own timeout.
        """
        stopping = False

        def _on_signal(signum, frame):
            nonlocal stopping
            if stopping:
                self.say(f"{signal.Signals(signum).name}: already stopping; every process started here ends "
                         "within a minute")
                return
            stopping = True
            raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _on_signal)
        try:
            self.start()
            self.say(
                f"\ngateway    {self.gateway_url}  (try {self.gateway_url}/docs)\n"
                f"dashboard  http://127.0.0.1:{self.settings.ray.dashboard_port}"
                + (f"  (Cluster: the head and {len(self.worker_nodes)} worker node(s))" if self.worker_nodes else "")
                + "\n"
                f"triton     {self.triton_url}\n"
                f"admin      Authorization: Bearer {self.settings.admin.token.get_secret_value()}\n"
                "Ctrl-C stops everything this command started."
            )
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            stopping = True
            self.say("\nshutting down ...")
        finally:
            stopping = True
            self.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
