"""Stopping and restarting the way users do: `make up` stopped by a signal to its whole process group,
twice (a process manager, a CI runner, a terminal's job control; make passes the signal on as well),
and a stack whose launcher was killed -9, found at the next start and ended by `rts down`.

Each test runs its own `make up` / `rts up` on free ports with one model, beside the session's stack,
and ends whatever it started even when it fails (`rts down`'s own code, from the recorded pids).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from services.runtime.leftovers import StackState, down, port_busy, using_dir
from services.runtime.processes import free_ports, start_process, stop_process
from services.settings import REPO_ROOT

pytestmark = pytest.mark.integration

MODEL = "services.models.digits"


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lifecycle-var")  # shared: the second start reuses the first's model v1


@pytest.fixture
def stack_env(var_dir, tmp_path, request):
    http, grpc, metrics, gcs, dashboard, serve, launcher = free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTS_")}
    env.update({"RTS_VAR_DIR": str(var_dir), "RTS_MODELS": MODEL, "RTS_TRITON_HTTP_PORT": str(http),
                "RTS_TRITON_GRPC_PORT": str(grpc), "RTS_TRITON_METRICS_PORT": str(metrics),
                "RTS_RAY_GCS_PORT": str(gcs), "RTS_RAY_DASHBOARD_PORT": str(dashboard),
                "RTS_RAY_TEMP_DIR": f"/tmp/rts-life-{os.getpid()}-{serve}", "RTS_SERVE_HTTP_PORT": str(serve),
                "RTS_LAUNCHER_METRICS_PORT": str(launcher)})
    failed_before = request.session.testsfailed
    yield env
    down(var_dir / "run" / "stack.json", say=lambda _: None)  # whatever a failed test left
    if request.session.testsfailed == failed_before:  # Ray's session files (its logs) stay after a failure
        shutil.rmtree(env["RTS_RAY_TEMP_DIR"], ignore_errors=True)


def ports(env) -> list[int]:
    return [int(v) for k, v in env.items() if k.endswith("_PORT")]


def wait_serving(env, proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> dict:
    """The recorded stack once the gateway is healthy and the listener runs."""
    url = f"http://127.0.0.1:{env['RTS_SERVE_HTTP_PORT']}/healthz"
    state_path = Path(env["RTS_VAR_DIR"]) / "run" / "stack.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the stack exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        state = StackState.load(state_path) or {}
        try:
            healthy = httpx.get(url, timeout=3).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy and "listener" in state.get("children", {}):
            return state
        time.sleep(1)
    raise AssertionError(f"the stack did not come up in {timeout_s}s:\n{log.read_text()[-3000:]}")


def everything_of(state: dict) -> list[psutil.Process]:
    """Every live process of the recorded stack: the launcher's tree and each child's session."""
    procs = []
    for entry in [state["launcher"], *state["children"].values()]:
        try:
            leader = psutil.Process(entry["pid"])
            procs += [leader, *leader.children(recursive=True)]
        except psutil.Error:
            pass
    sessions = {e["pid"] for e in state["children"].values()}
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) in sessions:
                procs.append(p)
        except (OSError, psutil.Error):
            pass
    return list({p.pid: p for p in procs}.values())


def all_gone(procs: list[psutil.Process], timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.5)
    return [f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in alive]


def rts(env, *args, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


def test_sigterm_twice_to_make_ups_process_group_ends_everything(stack_env, tmp_path):
    log = tmp_path / "make-up.log"
    make = start_process(["make", "-s", "up"], env=stack_env, log_file=log, cwd=REPO_ROOT)  # its own group
    try:
        state = wait_serving(stack_env, make, log)
        procs = everything_of(state)
        assert len(procs) > 5  # make, rts up, Triton, the Ray head and its processes, the listener

        # The leftover check, while this one runs: a second start is refused and says how to end the first.
        second = rts(stack_env, "up", timeout_s=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "still running" in second.stderr and "rts down" in second.stderr
        assert f"port {stack_env['RTS_SERVE_HTTP_PORT']}" in second.stderr

        started = time.monotonic()
        os.killpg(make.pid, signal.SIGTERM)
        time.sleep(0.3)
        os.killpg(make.pid, signal.SIGTERM)  # the second arrives while the first shutdown runs
        time.sleep(1.0)
        try:
            os.killpg(make.pid, signal.SIGINT)  # and an impatient Ctrl-C on top
        except ProcessLookupError:
            pass
        left = all_gone(procs, timeout_s=90)
        took = time.monotonic() - started
        print(f"\n[lifecycle] every process of `make up` ended {took:.1f}s after the first SIGTERM")
        assert left == [], f"still running {took:.0f}s after SIGTERM x2 + SIGINT: {left}\n{log.read_text()[-3000:]}"
        assert using_dir(Path(stack_env["RTS_RAY_TEMP_DIR"])) == []
        assert not any(port_busy(p) for p in ports(stack_env))
        assert not (Path(stack_env["RTS_VAR_DIR"]) / "run" / "stack.json").exists()
        assert "already stopping" in log.read_text()
    finally:
        stop_process(make, timeout_s=5)


def test_a_stack_whose_launcher_was_killed_is_named_at_the_next_start_and_ended_by_rts_down(stack_env, tmp_path):
    log = tmp_path / "rts-up.log"
    launcher = start_process([sys.executable, "-m", "services.cli", "up"], env=stack_env, log_file=log,
                             cwd=REPO_ROOT)
    try:
        state = wait_serving(stack_env, launcher, log)
        os.kill(launcher.pid, signal.SIGKILL)  # no cleanup at all: Triton, Ray and the listener stay
        launcher.wait(timeout=10)
        procs = everything_of(state)
        assert procs, "the children should outlive a launcher killed -9"

        refused = rts(stack_env, "up", timeout_s=60)
        assert refused.returncode == 2
        for what in ("triton", "ray head", "listener"):
            assert f"{what} (pid {state['children'][what]['pid']})" in refused.stderr, refused.stderr
        assert "rts down" in refused.stderr and "RTS_RAY_TEMP_DIR" in refused.stderr

        ended = rts(stack_env, "down")
        assert ended.returncode == 0, ended.stdout + ended.stderr
        assert "triton" in ended.stdout and "ray head" in ended.stdout
        assert all_gone(procs, timeout_s=30) == []
        assert not any(port_busy(p) for p in ports(stack_env))
        again = rts(stack_env, "down")
        assert again.returncode == 0 and "nothing" in again.stdout
    finally:
        stop_process(launcher, timeout_s=5)
