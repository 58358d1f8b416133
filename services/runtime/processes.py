"""Start and stop the child processes this project owns, and only those: one lifecycle for every
launcher (Triton, the Ray head, the listener) and every test server (SeaweedFS, emulators).

Usage::

    class Weed(ManagedProcess):
        what = "SeaweedFS"
        def argv(self): return ["weed", "mini", ...]
        def ready(self): return port_open(self.port)

    with Weed(log_file=tmp / "weed.log") as weed:      # started, and ready; stopped on exit
        ...

Each child runs in its own session and process group; stopping sends SIGTERM to that group and
every process of that session, waits, then SIGKILL. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed


def start_process(argv: list[str], *, env: dict[str, str] | None = None, log_file: Path | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:
    out = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_file, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    try:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        if out is not None:
            out.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL it and anything left in its session.

    Ray puts its workers in process groups of their own inside our session, so the session id
    (which only we created, with start_new_session) is what finds them all. Safe to call twice.
    """
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        _signal_session(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap it, so it is not a zombie member
            if not session_members(proc.pid):
                return
            time.sleep(0.1)


def _signal_session(sid: int, sig: int) -> None:
    try:
        os.killpg(sid, sig)
    except ProcessLookupError:
        pass
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            state, session = fields[0], int(fields[3])
            if session == sid and state != "Z":
                members.append(int(entry.name))
    return members


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after "pid (comm) ": state is [0], session [3], start time [19]; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): with the pid, it names one process, never a later
    one that reuses the pid. None if no live process has this pid."""
    fields = _stat(pid)
    return int(fields[19]) if fields is not None and fields[0] != "Z" else None


def session_alive(sid: int) -> bool:
    return bool(session_members(sid))


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` at once, no grace (a fault test's lost machine)."""
    _signal_session(sid, signal.SIGKILL)


def stop_session(sid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM every process of session `sid` (one we started with start_new_session), wait, then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        _signal_session(sid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not session_members(sid):
                return
            time.sleep(0.1)


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM wait until the block ends (a child is started and recorded, or not started at all),
    so a Ctrl-C can never land between the fork and the assignment that lets stop() find the child.
    They are caught and replayed, not blocked: a blocked mask would pass to the child, which would then
    ignore SIGTERM for good. Signals reach Python handlers in the main thread only; elsewhere this is a no-op."""
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in held}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    pending: list[int] = []
    for sig in held:
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in pending:
            signal.raise_signal(signum)  # as if it came now, to whatever handled it before


class StartupFailed(RuntimeError):
    """Raised by a readiness check when waiting longer cannot help."""


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
               log_file: Path | None = None, interval_s: float = 0.25) -> None:
    """Poll `check` until it returns True; fail early with the log tail if `proc` dies."""

    def attempt() -> bool:
        if proc is not None and proc.poll() is not None:
            raise StartupFailed(f"{what} exited with code {proc.returncode} before it was ready{_tail(log_file)}")
        try:
            return bool(check())
        except StartupFailed:
            raise
        except Exception:
            return False

    retrying = Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(interval_s),
                        retry=retry_if_result(lambda ok: not ok), retry_error_callback=lambda state: False)
    if not retrying(attempt):
        raise TimeoutError(f"{what} was not ready after {timeout_s:.0f}s{_tail(log_file)}")


def _tail(log_file: Path | None, lines: int = 30) -> str:
    text = log_tail(log_file, lines)
    return f"; last lines of {log_file}:\n{text}" if text else ""


def log_tail(log_file: Path | None, lines: int = 30) -> str:
    """The last lines of a log, or "" when there is none."""
    if log_file is None or not log_file.exists():
        return ""
    with open(log_file, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])


def rotate_log(log_file: Path, keep: int = 3) -> None:
    """Move ``x.log`` to ``x.log.1`` (``x.log.1`` to ``x.log.2``, ...), so a restart keeps the log of the crash."""
    if not log_file.exists():
        return
    for n in range(keep - 1, 0, -1):
        older = log_file.with_name(f"{log_file.name}.{n}")
        if older.exists():
            older.replace(log_file.with_name(f"{log_file.name}.{n + 1}"))
    log_file.replace(log_file.with_name(f"{log_file.name}.1"))


def free_port() -> int:
    return free_ports(1)[0]


# Ray's workers take ports from 10002-19999 (its default worker port range); the kernel hands out
# `ip_local_port_range` (32768-60999 here) to every bind to port 0 and every outgoing connection.
QUIET_PORTS_FROM = 20000


def quiet_port_range() -> range:
    """Ports neither Ray's workers nor the kernel hand out by themselves: a port chosen here stays free until the
    server it was chosen for binds it. A port the kernel offered for port 0 did not: Ray's own processes bind port
    0 and connect out by the hundred while a head starts, and one took the runtime-env agent's port before the
    agent bound it (CI of 0cd7365)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(QUIET_PORTS_FROM, low) if low - QUIET_PORTS_FROM >= 1000 else range(0)


def free_ports(n: int, avoid: Iterable[int] = ()) -> list[int]:
    """`n` different free loopback ports, none of `avoid`, drawn at random from `quiet_port_range()` (or offered
    by the OS when that range is too small): all held open while they are chosen, so no two are the same.
    `avoid`: ports chosen earlier for a server that has not bound them yet (a Ray head's dashboard port)."""
    avoid, sockets, chosen = set(avoid), [], []
    quiet = quiet_port_range()
    try:
        for _ in range(50 * n + 100):
            if len(chosen) == n:
                return chosen
            port = random.choice(quiet) if quiet else 0
            if port in avoid:
                continue
            s = socket.socket()
            sockets.append(s)  # held, even when avoided: the OS (port 0) then offers another
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken
                continue
            if s.getsockname()[1] not in avoid:
                chosen.append(s.getsockname()[1])
        if len(chosen) == n:
            return chosen
        raise OSError(f"no {n} free loopback ports found in {quiet or 'the ephemeral range'}")
    finally:
        for s in sockets:
            s.close()


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedProcess:
    """A child process: started in a session of its own, waited for until ``ready()``, stopped with its session.

    Subclasses give ``argv()`` and ``ready()``, and may override ``environment()`` and ``prepare()``
    (folders, files the process needs). A start that fails or times out stops what it started
    and raises with the tail of the log.
    """

    what = "process"
    startup_timeout_s = 60.0
    ready_interval_s = 0.25
    stop_timeout_s = 15.0

    def __init__(self, log_file: Path, cwd: Path | None = None) -> None:
        self.log_file = Path(log_file)
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        # stop() from another thread (a launcher shutting down while its supervisor restarts this) either
        # finds the child started and ends it, or makes the start refuse to begin: never a child nobody owns.
        self._lock = threading.Lock()
        self._stopped = False

    def argv(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """True once the process serves; may raise StartupFailed when waiting cannot help."""
        return True

    def prepare(self) -> None:
        """Before the start: make folders, clear old state."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def start(self, timeout_s: float | None = None):
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self._lock, _signals_held():
            if self._stopped:
                raise StartupFailed(f"{self.what} was stopped before it started")
            self.proc = start_process(self.argv(), env=self.environment(), log_file=self.log_file, cwd=self.cwd)
        try:
            wait_until(self.ready, timeout_s=timeout_s or self.startup_timeout_s, what=self.what, proc=self.proc,
                       log_file=self.log_file, interval_s=self.ready_interval_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            proc = self.proc
        if proc is not None:
            stop_process(proc, timeout_s=self.stop_timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
