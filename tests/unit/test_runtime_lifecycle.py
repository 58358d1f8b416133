"""The launcher's lifecycle with real child processes: leftovers found and named, `rts down` ending only
what was recorded, crashed children restarted with backoff and counted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services.runtime.leftovers import StackState, down, find_leftovers
from services.runtime.processes import (ManagedProcess, StartupFailed, free_ports, rotate_log, session_alive,
                                        start_process)
from services.runtime.supervisor import Supervisor
from services.settings import LauncherSettings, Settings
from services.telemetry.supervision import read_status


def settings_on_free_ports(tmp_path: Path) -> Settings:
    http, grpc, metrics, gcs, dashboard, serve, launcher = free_ports(7)
    return Settings(var_dir=tmp_path / "var", triton={"http_port": http, "grpc_port": grpc, "metrics_port": metrics},
                    ray={"gcs_port": gcs, "dashboard_port": dashboard, "temp_dir": tmp_path / "ray"},
                    serve={"http_port": serve}, launcher={"metrics_port": launcher})


class Sleeper(ManagedProcess):
    """A child that runs until stopped (or for `seconds`), with a grandchild in its session, as Ray has."""

    what = "sleeper"

    def __init__(self, log_file: Path, seconds: float = 600, marker: str = "") -> None:
        super().__init__(log_file)
        self.seconds, self.marker = seconds, marker

    def argv(self) -> list[str]:
        code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
                f"time.sleep({self.seconds})']); time.sleep({self.seconds})")
        return [sys.executable, "-c", code, *([self.marker] if self.marker else [])]


@pytest.fixture
def cleanup():
    started: list[ManagedProcess] = []
    yield started
    for p in started:
        p.stop()


def test_a_clear_way_has_no_problems(tmp_path):
    settings = settings_on_free_ports(tmp_path)
    found = find_leftovers(settings, tmp_path / "stack.json")
    assert found.problems == [] and found.notes == []


def test_a_held_port_is_named_with_its_process(tmp_path):
    settings = settings_on_free_ports(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", settings.serve.http_port))
        s.listen()
        found = find_leftovers(settings, tmp_path / "stack.json")
    assert len(found.problems) == 1 and not found.ours
    problem = found.problems[0]
    assert f"port {settings.serve.http_port}" in problem and "RTS_SERVE_HTTP_PORT" in problem
    assert f"pid {os.getpid()}" in problem
    assert "did not start it" in found.message()


def test_processes_in_our_ray_temp_dir_are_found(tmp_path, cleanup):
    settings = settings_on_free_ports(tmp_path)
    ray_like = Sleeper(tmp_path / "ray.log", marker=f"--temp-dir={settings.ray.temp_dir}").start()
    cleanup.append(ray_like)
    other = Sleeper(tmp_path / "other.log", marker=f"--temp-dir={settings.ray.temp_dir}-not-ours").start()
    cleanup.append(other)
    found = find_leftovers(settings, tmp_path / "stack.json")
    assert len(found.problems) == 1 and "RTS_RAY_TEMP_DIR" in found.problems[0]
    assert f"pid {ray_like.pid}" in found.problems[0] and f"pid {other.pid}" not in found.problems[0]


def test_a_recorded_stack_still_running_is_ours_and_down_ends_only_it(tmp_path, cleanup):
    settings = settings_on_free_ports(tmp_path)
    state_path = tmp_path / "stack.json"
    state = StackState(state_path)
    state.begin(settings)
    recorded = Sleeper(tmp_path / "recorded.log").start()
    unrecorded = Sleeper(tmp_path / "unrecorded.log").start()
    cleanup += [recorded, unrecorded]
    state.record("triton", recorded.pid)
    # as if the launcher were another process that died: only its child is left
    body = StackState.load(state_path)
    body["launcher"] = {"pid": 999_999_999, "create_time": 0}
    state.body = body
    state._write()

    found = find_leftovers(settings, state_path)
    assert found.ours and any(f"triton (pid {recorded.pid})" in p for p in found.problems)
    assert "rts down" in found.message()

    ended = down(state_path, say=lambda _: None)
    assert ended == [f"triton (pid {recorded.pid})"]
    assert not session_alive(recorded.pid)  # the child and its grandchild
    assert unrecorded.running  # never ours to end
    assert not state_path.exists()


def test_a_stale_state_file_is_removed_and_mentioned(tmp_path):
    settings = settings_on_free_ports(tmp_path)
    state_path = tmp_path / "stack.json"
    gone = start_process([sys.executable, "-c", "pass"])
    gone.wait()
    state = StackState(state_path)
    state.begin(settings)
    state.body["launcher"] = {"pid": gone.pid, "create_time": 1.0}
    state.body["children"]["triton"] = {"pid": gone.pid, "create_time": 1.0}
    state._write()
    found = find_leftovers(settings, state_path)
    assert found.problems == [] and "stale" in found.notes[0]
    assert not state_path.exists()


def test_a_failed_start_never_removes_an_earlier_stacks_file(tmp_path):
    state_path = tmp_path / "stack.json"
    state_path.write_text('{"launcher": {"pid": 1, "create_time": 0}}')
    StackState(state_path).end()  # a stack that never began
    assert state_path.exists()


def test_stop_before_start_means_the_start_never_begins(tmp_path):
    sleeper = Sleeper(tmp_path / "s.log")
    sleeper.stop()
    with pytest.raises(StartupFailed, match="stopped before it started"):
        sleeper.start()
    assert sleeper.proc is None


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_a_crashed_child_is_restarted_with_backoff_counted_and_reported(tmp_path, cleanup):
    (port,) = free_ports(1)
    status_file = tmp_path / "processes.json"
    said: list[str] = []
    started: list[int] = []
    supervisor = Supervisor(LauncherSettings(metrics_port=port, restart_backoff_s=0.3, restart_backoff_max_s=0.6),
                            status_file=status_file, say=said.append, interval_s=0.05,
                            on_start=lambda name, p: started.append(p.pid))

    def factory() -> Sleeper:
        p = Sleeper(tmp_path / "child.log")
        cleanup.append(p)
        return p

    first = factory().start()
    supervisor.watch("child", factory, first)
    supervisor.start()
    try:
        assert 'rts_process_restarts_total{process="child"} 0.0' in metrics_text(port)
        for crash in (1, 2, 3):
            before = supervisor.current("child")
            os.kill(before.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (supervisor.current("child") is before or not supervisor.current("child").running) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            assert supervisor.current("child") is not before and supervisor.current("child").running
        text = metrics_text(port)
        assert 'rts_process_restarts_total{process="child"} 3.0' in text
        assert 'rts_process_up{process="child"} 1.0' in text
        status = read_status(status_file)
        assert status["child"]["state"] == "up" and status["child"]["restarts"] == 3
        assert status["child"]["last_exit_code"] == -signal.SIGKILL
        waits = [line for line in said if "restarting in" in line]
        assert len(waits) == 3 and "crash 3 in a row" in waits[-1]
        assert started == [p.pid for p in cleanup[1:4]]  # each restart reported, in order
    finally:
        children = supervisor.stop()
    assert not status_file.exists()
    assert supervisor.current("child") in children


def test_a_signal_during_a_start_waits_for_the_child_to_be_recorded_then_arrives(tmp_path, cleanup):
    from services.runtime.processes import _signals_held

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == []  # held while the child is started and recorded
        assert seen == [signal.SIGTERM]  # then delivered to the handler that was there before
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_children_still_honour_sigterm(tmp_path, cleanup):
    """The hold must not pass to the child (a blocked mask is inherited: Triton would ignore SIGTERM)."""
    sleeper = Sleeper(tmp_path / "s.log").start()
    cleanup.append(sleeper)
    os.kill(sleeper.pid, signal.SIGTERM)
    assert sleeper.proc.wait(timeout=5) == -signal.SIGTERM


class Crasher(ManagedProcess):
    """A child that says why it is about to die, then dies."""

    what = "crasher"

    def argv(self) -> list[str]:
        return [sys.executable, "-c", "import time, sys; time.sleep(0.3); print('Signal (11) received.', flush=True); "
                                      "sys.exit(3)"]

    def prepare(self) -> None:
        rotate_log(self.log_file)


def test_a_crash_is_told_with_the_end_of_its_log_and_the_restart_keeps_that_log(tmp_path, cleanup):
    (port,) = free_ports(1)
    said: list[str] = []
    supervisor = Supervisor(LauncherSettings(metrics_port=port, restart_backoff_s=0.2, restart_backoff_max_s=0.2),
                            status_file=tmp_path / "processes.json", say=said.append, interval_s=0.05)

    def factory() -> Crasher:
        p = Crasher(tmp_path / "crasher.log")
        cleanup.append(p)
        return p

    supervisor.watch("crasher", factory, factory().start())
    supervisor.start()
    try:
        deadline = time.monotonic() + 10
        while len(cleanup) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        supervisor.stop()
    assert any("crasher exited (code 3)" in line for line in said), said
    assert any("last lines of" in line and "Signal (11) received." in line for line in said), said
    assert (tmp_path / "crasher.log.1").read_text().strip() == "Signal (11) received."  # the crash, kept


def test_rotating_a_log_keeps_the_newest_few(tmp_path):
    log = tmp_path / "x.log"
    for n in range(5):
        log.write_text(f"run {n}\n")
        rotate_log(log, keep=3)
    assert not log.exists()
    assert [(tmp_path / f"x.log.{i}").read_text() for i in (1, 2, 3)] == ["run 4\n", "run 3\n", "run 2\n"]
    assert not (tmp_path / "x.log.4").exists()


def test_free_ports_never_hands_out_a_port_to_avoid(monkeypatch):
    """The OS may offer a port chosen earlier for a server that has not bound it yet (it did: a Ray head's
    client-server port once equalled its dashboard port, and the head refused to start)."""
    offered = iter([8265, 40001, 6380, 40002, 40003])

    class FakeSocket:
        def bind(self, address):
            self.port = next(offered)

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr("services.runtime.processes.socket.socket", FakeSocket)
    monkeypatch.setattr("services.runtime.processes.quiet_port_range", lambda: range(0))  # the OS offers
    assert free_ports(3, avoid={8265, 6380}) == [40001, 40002, 40003]


def test_free_ports_come_from_outside_the_range_the_kernel_and_ray_hand_out():
    """A port the kernel offered for port 0 can be handed out again, by the kernel, to whatever binds port 0 or
    connects out before our server binds it: Ray's processes do so by the hundred (a CI run lost its
    runtime-env agent that way). Ports are drawn where neither the kernel nor Ray's workers look."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(200, avoid={20000, 20001})
    assert len(set(ports)) == 200
    assert all(20000 < p < low for p in ports), sorted(ports)[:5]
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports[0]))  # each is free to bind

