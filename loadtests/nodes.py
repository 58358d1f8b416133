"""Node autoscaling under a load spike: Ray's autoscaler adds worker nodes when Serve asks for more replicas than
the nodes it has can hold, and removes them once they are idle.

Usage::

    python -m loadtests.nodes [--out DIR]      # `make test-nodes` runs it through tests/integration/test_node_autoscaling.py

Starts its own stack (``Stack``, as ``make up`` does) on free ports: Triton, a Ray head whose autoscaler uses Ray's
fake multi-node provider (``NodeAutoscaling``: worker nodes are raylets on this machine, the way Ray's own tests
simulate a cluster), and the fused Serve application of ``ray_apps/configs/inference-nodes.yaml``, whose Ingress
replicas each need one unit of ``serving``: only the autoscaler's ``serving`` nodes offer it, one unit each. At rest
one replica holds one node; the Locust profile ``spike-short`` (one burst of 24 users between idle minutes) makes
Serve ask for up to three replicas, so the autoscaler adds nodes, and after the burst Serve drops replicas and the
autoscaler removes the idle nodes (``idle_timeout_minutes`` 0.1). Run it inside a loopback-only network namespace
(the test does, as root): the provider's nodes take the machine's primary address otherwise.

Every second it records the worker nodes alive (the dashboard's state API), the running Ingress replicas and the
nodes they run on; with every request's time and outcome from Locust it writes ``nodes.json`` (the series, and a
summary: when nodes went up after the burst began, the peak, when they were back down after it ended, requests
and failures) and ``nodes.png`` (answered and failed requests/s, running replicas, alive worker nodes) to
``loadtests/results/nodes-<time>/`` (or ``--out``), with Locust's own report in ``locust/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from loadtests.profiles import PROFILES, timeline
from loadtests.run import run_profile
from services.runtime.processes import free_ports
from services.runtime.ray_cluster import SERVING, NodeAutoscaling
from services.runtime.stack import Stack
from services.settings import REPO_ROOT, Settings

CONFIG = REPO_ROOT / "ray_apps" / "configs" / "inference-nodes.yaml"
PROFILE = "spike-short"
APP, DEPLOYMENT = "inference", "Ingress"
MAX_NODES = 3
AUTOSCALING = NodeAutoscaling(
    {"serving": {"resources": {"CPU": 1, SERVING: 1, "object_store_memory": 128 * 1024 * 1024},
                 "min_workers": 0, "max_workers": MAX_NODES}},
    idle_timeout_minutes=0.1)
SETTLE_CAP_S = 45.0  # after the load, how long the nodes get to come back down to the resting count


def node_settings(var_dir: Path) -> Settings:
    http, grpc, metrics, gcs, dashboard, serve, launcher = free_ports(7)
    return Settings(var_dir=var_dir, models=["services.models.digits", "services.models.diabetes"],
                    triton={"http_port": http, "grpc_port": grpc, "metrics_port": metrics},
                    ray={"gcs_port": gcs, "dashboard_port": dashboard, "temp_dir": Path(f"/tmp/rts-nodes-{os.getpid()}")},
                    serve={"http_port": serve, "config": CONFIG}, launcher={"metrics_port": launcher},
                    listener={"enabled": False}, drift={"enabled": False})


class Sampler(threading.Thread):
    """Once a second: worker nodes alive, running replicas of the deployment and the nodes they run on, and what
    keeps each worker node busy as the GCS tells the autoscaler (its idle time and "node activity")."""

    def __init__(self, stack: Stack, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval_s = stack, interval_s
        self.samples: list[dict] = []
        self.halt = threading.Event()
        self.gcs = None

    def activity(self) -> dict[str, dict]:
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        self.gcs = self.gcs or GcsClient(address=self.stack.ray.address)
        state = get_cluster_resource_state(self.gcs)
        return {n.node_id.hex(): {"idle_s": round(n.idle_duration_ms / 1000, 1), "busy": list(n.node_activity)}
                for n in state.node_states}

    def sample(self) -> dict | None:
        try:
            workers = [n for n in self.stack.ray.alive_nodes() if not n.get("is_head_node")]
            deployments = self.stack.ray.serve_status().get("applications", {}).get(APP, {}).get("deployments", {})
            activity = self.activity()
        except Exception:  # noqa: BLE001 - a sample missed (a busy dashboard) is a gap in the plot, not a failure
            return None
        replicas = [r for r in deployments.get(DEPLOYMENT, {}).get("replicas", []) if r.get("state") == "RUNNING"]
        return {"t": time.time(), "nodes": len(workers), "replicas": len(replicas),
                "replica_nodes": sorted({r.get("node_id") for r in replicas}),
                "worker_activity": {n["node_id"][-5:]: activity.get(n["node_id"]) for n in workers}}

    def run(self) -> None:
        while not self.halt.is_set():
            if (s := self.sample()) is not None:
                self.samples.append(s)
            self.halt.wait(self.interval_s)

    def wait_for(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.samples and predicate(self.samples[-1]):
                return True
            time.sleep(0.5)
        return False


def summarize(samples: list[dict], timings: np.ndarray, started: float, failures: list[str]) -> dict:
    """When the nodes went up after the burst began, their peak, when they were back down after it ended."""
    (_, _, _), (burst_start, burst_end, burst), _ = timeline(PROFILES[PROFILE])
    t = np.array([s["t"] - started for s in samples])
    nodes = np.array([s["nodes"] for s in samples])
    replicas = np.array([s["replicas"] for s in samples])
    before = nodes[t < burst_start]
    resting = int(before[-1]) if len(before) else None
    during = (t >= burst_start) & (t <= burst_end)
    peak = int(nodes[during].max()) if during.any() else None
    up = t[(t >= burst_start) & (nodes > (resting or 0))]
    after = t > burst_end
    # Back down: the first sample after the burst from which the count stays at (or under) the resting one.
    down = None
    for i in np.flatnonzero(after):
        if resting is not None and (nodes[i:] <= resting).all():
            down = float(t[i] - burst_end)
            break
    ok = timings[:, 2] == 1 if len(timings) else np.zeros(0, dtype=bool)
    rel = timings[:, 0] - started if len(timings) else np.zeros(0)
    in_burst = (rel >= burst_start) & (rel < burst_end)
    spread = [len(s["replica_nodes"]) for s in samples if s["replicas"] > 1]
    return {
        "profile": PROFILE, "burst": {"start_s": burst_start, "end_s": burst_end, "users": burst.users},
        "resting_nodes": resting, "peak_nodes": peak, "max_nodes": MAX_NODES,
        "nodes_up_after_s": round(float(up[0] - burst_start), 1) if len(up) else None,
        "peak_reached_after_s": (round(float(t[during][np.argmax(nodes[during])] - burst_start), 1)
                                 if peak is not None else None),
        "nodes_down_after_burst_s": None if down is None else round(down, 1),
        "nodes_at_end": int(nodes[-1]) if len(nodes) else None,
        "peak_replicas": int(replicas.max()) if len(replicas) else None,
        "replicas_always_on_distinct_nodes": bool(spread) and all(
            len(s["replica_nodes"]) == s["replicas"] for s in samples if s["replicas"] > 1),
        "requests": int(len(timings)), "failed": int((~ok).sum()),
        "burst_requests_per_s": round(float(in_burst.sum()) / (burst_end - burst_start), 1),
        "failures": failures,
    }


def plot(samples: list[dict], timings: np.ndarray, started: float, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    burst = summary["burst"]
    if len(timings):
        rel = timings[:, 0] - started
        bins = np.arange(np.floor(min(rel.min(), 0)), np.ceil(rel.max()) + 1, 1.0)
        ok, _ = np.histogram(rel[timings[:, 2] == 1], bins)
        bad, _ = np.histogram(rel[timings[:, 2] == 0], bins)
        axes[0].plot(bins[:-1] + 0.5, ok, color="tab:blue", label="answered req/s")
        axes[0].bar(bins[:-1], bad, width=1.0, align="edge", color="tab:red", label="failed req/s")
    users = axes[0].twinx()
    tl = timeline(PROFILES[PROFILE])
    users.plot([p for s, e, _ in tl for p in (s, e)], [st.users for _, _, st in tl for _ in (0, 1)], color="grey",
               linestyle=":", label="Locust users")
    users.set_ylabel("users")
    t = [s["t"] - started for s in samples]
    axes[1].step(t, [s["replicas"] for s in samples], where="post", color="tab:green", label="running replicas")
    axes[1].step(t, [len(s["replica_nodes"]) for s in samples], where="post", color="tab:olive", linestyle="--",
                 label="nodes holding them")
    axes[2].step(t, [s["nodes"] for s in samples], where="post", color="tab:purple", label="alive worker nodes")
    axes[0].set_ylabel("requests/s")
    axes[1].set_ylabel(f"{DEPLOYMENT} replicas")
    axes[2].set_ylabel("worker nodes")
    axes[2].set_xlabel("seconds since the load started")
    for ax in axes:
        ax.axvspan(burst["start_s"], burst["end_s"], color="tab:orange", alpha=0.12)
        ax.legend(fontsize=8, loc="upper right")
    for ax in axes[1:]:
        ax.set_ylim(-0.2, MAX_NODES + 0.5)
    fig.suptitle(f"node autoscaling under a burst of {burst['users']} users: nodes up after "
                 f"{summary['nodes_up_after_s']} s, back down {summary['nodes_down_after_burst_s']} s after it; "
                 f"{summary['failed']} of {summary['requests']} requests failed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(out: Path, say=print) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with Stack(node_settings(out / "var"), CONFIG, autoscaling=AUTOSCALING,
               say=lambda m: say(f"[stack] {m}")) as stack:
        sampler = Sampler(stack)
        sampler.start()
        try:
            say("[nodes] waiting for the resting state: one replica on one worker node ...")
            if not sampler.wait_for(lambda s: s["nodes"] == 1 and s["replicas"] == 1, 90):
                raise TimeoutError(f"not at rest (one node, one replica) within 90 s: {sampler.samples[-3:]}")
            result = run_profile(PROFILE, stack.gateway_url, stack.ray.dashboard_url, out / "locust", app=APP,
                                 env={"LOADTEST_FEEDBACK_SHARE": "0"})
            say("[nodes] load over; waiting for the idle nodes to go ...")
            sampler.wait_for(lambda s: s["nodes"] <= 1, SETTLE_CAP_S)
            time.sleep(3)
        finally:
            sampler.halt.set()
            sampler.join(timeout=10)
    shutil.rmtree(stack.settings.ray.temp_dir, ignore_errors=True)  # Ray's session files of this run (its logs too)
    failures_csv = out / "locust" / "locust_failures.csv"
    failures = failures_csv.read_text().splitlines()[1:11] if failures_csv.exists() else []
    summary = summarize(sampler.samples, result["timings"], result["started"], failures)
    (out / "nodes.json").write_text(json.dumps(
        {"summary": summary, "samples": [{**s, "t": round(s["t"] - result["started"], 2)} for s in sampler.samples]},
        indent=2))
    plot(sampler.samples, result["timings"], result["started"], summary, out / "nodes.png")
    say(f"[nodes] {json.dumps({k: v for k, v in summary.items() if k != 'failures'})}")
    say(f"[nodes] report: {out}")
    return summary


def _stop_on_sigterm() -> None:
    """SIGTERM (a test's timeout) unwinds like Ctrl-C, so the stack stops what it started; later ones are ignored."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    parser = argparse.ArgumentParser(description="node autoscaling under a load spike, with a plot")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    _stop_on_sigterm()
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("nodes-%Y%m%d-%H%M%S")
    try:
        run(out, say=lambda m: print(m, flush=True))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
