"""What an earlier ``rts up`` left behind, found before a start and ended by ``rts down``.

``rts up`` records itself and every child it starts in ``<var_dir>/run/stack.json`` (pid and start
time, so a pid the OS hands to another process later is never mistaken for ours): Triton, the Ray head,
each Ray worker node (``RTS_RAY_WORKER_NODES``, one session each, in the head's temp dir), the listener;
nodes Ray's autoscaler adds live in the head's session and end with it. Before a start,
``find_leftovers`` looks for what would make the start fail or fight an old stack:

- a launcher or child recorded in that file that still runs;
- a port this stack needs that something holds (and which process);
- Ray processes using this stack's Ray temp dir (a head from an earlier run).

A recorded file whose processes are all gone is stale: it is removed and mentioned, nothing else.
``rts down`` ends what the file records, and only that: the launcher first (it stops its children in
order), then any child session still alive.

Usage::

    problems = find_leftovers(settings, state_path)     # [] when the way is clear
    ended = down(state_path)                            # what was ended, for the operator
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.runtime.processes import session_alive, stop_session
from services.settings import REPO_ROOT, Settings

STATE_FILE = "stack.json"


class StackState:
    """This checkout's running stack: the launcher and its children, as pid + start time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.body: dict = {}

    def begin(self, settings: Settings) -> None:
        me = psutil.Process()
        self.body = {"checkout": str(REPO_ROOT), "launcher": {"pid": me.pid, "create_time": me.create_time()},
                     "ray_temp_dir": str(settings.ray.temp_dir), "ports": needed_ports(settings), "children": {}}
        self._write()

    def record(self, what: str, pid: int | None) -> None:
        if pid is None or not self.body:
            return
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self.body["children"][what] = {"pid": pid, "create_time": created}
        self._write()

    def end(self) -> None:
        """Forget the stack this object began (never a file another launcher wrote)."""
        if self.body:
            self.path.unlink(missing_ok=True)
        self.body = {}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.body, indent=2))
        tmp.replace(self.path)

    @staticmethod
    def load(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def needed_ports(settings: Settings) -> dict[str, int]:
    ports = {"gateway (RTS_SERVE_HTTP_PORT)": settings.serve.http_port,
             "Ray GCS (RTS_RAY_GCS_PORT)": settings.ray.gcs_port,
             "Ray dashboard (RTS_RAY_DASHBOARD_PORT)": settings.ray.dashboard_port}
    if not settings.triton.url:
        ports.update({"Triton HTTP (RTS_TRITON_HTTP_PORT)": settings.triton.http_port,
                      "Triton gRPC (RTS_TRITON_GRPC_PORT)": settings.triton.grpc_port,
                      "Triton metrics (RTS_TRITON_METRICS_PORT)": settings.triton.metrics_port})
    if settings.launcher.metrics_port:
        ports["launcher metrics (RTS_LAUNCHER_METRICS_PORT)"] = settings.launcher.metrics_port
    return ports


def _alive(entry: dict | None) -> bool:
    """The recorded process itself (same pid, same start time) is still running."""
    if not entry:
        return False
    try:
        proc = psutil.Process(entry["pid"])
        return abs(proc.create_time() - entry["create_time"]) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _child_alive(entry: dict) -> bool:
    """The child, or anything of the session it led (Ray's workers outlive a killed `ray start`).
    Linux never hands out a pid still in use as a session id, so a session with our child's pid and no
    live leader is ours; a live leader with another start time is not."""
    if _alive(entry):
        return True
    return not psutil.pid_exists(entry["pid"]) and session_alive(entry["pid"])


def _describe(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"pid {pid} ({proc.name()})"
    except psutil.Error:
        return f"pid {pid}"


def port_holders(port: int) -> list[int]:
    """Pids listening on this TCP port (any address); [] when free, or when its holder is not ours to see."""
    holders = set()
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                holders.add(conn.pid)
    except psutil.AccessDenied:
        pass
    return sorted(holders)


def port_busy(port: int) -> bool:
    """Something listens on this port (connections of a stopped server, in TIME_WAIT, do not count: the
    servers set SO_REUSEADDR and start over them, so this check does too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def using_dir(directory: Path) -> list[int]:
    """Pids whose command line points into `directory` (Ray's processes name their --temp-dir/session)."""
    prefix = str(directory).rstrip("/")
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        args = proc.info.get("cmdline") or []
        if any(a == prefix or a.endswith("=" + prefix) or prefix + "/" in a for a in args):
            found.append(proc.info["pid"])
    return sorted(set(found) - {os.getpid()})


@dataclass
class Leftovers:
    problems: list[str]
    ours: bool  # an earlier `rts up` of this checkout is (part of) it: `rts down` ends it
    notes: list[str]

    def message(self) -> str:
        lines = ["a stack from an earlier run is still here:"] + [f"  - {p}" for p in self.problems]
        if self.ours:
            lines.append("end it with `rts down` (it ends only what `rts up` of this checkout started), "
                         "then start again.")
        else:
            lines.append("this checkout's `rts up` did not start it, so `rts down` leaves it alone: end those "
                         "processes yourself, or give this stack other ports (the RTS_* variables named) and "
                         "another RTS_RAY_TEMP_DIR.")
        return "\n".join(lines)


def find_leftovers(settings: Settings, state_path: Path) -> Leftovers:
    problems, notes, ours = [], [], False
    state = StackState.load(state_path)
    if state is not None:
        launcher = state.get("launcher")
        children = {what: e for what, e in state.get("children", {}).items() if _child_alive(e)}
        if _alive(launcher):
            problems.append(f"`rts up` ({_describe(launcher['pid'])}) of this checkout is still running")
            ours = True
        if children:
            problems.append("its children still run: " + ", ".join(f"{w} (pid {e['pid']})"
                                                                  for w, e in sorted(children.items())))
            ours = True
        if not ours:
            notes.append(f"removed a stale {state_path} (every process it names has ended)")
            state_path.unlink(missing_ok=True)
    for what, port in needed_ports(settings).items():
        if port_busy(port):
            holders = port_holders(port)
            by = ", ".join(_describe(p) for p in holders) if holders else "a process this user cannot see"
            problems.append(f"port {port}, {what}, is held by {by}")
    ray = using_dir(settings.ray.temp_dir)
    if ray:
        problems.append(f"Ray processes use {settings.ray.temp_dir} (RTS_RAY_TEMP_DIR): "
                        + ", ".join(_describe(p) for p in ray[:6]) + (" ..." if len(ray) > 6 else ""))
    return Leftovers(problems, ours, notes)


def down(state_path: Path, timeout_s: float = 90.0, say=print) -> list[str]:
    """End what `rts up` of this checkout recorded: the launcher (which stops its children in order), then
    any child session still alive. Returns what was ended."""
    state = StackState.load(state_path)
    if state is None:
        return []
    ended = []
    launcher = state.get("launcher")
    if _alive(launcher):
        say(f"stopping `rts up` ({_describe(launcher['pid'])}) ...")
        os.kill(launcher["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(launcher) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(launcher):
            say(f"`rts up` did not stop in {timeout_s:.0f}s; killing it")
            os.kill(launcher["pid"], signal.SIGKILL)
        ended.append(f"rts up (pid {launcher['pid']})")
    for what, entry in state.get("children", {}).items():
        if _child_alive(entry):
            say(f"stopping {what} (session {entry['pid']}) ...")
            stop_session(entry["pid"])
            ended.append(f"{what} (pid {entry['pid']})")
    state_path.unlink(missing_ok=True)
    return ended
