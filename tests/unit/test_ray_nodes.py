"""Many Ray nodes on one machine, the parts that need no Ray: the worker node launcher's command line and what it
finds of its raylet, the head's resources and autoscaling config, where Serve replicas and Ray Train workers are
placed, how a run's threads and priority are held down, and the settings behind them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import ValidationError

from services.retraining.jobs import THREAD_CAPS, thread_caps
from services.retraining.training import TRAINING, lower_priority, worker_resources
from services.runtime.processes import free_ports, kill_session, session_alive, start_process
from services.runtime.ray_cluster import (SERVING, NodeAutoscaling, RayHead, RayWorkerNode, head_resources,
                                          worker_node_resources)
from services.runtime.stack import place_replicas, render_serve_config
from services.settings import REPO_ROOT, Settings

CONFIGS = REPO_ROOT / "ray_apps" / "configs"


def settings(tmp_path: Path, **ray) -> Settings:
    gcs, dashboard = free_ports(2)
    return Settings(var_dir=tmp_path / "var", ray={"gcs_port": gcs, "dashboard_port": dashboard,
                                                   "temp_dir": tmp_path / "ray", **ray})


def flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)


def test_a_worker_node_joins_the_head_on_loopback_with_ports_and_resources_of_its_own(tmp_path):
    head = RayHead(settings(tmp_path), log_file=tmp_path / "run" / "ray-head.log")
    node = RayWorkerNode(head, 2, num_cpus=1, resources={SERVING: 100.0})
    argv = node.argv()
    given = flags(argv)
    assert argv[1:2] == ["start"] and "--block" in argv and "--head" not in argv
    assert given["address"] == head.address == f"127.0.0.1:{head.gcs_port}"
    assert given["node-ip-address"] == "127.0.0.1"
    assert given["temp-dir"] == str(head.temp_dir), "one session folder for the whole cluster, as Ray's tests do"
    assert given["num-cpus"] == "1" and json.loads(given["resources"]) == {SERVING: 100.0}
    ports = [int(v) for k, v in given.items() if k.endswith("-port")]
    assert len(ports) == 6 and len(set(ports)) == 6
    assert not set(ports) & {head.gcs_port, head.dashboard_port}
    # Flags `ray start` refuses on a node that is not the head.
    assert not {"port", "include-dashboard", "dashboard-port", "autoscaling-config"} & set(given)
    assert node.log_file == tmp_path / "run" / "ray-worker-2.log" and node.what == "Ray worker node 2"
    assert node.environment() == head.environment(), "its replicas see Serve's settings and ours as the head's do"


def test_a_worker_node_knows_its_raylet_and_is_ready_once_the_cluster_lists_it_alive(tmp_path):
    listed: list[dict] = []
    head = SimpleNamespace(address="127.0.0.1:1", temp_dir=tmp_path, log_file=tmp_path / "head.log",
                           environment=lambda: dict(os.environ), alive_nodes=lambda: listed)

    class FakeNode(RayWorkerNode):
        def argv(self) -> list[str]:  # a process that looks like a raylet in `ps`, in the node's session
            return ["bash", "-c", f'exec -a /x/raylet {sys.executable} -c "import time; time.sleep(60)" '
                                  "--raylet_socket_name=s --node_id=abc123"]

    node = FakeNode(head, 1, num_cpus=1, resources={}, log_file=tmp_path / "w.log")
    node.proc = start_process(node.argv(), env=node.environment(), log_file=node.log_file)
    try:
        deadline = time.monotonic() + 10
        while node.node_id() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.node_id() == "abc123"
        assert not node.ready()
        listed.append({"node_id": "abc123", "state": "ALIVE"})
        assert node.ready() and node.holds(node.proc.pid) and not node.holds(os.getpid())
        node.kill()
        deadline = time.monotonic() + 5
        while session_alive(node.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not session_alive(node.proc.pid), "kill -9 of the whole node"
    finally:
        node.stop()


def test_kill_session_ends_every_process_of_the_session_at_once():
    proc = start_process(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    time.sleep(0.3)
    kill_session(proc.pid)
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while session_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.returncode == -9 and not session_alive(proc.pid)


def test_the_head_offers_training_and_the_worker_nodes_serving(tmp_path):
    s = settings(tmp_path, worker_nodes=2)
    assert head_resources(s) == {TRAINING: float(max(os.cpu_count() or 1, 1))}
    many = Settings(var_dir=tmp_path, retrain={"workers": 64})
    assert head_resources(many)[TRAINING] == 64.0, "every Ray Train worker of a run must find its unit"
    assert SERVING not in head_resources(s) and list(worker_node_resources(s)) == [SERVING]
    head = RayHead(s, resources=head_resources(s))
    assert json.loads(flags(head.argv())["resources"]) == head_resources(s)
    assert "resources" not in flags(RayHead(s).argv())


def test_node_autoscaling_starts_the_head_with_the_fake_provider_and_its_config(tmp_path):
    scaling = NodeAutoscaling({"serving": {"resources": {"CPU": 1, SERVING: 1}, "max_workers": 3}},
                              idle_timeout_minutes=0.2)
    head = RayHead(settings(tmp_path), log_file=tmp_path / "run" / "ray-head.log", num_cpus=2,
                   resources={TRAINING: 2.0}, autoscaling=scaling)
    env = head.environment()
    assert env["RAY_FAKE_CLUSTER"] == "1" and env["AUTOSCALER_UPDATE_INTERVAL_S"] == "1"
    assert int(env["RAY_max_direct_call_object_size"]) >= 1024 * 1024
    head.prepare()
    assert flags(head.argv())["autoscaling-config"] == str(head.autoscaling_file)
    config = json.loads(head.autoscaling_file.read_text())
    assert config["provider"]["type"] == "fake_multinode"
    assert config["provider"]["gcs_address"] == head.address, "the provider's default is port 6379"
    assert config["available_node_types"]["ray.head.default"] == {
        "resources": {"CPU": 2.0, TRAINING: 2.0}, "node_config": {}, "max_workers": 0}
    assert config["available_node_types"]["serving"] == {
        "node_config": {}, "min_workers": 0, "resources": {"CPU": 1, SERVING: 1}, "max_workers": 3}
    assert config["max_workers"] == 3 and config["idle_timeout_minutes"] == 0.2
    plain = RayHead(settings(tmp_path / "plain"))
    assert "RAY_FAKE_CLUSTER" not in plain.environment() and "autoscaling-config" not in flags(plain.argv())


def deployments(config: dict) -> dict[str, dict]:
    return {d["name"]: d for app in config["applications"] for d in app["deployments"]}


@pytest.mark.parametrize("nodes, per_node", [(1, 2), (2, 1), (3, 1)])
def test_replicas_go_to_worker_nodes_spread_so_no_node_holds_them_all(nodes, per_node):
    config = yaml.safe_load((CONFIGS / "inference-fused.yaml").read_text())
    ingress = deployments(place_replicas(config, nodes))["Ingress"]  # up to 2 replicas
    assert ingress["ray_actor_options"]["resources"] == {SERVING: 1}
    assert ingress["ray_actor_options"]["num_cpus"] == 0.1
    assert ingress["max_replicas_per_node"] == per_node
    composed = deployments(place_replicas(yaml.safe_load((CONFIGS / "inference.yaml").read_text()), 2))
    assert all(d["ray_actor_options"]["resources"] == {SERVING: 1} for d in composed.values())
    assert composed["Preprocess"]["max_replicas_per_node"] == 1 and composed["Ingress"]["max_replicas_per_node"] == 1


def test_without_worker_nodes_the_config_is_deployed_as_written(tmp_path):
    source = CONFIGS / "inference-fused.yaml"
    plain = yaml.safe_load(render_serve_config(source, tmp_path / "a.yaml", http_port=9000).read_text())
    assert deployments(plain) == deployments(yaml.safe_load(source.read_text()))
    placed = yaml.safe_load(render_serve_config(source, tmp_path / "b.yaml", http_port=9000, worker_nodes=2).read_text())
    assert deployments(placed)["Ingress"]["max_replicas_per_node"] == 1
    # A config that asks for a resource of its own keeps it (the node autoscaling demo asks for `serving` itself).
    own = deployments(place_replicas(yaml.safe_load((CONFIGS / "inference-nodes.yaml").read_text()), 2))["Ingress"]
    assert own["ray_actor_options"]["resources"] == {SERVING: 1}


def test_training_workers_ask_for_the_training_resource_and_their_cpus(tmp_path):
    assert worker_resources(Settings(var_dir=tmp_path)) == {TRAINING: 1.0, "CPU": 0.5}
    assert worker_resources(Settings(var_dir=tmp_path, retrain={"worker_cpus": 0})) == {TRAINING: 1.0}, \
        "Kubernetes' training pods offer no CPU to Ray"
    k8s = (REPO_ROOT / "infra" / "k8s" / "base" / "rayservice.yaml").read_text()
    assert f'\\"{TRAINING}\\"' in k8s, "the training worker group offers the resource by the same name"


def test_a_runs_threads_are_capped_unless_it_may_take_what_it_finds(tmp_path):
    assert thread_caps(Settings(var_dir=tmp_path)) == {name: "1" for name in THREAD_CAPS}
    assert thread_caps(Settings(var_dir=tmp_path, retrain={"worker_cpus": 2})) == {name: "2" for name in THREAD_CAPS}
    assert thread_caps(Settings(var_dir=tmp_path, retrain={"worker_nice": 0})) == {}


TWO_THREADS = """
import os, threading, time
from services.retraining.training import lower_priority
ready = threading.Event()
threading.Thread(target=lambda: (ready.set(), time.sleep(5)), daemon=True).start()
ready.wait()
tids = [int(t) for t in os.listdir("/proc/self/task")]
"""


def in_a_process_of_its_own(code: str) -> subprocess.CompletedProcess:
    """`code` after TWO_THREADS (`tids`: a process with a second thread), in a fresh interpreter: priorities only go
    down, so each check lowers its own process's, never the test runner's."""
    return subprocess.run([sys.executable, "-c", TWO_THREADS + code], capture_output=True, text=True, timeout=30,
                          cwd=REPO_ROOT, check=True)


def test_lower_priority_reaches_every_thread_and_never_raises_one():
    code = """
os.setpriority(os.PRIO_PROCESS, tids[-1], 17)
changed = lower_priority(12)
print(changed, sorted(os.getpriority(os.PRIO_PROCESS, t) for t in tids))
"""
    done = in_a_process_of_its_own(code)
    changed, levels = done.stdout.split(" ", 1)
    levels = json.loads(levels)
    assert min(levels) >= 12 and 17 in levels, levels
    assert int(changed) == len(levels) - 1
    assert lower_priority(0) == 0


def test_lowest_priority_puts_every_thread_in_the_idle_class():
    code = """
print(lower_priority(18), sorted({os.sched_getscheduler(t) == os.SCHED_IDLE for t in tids}),
      lower_priority(19), sorted({os.sched_getscheduler(t) == os.SCHED_IDLE for t in tids}))
"""
    done = in_a_process_of_its_own(code)
    # 18: niced, still the normal class; 19: every thread idle-class (the kernel runs it when nothing else wants the core)
    first, classes_at_18, second, classes_at_19 = done.stdout.split()
    assert int(first) >= 2 and int(second) == int(first), done.stdout  # every thread (numpy's pool too), twice
    assert (classes_at_18, classes_at_19) == ("[False]", "[True]"), done.stdout


def test_worker_node_settings(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith("RTS_")]:
        monkeypatch.delenv(key)
    assert Settings().ray.worker_nodes == 0, "by default everything runs on the head"
    monkeypatch.setenv("RTS_RAY_WORKER_NODES", "3")
    monkeypatch.setenv("RTS_RAY_WORKER_NODE_CPUS", "2")
    monkeypatch.setenv("RTS_RETRAIN_WORKER_NICE", "0")
    s = Settings()
    assert (s.ray.worker_nodes, s.ray.worker_node_cpus, s.retrain.worker_nice) == (3, 2, 0)
    assert s.to_env()["RTS_RAY_WORKER_NODES"] == "3", "the stack's processes agree on it"
    for bad in ({"worker_nodes": -1}, {"worker_node_cpus": 0}):
        with pytest.raises(ValidationError):
            Settings(ray=bad)
    with pytest.raises(ValidationError):
        Settings(retrain={"worker_nice": 20})
