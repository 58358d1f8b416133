"""Node autoscaling follows the load: Ray's autoscaler (fake multi-node provider, as in Ray's own tests) adds worker
nodes when Serve asks for more Ingress replicas than the nodes can hold, and removes them once idle.

Runs ``loadtests/nodes.py`` (its own stack: Triton, a Ray head with the autoscaler, the Serve app; free ports, not the
session stack) in a child process inside a loopback-only network namespace (``unshare -n`` as root, or as it is when
already in one), then checks its report: ``loadtests/results/test-nodes-<time>/nodes.json`` and ``nodes.png``
(requests/s, running replicas and alive worker nodes against time). ``make test-nodes`` runs it alone. About 3 minutes.
Whatever happens, every process the child's stack recorded is ended (``rts down``'s own code).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from services.runtime.leftovers import STATE_FILE, down
from services.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.nodes]
BUDGET_S = 330  # the run itself takes about three minutes on 2 cores


def loopback_only() -> bool:
    return set(psutil.net_if_addrs()) <= {"lo"}


def command(out) -> list[str]:
    run = [sys.executable, "-m", "loadtests.nodes", "--out", str(out)]
    if loopback_only():
        return run
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs a loopback-only network namespace (root and `unshare -n`): Ray's autoscaled nodes take "
                    "the machine's primary address otherwise")
    # exec: the namespace's only process is the run itself, so a SIGTERM reaches it and its stack stops.
    return ["unshare", "-n", "bash", "-c", "ip link set lo up && exec " + shlex.join(run)]


def test_worker_nodes_come_with_a_load_spike_and_go_after_it():
    out = REPO_ROOT / "loadtests" / "results" / time.strftime("test-nodes-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command(out), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            proc.wait(timeout=BUDGET_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the run stops its stack
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pytest.fail(f"the run took over {BUDGET_S} s; last lines:\n" + "\n".join(log.read_text().splitlines()[-30:]))
    finally:
        ended = down(out / "var" / "run" / STATE_FILE, timeout_s=30, say=print)  # nothing, when the run stopped it
        assert not ended, f"the run left these running (now ended): {ended}"
    assert proc.returncode == 0, "\n".join(log.read_text().splitlines()[-40:])
    summary = json.loads((out / "nodes.json").read_text())["summary"]
    print(f"\nnode autoscaling: {json.dumps(summary)}\nreport: {out}")
    assert (out / "nodes.png").exists()
    assert summary["resting_nodes"] == 1, "at rest, one replica on one worker node"
    assert summary["peak_nodes"] >= 2 and summary["nodes_up_after_s"] is not None, "no node was added under the load"
    assert summary["peak_replicas"] >= 2 and summary["replicas_always_on_distinct_nodes"]
    assert summary["nodes_down_after_burst_s"] is not None and summary["nodes_at_end"] <= 1, \
        "the nodes added for the burst were not removed after it"
    assert summary["failed"] == 0, summary["failures"]
