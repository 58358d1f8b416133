"""Faults under load: kill what users' requests run on, and count what they lose.

Usage::

    python -m loadtests.faults                       # the whole matrix (make test-faults), ~5 minutes
    python -m loadtests.faults --rows ingress-1-of-2,triton

Starts its own stack (``Stack``, as ``make up`` does) on free ports, then for each row runs a bounded
Locust load (``USERS`` users of ``loadtests/locustfile.py``), injects the fault after ``BEFORE_S``,
waits until the row says it recovered (at most ``RECOVER_CAP_S``), keeps the load on for
``AFTER_S`` more, and stops. Run it inside a loopback-only network namespace (``make test-faults``
does, as root) so every packet stays on 127.0.0.1. With the ``worker-node`` row selected, the stack starts
with ``WORKER_NODES`` Ray worker nodes, and every row's Serve replicas run on them.

Each row reports:

- requests, and failed requests (Locust's failures: a 5xx, a reset, a timeout);
- in flight at the fault: requests started before it and answered after it (those are the ones a
  dying process can take down with it), and failed requests beyond those;
- time to recover: from the fault until the row's own check passes (replicas back at their count,
  Triton ready, ...), and until the last failed request;
- what was lost (the row's own account: runs, events, versions).

Writes ``faults.md`` (the table), ``faults.json`` and ``faults.png`` (requests and errors per half
second around each fault) to ``loadtests/results/faults-<time>/``, with each row's Locust report in
a folder of its own. ``tests/integration/test_zw_faults.py`` runs the fast subset in ``make test``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from loadtests.run import run_profile
from services.modelkit.discovery import load_models
from services.registry.records import Records
from services.registry.repository import ModelRepository
from services.runtime.processes import free_ports
from services.runtime.stack import Stack, place_replicas, render_serve_config
from services.settings import REPO_ROOT, Settings
from services.storage import data_store, repository_store
from services.telemetry.supervision import read_status
from services.triton.client import TritonClient
from tests.servers.s3 import SeaweedFS

USERS = 8  # the "fault" profile's users (loadtests/profiles.py)
BEFORE_S = 8.0
AFTER_S = 6.0
RECOVER_CAP_S = 180.0  # the listener row waits for a whole retraining run
CONFIGS = REPO_ROOT / "ray_apps" / "configs"
APP = "inference"


@dataclass
class Fault:
    """One row: how to set the stack up for it, the fault itself, and when it counts as recovered."""

    name: str
    what: str
    prepare: Callable[["Stack"], None]
    inject: Callable[["Stack"], dict]  # returns what it did (pids, ...; "struck_at": when), kept in the report
    recovered: Callable[["Stack", dict], bool]
    lost: Callable[["Stack", dict], str] = lambda stack, done: "nothing"


@dataclass
class RowResult:
    name: str
    what: str
    requests: int
    failed: int
    failed_before_fault: int
    in_flight: int
    failed_beyond_in_flight: int
    recovered_s: float | None  # the row's own check passed this long after the fault; None: not within the cap
    last_failure_s: float | None  # the last failed request started this long after the fault
    lost: str
    injected: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    out: str = ""


# ---- the stack's Serve application, as the rows need it --------------------------------------------

def serve_status(stack: Stack) -> dict:
    with urllib.request.urlopen(f"{stack.ray.dashboard_url}/api/serve/applications/", timeout=5) as resp:
        return json.load(resp)


def running_replicas(stack: Stack, deployment: str) -> list[dict]:
    deployments = serve_status(stack).get("applications", {}).get(APP, {}).get("deployments", {})
    return [r for r in deployments.get(deployment, {}).get("replicas", []) if r.get("state") == "RUNNING"]


def deploy(stack: Stack, config: Path, replicas: dict[str, int]) -> None:
    """Deploy `config` with fixed replica counts for the named deployments (autoscaling off for them)."""
    rendered = render_serve_config(config, stack.work_dir / "faults" / config.name,
                                   http_port=stack.settings.serve.http_port)
    body = yaml.safe_load(rendered.read_text())
    for app in body["applications"]:
        for d in app.get("deployments", []):
            if d["name"] in replicas:
                d.pop("autoscaling_config", None)
                d["num_replicas"] = replicas[d["name"]]
    place_replicas(body, stack.settings.ray.worker_nodes)  # with worker nodes: on them, spread for these counts
    rendered.write_text(yaml.safe_dump(body, sort_keys=False))
    stack.ray.serve_deploy(rendered)
    deadline = time.monotonic() + 120
    while any(len(running_replicas(stack, d)) != n for d, n in replicas.items()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas {replicas} not running after 120 s: {serve_status(stack)}")
        time.sleep(0.5)


def healthy(stack: Stack) -> bool:
    try:
        return stack.healthy()
    except OSError:
        return False


def kill_replica(deployment: str, which: int = 0) -> Callable[[Stack], dict]:
    def inject(stack: Stack) -> dict:
        victims = sorted(running_replicas(stack, deployment), key=lambda r: r["replica_id"])
        victim = victims[which]
        os.kill(victim["pid"], signal.SIGKILL)
        return {"deployment": deployment, "killed_pid": victim["pid"], "replicas_before": len(victims),
                "pids_before": [r["pid"] for r in victims]}
    return inject


def replicas_back(deployment: str) -> Callable[[Stack, dict], bool]:
    def check(stack: Stack, done: dict) -> bool:
        now = running_replicas(stack, deployment)
        return (len(now) >= done["replicas_before"] and done["killed_pid"] not in {r["pid"] for r in now}
                and healthy(stack))
    return check


def kill_triton(stack: Stack) -> dict:
    pid = stack.triton.pid
    os.kill(pid, signal.SIGKILL)
    return {"killed_pid": pid}


def triton_back(stack: Stack, done: dict) -> bool:
    return stack.triton is not None and stack.triton.pid != done["killed_pid"] and healthy(stack)


def bucket(stack: Stack) -> Path:
    """The stack's local data bucket (the matrix runs the local folder source), as its store sees it."""
    return data_store(stack.settings).root


def drop_new_digits(stack: Stack) -> str:
    """New labelled digits in incoming/, as an upload would land them (written aside, then renamed)."""
    from services.models.digits.data import load_split
    from services.models.digits.gates import shift_one_pixel

    split = load_split()
    key = f"datasets/digits/incoming/fault-{time.time_ns()}.npz"
    path = bucket(stack) / key
    buf = io.BytesIO()
    # Rows no earlier row sent (a file the model was trained on already would make its run "skipped").
    rng = np.random.default_rng(time.time_ns() % 2**32)
    images = np.clip(shift_one_pixel(split.train.x[:300]) + rng.uniform(0, 0.5, (300, 8, 8)), 0, 16)
    np.savez(buf, images=images.astype(np.float32), labels=split.train.y[:300])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(f".{path.name}.partial").write_bytes(buf.getvalue())
    path.with_name(f".{path.name}.partial").rename(path)
    return key


def drop_data_then_kill_listener(stack: Stack) -> dict:
    """New labelled digits in incoming/, then kill -9 the listener once it has submitted the run for them."""
    listener = stack.listener
    log = listener.log_file
    offset = log.stat().st_size if log.exists() else 0
    key = drop_new_digits(stack)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()[offset:] if log.exists() else ""
        found = re.search(r"submitted run (\S+) of digits", text)
        if found:
            os.kill(listener.pid, signal.SIGKILL)
            return {"key": key, "run_id": found.group(1), "killed_pid": listener.pid}
        time.sleep(0.2)
    raise TimeoutError(f"the listener submitted no run for {key} in 60 s")


def runs_for(stack: Stack, key: str) -> list[dict]:
    """The run requests whose events name this object (one is right; two is an event acted on twice)."""
    store = data_store(stack.settings)
    found = []
    for obj in store.list("runs/"):
        if obj.key.endswith(".request.json"):
            request = json.loads(store.get_bytes(obj.key))
            if any(e.get("data", {}).get("key") == key for e in request.get("events", [])):
                found.append(request)
    return found


def listener_back_and_run_done(stack: Stack, done: dict) -> bool:
    record = Records(data_store(stack.settings)).run(done["run_id"])
    return (stack.listener is not None and stack.listener.running and stack.listener.pid != done["killed_pid"]
            and record is not None and record.get("outcome") not in (None, "running"))


def runs_lost_or_doubled(stack: Stack, done: dict) -> str:
    runs = runs_for(stack, done["key"])
    record = Records(data_store(stack.settings)).run(done["run_id"]) or {}
    return (f"{len(runs)} run(s) for the event ({record.get('outcome', 'no record')}); "
            + ("none lost, none doubled" if len(runs) == 1 else "WRONG: expected exactly one"))


class ObjectStore:
    """The matrix's S3 server (SeaweedFS), where the model repository lives as on a cluster; its row kills it."""

    bucket = "rts-faults"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.server = SeaweedFS(work_dir)

    def start(self) -> "ObjectStore":
        self.server.start()
        client = self.server.client("s3")
        if self.bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=self.bucket)
        return self

    def restart(self) -> None:
        """Back on the same port with the same data, as a restarted server (or a healed partition) would be."""
        self.server = SeaweedFS(self.work_dir, port=self.server.port)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


object_store: ObjectStore | None = None  # set by main(); the object-store row kills and restarts it
OBJECT_STORE_DOWN_S = 8.0


def kill_object_store_mid_publish(stack: Stack) -> dict:
    """New labelled digits; once the run's publish has written the first object of its version, kill -9 the S3
    server; bring it back OBJECT_STORE_DOWN_S later. The listener runs the failed run again (retryable)."""
    package = load_models(stack.settings)["digits"]
    family, store = package.family, repository_store(stack.settings)
    version = ModelRepository(store).next_version(family)
    prefixes = [f"{member}/{version}/" for member in family.members]
    key = drop_new_digits(stack)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        seen = [o.key for prefix in prefixes for o in store.list(prefix)]
        if seen:
            pid = object_store.server.pid
            os.kill(pid, signal.SIGKILL)
            struck_at = time.time()
            threading.Timer(OBJECT_STORE_DOWN_S, object_store.restart).start()
            return {"key": key, "version": version, "written_before_the_kill": seen, "killed_pid": pid,
                    "struck_at": struck_at}
        time.sleep(0.01)
    raise TimeoutError(f"no run published digits version {version} within 120 s of {key}")


def object_store_back_and_run_published(stack: Stack, done: dict) -> bool:
    records = Records(data_store(stack.settings))
    outcomes = [(records.run(r["run_id"]) or {}).get("outcome") for r in runs_for(stack, done["key"])]
    return object_store.server.running and "published" in outcomes and healthy(stack)


def half_version_never_served(stack: Stack, done: dict) -> str:
    package = load_models(stack.settings)["digits"]
    family, version = package.family, done["version"]
    records = Records(data_store(stack.settings))
    runs = [records.run(r["run_id"]) or {} for r in runs_for(stack, done["key"])]
    told = "; ".join(f"{r.get('outcome')}" + (f" (retryable: {r.get('reason', '')[:60]})" if r.get("retryable") else "")
                     + (f" v{r['version']}" if r.get("version") else "") for r in runs)
    complete = version in ModelRepository(repository_store(stack.settings)).complete_versions(family)
    with TritonClient(stack.triton_url) as triton:
        loaded = [m for m in family.members if version in triton.ready_versions(m)]
    ok = not complete and not loaded and [r.get("outcome") for r in runs][-1:] == ["published"]
    return (f"runs: {told}; v{version} ({len(done['written_before_the_kill'])} object(s) written before the kill) "
            f"{'complete' if complete else 'never complete'}, loaded by {loaded or 'no member'}; "
            + ("no half version served, the event retried" if ok else "WRONG"))


POISON = {  # name -> bytes: what a careless or hostile uploader drops beside good data
    "truncated.npz": b"PK\x03\x04 a zip that ends here",
    "not-data.txt": b"an unsupported file type\n",
    "huge.npz": b"\0" * (17 * 1024 * 1024),  # over the matrix's RTS_RETRAIN_MAX_FILE_MB=16
}


def drop_poison_and_a_duplicate(stack: Stack) -> dict:
    """Poison beside one good file in one burst; once the good file's run has ended, the same file again
    under the same name: the same event delivered twice, which must start nothing."""
    incoming = bucket(stack) / "datasets" / "digits" / "incoming"
    stamp = int(time.time())
    listener_pid = stack.listener.pid
    restarts = (read_status(stack.supervisor.status_file).get("listener") or {}).get("restarts", 0)
    for name, data in POISON.items():
        (incoming / f".{stamp}-{name}.partial").write_bytes(data)
        (incoming / f".{stamp}-{name}.partial").rename(incoming / f"{stamp}-{name}")
    stray = bucket(stack) / "datasets" / "no-such-model" / "incoming"
    stray.mkdir(parents=True, exist_ok=True)
    (stray / f"{stamp}.npz").write_bytes(b"for a model nobody serves")
    key = drop_new_digits(stack)
    good = bucket(stack) / key
    data = good.read_bytes()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        records = Records(data_store(stack.settings))
        done = [r for r in runs_for(stack, key) if (records.run(r["run_id"]) or {}).get("outcome") not in (None, "running")]
        if done:
            break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"no run for {key} ended within 150 s")
    good.with_name(f".{good.name}.partial").write_bytes(data)  # the duplicate
    good.with_name(f".{good.name}.partial").rename(good)
    return {"key": key, "poison": [f"{stamp}-{n}" for n in POISON], "listener_pid": listener_pid,
            "listener_restarts_before": restarts, "duplicate_at": time.time()}


DUPLICATE_SETTLE_S = 10.0  # the listener polls every 0.5 s and debounces 3 s: a second run would have started


def duplicate_settled(stack: Stack, done: dict) -> bool:
    return time.time() - done["duplicate_at"] > DUPLICATE_SETTLE_S and healthy(stack)


def poison_rejected_duplicate_ignored(stack: Stack, done: dict) -> str:
    root = bucket(stack) / "datasets" / "digits"
    reports = {}
    for name in done["poison"]:
        shown = name.split("-", 1)[1]  # without the time stamp
        report = root / "rejected" / f"{name}.report.json"
        if report.exists():
            reports[shown] = "rejected: " + "; ".join(json.loads(report.read_text())["reasons"])[:60]
        elif (root / "incoming" / name).exists():
            reports[shown] = "left in incoming/, never a run's" if not name.endswith(".npz") else "WRONG: still incoming"
    stray = f"datasets/no-such-model/incoming/{done['poison'][0].split('-', 1)[0]}.npz"
    reports["a model nobody serves"] = f"{len(runs_for(stack, stray))} runs"
    runs = runs_for(stack, done["key"])
    restarts = ((read_status(stack.supervisor.status_file).get("listener") or {}).get("restarts", 0)
                - done["listener_restarts_before"])
    ok = (len(runs) == 1 and stack.listener.pid == done["listener_pid"]
          and all(not r.startswith("WRONG") for r in reports.values()) and len(reports) == len(done["poison"]) + 1
          and reports["a model nobody serves"] == "0 runs")
    log = stack.listener.log_file.read_text() if stack.listener is not None else ""
    how = ("the listener acknowledged it as already acted on" if "already acted on; acknowledging" in log
           else "the source never handed it out again (same event id, already acknowledged)")
    return (f"{len(runs)} run for the good file and its duplicate ({how}); listener restarts during the row {restarts}; "
            + "; ".join(f"{n}: {r}" for n, r in reports.items())
            + ("" if ok else "; WRONG"))


WORKER_NODES = 3  # the matrix's stack when the worker-node row runs: two Ingress replicas, one node to spare


def kill_worker_node(stack: Stack) -> dict:
    """kill -9 every process of one worker node holding an Ingress replica (its raylet, agents and the replica at
    once: a lost machine); Serve starts the replica again on a node left (at most one per node, one is free)."""
    replicas = running_replicas(stack, "Ingress")
    for node in stack.worker_nodes:
        held = [r["pid"] for r in replicas if node.running and r.get("node_id") == node.node_id()]
        if held:
            node.kill()
            return {"node": node.what, "node_id": node.node_id(), "replica_pids": held,
                    "replicas_before": len(replicas), "nodes_before": len(stack.ray.alive_nodes())}
    raise RuntimeError(f"no worker node of this stack holds an Ingress replica (RTS_RAY_WORKER_NODES="
                       f"{stack.settings.ray.worker_nodes}): {[r.get('node_id') for r in replicas]}")


def replicas_back_on_other_nodes(stack: Stack, done: dict) -> bool:
    now = running_replicas(stack, "Ingress")
    return (len(now) >= done["replicas_before"] and all(r.get("node_id") != done["node_id"] for r in now)
            and healthy(stack))


def where_replicas_run(stack: Stack, done: dict) -> str:
    now = running_replicas(stack, "Ingress")
    alive = {n["node_id"] for n in stack.ray.alive_nodes()}
    return (f"nothing; the node is gone ({done['nodes_before']} -> {len(alive)} nodes), its replica replaced: "
            f"{len(now)} replicas on {len({r.get('node_id') for r in now})} other node(s)"
            + ("" if done["node_id"] not in alive else "; WRONG: the killed node is still alive"))


FUSED, COMPOSED = CONFIGS / "inference-fused.yaml", CONFIGS / "inference.yaml"

FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("ingress-1-of-2", "kill -9 one of two ingress replicas (fused layout)",
          lambda s: deploy(s, FUSED, {"Ingress": 2}), kill_replica("Ingress"), replicas_back("Ingress")),
    Fault("ingress-only", "kill -9 the only ingress replica (fused layout)",
          lambda s: deploy(s, FUSED, {"Ingress": 1}), kill_replica("Ingress"), replicas_back("Ingress")),
    Fault("preprocess-1-of-2", "kill -9 one of two Preprocess replicas (composed layout)",
          lambda s: deploy(s, COMPOSED, {"Preprocess": 2}), kill_replica("Preprocess"), replicas_back("Preprocess")),
    Fault("triton", "kill -9 Triton; the launcher restarts it",
          lambda s: deploy(s, FUSED, {"Ingress": 1}), kill_triton, triton_back),
    Fault("listener-mid-run", "kill -9 the listener while its retraining run runs; the launcher restarts it",
          lambda s: deploy(s, FUSED, {"Ingress": 1}), drop_data_then_kill_listener, listener_back_and_run_done,
          runs_lost_or_doubled),
    Fault("poison-and-duplicate", "poison files (truncated, unsupported, over the size limit) beside a good one, "
          "then the good one's event again", lambda s: deploy(s, FUSED, {"Ingress": 1}),
          drop_poison_and_a_duplicate, duplicate_settled, poison_rejected_duplicate_ignored),
    Fault("object-store-mid-publish", "kill -9 the S3 server (model repository) while a run publishes; "
          f"back after {OBJECT_STORE_DOWN_S:.0f} s", lambda s: deploy(s, FUSED, {"Ingress": 1}),
          kill_object_store_mid_publish, object_store_back_and_run_published, half_version_never_served),
    Fault("worker-node", f"kill -9 a Ray worker node holding one of two ingress replicas ({WORKER_NODES} worker "
          "nodes, fused layout)", lambda s: deploy(s, FUSED, {"Ingress": 2}), kill_worker_node,
          replicas_back_on_other_nodes, where_replicas_run),
)}


# ---- one row ----------------------------------------------------------------------------------------

def run_row(stack: Stack, fault: Fault, out: Path, say: Callable[[str], None] = print) -> RowResult:
    say(f"[faults] {fault.name}: {fault.what}")
    fault.prepare(stack)
    stop = threading.Event()
    marks: dict = {}

    def inject_later() -> None:
        time.sleep(BEFORE_S)
        marks["t_fault"] = time.time()
        try:
            marks["injected"] = fault.inject(stack)
            # A row whose fault waits for its moment (a run reaching its publish) says when it struck.
            marks["t_fault"] = marks["injected"].get("struck_at", marks["t_fault"])
            deadline = time.monotonic() + RECOVER_CAP_S
            while time.monotonic() < deadline and not stop.is_set():
                if fault.recovered(stack, marks["injected"]):
                    marks["recovered_s"] = time.time() - marks["t_fault"]
                    break
                time.sleep(0.2)
            say(f"[faults] {fault.name}: recovered after {marks.get('recovered_s', float('nan')):.1f}s")
            time.sleep(AFTER_S)
            marks["lost"] = fault.lost(stack, marks["injected"])
        except Exception as exc:  # the row fails, the matrix goes on
            marks["error"] = repr(exc)
        finally:
            stop.set()

    injector = threading.Thread(target=inject_later, daemon=True)
    injector.start()
    env = {"LOADTEST_FEEDBACK_SHARE": "0"}
    result = run_profile("fault", stack.gateway_url, stack.ray.dashboard_url, out, app=APP, stop_early=stop, env=env)
    injector.join(timeout=RECOVER_CAP_S + 30)
    timings = result["timings"]
    t_fault = marks.get("t_fault", float("inf"))
    if len(timings):
        starts, ends, ok = timings[:, 0], timings[:, 0] + timings[:, 1] / 1000, timings[:, 2] == 1
    else:
        starts = ends = ok = np.zeros(0)
    failed = ~ok.astype(bool) if len(timings) else np.zeros(0, dtype=bool)
    in_flight = int(np.sum((starts <= t_fault) & (ends >= t_fault)))
    after = failed & (starts >= t_fault - 30)
    last_failure = float(np.max(starts[after]) - t_fault) if np.any(after) else None
    errors = []
    failures_csv = out / "locust_failures.csv"
    if failures_csv.exists():
        errors = failures_csv.read_text().splitlines()[1:6]
    row = RowResult(
        name=fault.name, what=fault.what, requests=int(len(timings)), failed=int(np.sum(failed)),
        failed_before_fault=int(np.sum(failed & (ends < t_fault))), in_flight=in_flight,
        failed_beyond_in_flight=max(0, int(np.sum(failed)) - in_flight),
        recovered_s=marks.get("recovered_s"), last_failure_s=last_failure,
        lost=marks.get("lost", marks.get("error", "unknown")), injected=marks.get("injected", {}), errors=errors,
        out=str(out))
    (out / "row.json").write_text(json.dumps(asdict(row), indent=2))
    say(f"[faults] {fault.name}: {row.failed} of {row.requests} failed ({row.in_flight} in flight), "
        f"recovered {row.recovered_s if row.recovered_s is None else round(row.recovered_s, 1)} s")
    marks["timings"] = timings
    row_marks[fault.name] = marks
    return row


row_marks: dict[str, dict] = {}  # per row: the fault's time and the request timings, for the plot


# ---- the report -------------------------------------------------------------------------------------

def table(rows: list[RowResult]) -> str:
    head = ("| fault | requests | failed | in flight at the fault | failed beyond those | recovered in s "
            "| last failure at s | lost |\n|---|---:|---:|---:|---:|---:|---:|---|\n")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    return head + "".join(
        f"| {r.what} | {r.requests} | {r.failed} | {r.in_flight} | {r.failed_beyond_in_flight} | "
        f"{fmt(r.recovered_s)} | {fmt(r.last_failure_s)} | {r.lost} |\n" for r in rows)


def plot(rows: list[RowResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 2.4 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        marks = row_marks.get(row.name, {})
        timings, t_fault = marks.get("timings"), marks.get("t_fault")
        if timings is None or not len(timings) or t_fault is None:
            ax.set_title(f"{row.what}: no data")
            continue
        rel = timings[:, 0] - t_fault
        bins = np.arange(np.floor(rel.min()), np.ceil(rel.max()) + 0.5, 0.5)
        ok, _ = np.histogram(rel[timings[:, 2] == 1], bins)
        bad, _ = np.histogram(rel[timings[:, 2] == 0], bins)
        ax.bar(bins[:-1], ok / 0.5, width=0.5, align="edge", color="tab:blue", label="answered req/s")
        ax.bar(bins[:-1], bad / 0.5, width=0.5, align="edge", bottom=ok / 0.5, color="tab:red", label="failed req/s")
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        if row.recovered_s is not None:
            ax.axvline(row.recovered_s, color="tab:green", linestyle=":", linewidth=1.5, label="recovered")
        ax.set_title(f"{row.what}: {row.failed} failed of {row.requests}", fontsize=9)
        ax.set_xlabel("seconds from the fault")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(rows: list[RowResult], out: Path) -> None:
    (out / "faults.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    (out / "faults.md").write_text(table(rows))
    plot(rows, out / "faults.png")


def fault_settings(var_dir: Path, s3_endpoint_url: str | None = None, worker_nodes: int = 0) -> Settings:
    """The matrix's stack. With an S3 endpoint, the model repository lives there (the object-store row); with worker
    nodes, the Serve replicas run on them (the worker-node row)."""
    http, grpc, metrics, gcs, dashboard, serve, launcher = free_ports(7)
    repository = ({"RTS_MODEL_REPOSITORY_URI": f"s3://{ObjectStore.bucket}/model_repository",
                   "s3_endpoint_url": s3_endpoint_url} if s3_endpoint_url else {})
    return Settings(var_dir=var_dir, models=["services.models.digits", "services.models.diabetes"],
                    triton={"http_port": http, "grpc_port": grpc, "metrics_port": metrics},
                    ray={"gcs_port": gcs, "dashboard_port": dashboard, "temp_dir": Path(f"/tmp/rts-faults-{os.getpid()}"),
                         "worker_nodes": worker_nodes},
                    serve={"http_port": serve, "config": FUSED}, launcher={"metrics_port": launcher},
                    listener={"retry_backoff_s": 5.0}, retrain={"max_file_mb": 16},
                    drift={"enabled": False},  # a repeated load-test image must not start runs of its own
                    **repository)


def main() -> None:
    parser = argparse.ArgumentParser(description="faults under bounded load, with a table and a plot")
    parser.add_argument("--rows", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; rows: {', '.join(FAULTS)}")
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("faults-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    global object_store
    with contextlib.ExitStack() as cleanup:
        endpoint = None
        if "object-store-mid-publish" in names:
            print("[faults] starting the S3 server (SeaweedFS) for the model repository ...", flush=True)
            object_store = ObjectStore(out / "s3").start()
            cleanup.callback(lambda: object_store.stop())
            os.environ.update(object_store.server.env)  # Triton, the jobs and the replicas read the repository
            endpoint = object_store.server.endpoint_url
        nodes = WORKER_NODES if "worker-node" in names else 0
        stack = cleanup.enter_context(Stack(fault_settings(out / "var", endpoint, nodes),
                                            say=lambda m: print(f"[stack] {m}", flush=True)))
        for name in names:
            rows.append(run_row(stack, FAULTS[name], out / name))
            write_report(rows, out)
    shutil.rmtree(stack.settings.ray.temp_dir, ignore_errors=True)  # Ray's session files of this run (its logs too)
    print(table(rows))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
