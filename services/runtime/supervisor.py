"""Keep the launcher's children alive: a crashed Triton or listener is started again, with backoff.

Usage::

    supervisor = Supervisor(settings.launcher, status_file=var / "run" / "processes.json")
    supervisor.watch("triton", stack.new_triton, stack.triton)     # a factory, and the running child
    supervisor.start()                                              # a daemon thread, twice a second
    supervisor.current("triton")                                    # the child now running (a new one after a crash)
    supervisor.stop()                                               # before stopping the children themselves

A child that exits by itself is started again after ``restart_backoff_s``, doubling per crash in a row
up to ``restart_backoff_max_s``; one up for ``stable_after_s`` starts from the first wait again. What
the supervisor sees is kept three ways:

- Prometheus, on the launcher's own endpoint (``launcher.metrics_port``, 127.0.0.1):
  ``rts_process_up{process}`` and ``rts_process_restarts_total{process}``;
- ``processes.json`` beside the run's logs, rewritten on every change and every few seconds, which the
  gateway's ``/healthz`` shows when it runs on the same machine;
- the launcher's log: which child exited, with what code, and when it comes back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prometheus_client import start_http_server

from services.runtime.processes import ManagedProcess, log_tail
from services.settings import LauncherSettings
from services.telemetry.metrics import Metrics
from services.telemetry.supervision import HEARTBEAT_S, write_status

log = logging.getLogger("runtime.supervisor")


@dataclass
class Watched:
    name: str
    factory: Callable[[], ManagedProcess]  # a new, not yet started child
    process: ManagedProcess | None
    restarts: int = 0
    state: str = "up"  # up | restarting | failed
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    up_since: float = field(default_factory=time.time)
    next_try_at: float = 0.0
    crashes_in_a_row: int = 0


class Supervisor:
    def __init__(self, settings: LauncherSettings, status_file: Path | None = None,
                 say: Callable[[str], None] = log.info, interval_s: float = 0.5,
                 on_start: Callable[[str, ManagedProcess], None] | None = None) -> None:
        self.settings = settings
        self.on_start = on_start  # told of every restarted child (the launcher records its pid)
        self.status_file = status_file
        self.say = say
        self.interval_s = interval_s
        self.watched: dict[str, Watched] = {}
        self.metrics = Metrics("prometheus")  # the launcher's own registry, on its own port
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._metrics_server = None
        self._last_write = 0.0

    def watch(self, name: str, factory: Callable[[], ManagedProcess], process: ManagedProcess) -> None:
        with self._lock:
            self.watched[name] = Watched(name, factory, process)
        self.metrics.set("rts_process_up", {"process": name}, 1)
        self.metrics.inc("rts_process_restarts_total", {"process": name}, 0)  # at 0 before the first restart
        self._write_status()

    def current(self, name: str) -> ManagedProcess | None:
        with self._lock:
            entry = self.watched.get(name)
            return entry.process if entry else None

    def status(self) -> dict[str, dict]:
        with self._lock:
            return {
                w.name: {"state": w.state, "pid": w.process.pid if w.process else None, "restarts": w.restarts,
                         "last_exit_code": w.last_exit_code, "last_exit_at": w.last_exit_at,
                         "up_since": w.up_since if w.state == "up" else None}
                for w in self.watched.values()
            }

    def start(self) -> "Supervisor":
        if self.settings.metrics_port:
            self._metrics_server, _ = start_http_server(self.settings.metrics_port, addr="127.0.0.1",
                                                        registry=self.metrics.registry)
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> list[ManagedProcess]:
        """Stop watching; returns every child it knows of (the caller stops them). A restart in progress is
        left to finish or fail on its own: its child is in the list either way, and stop() on it ends it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        if self.status_file is not None and self.watched:  # ours (watch() wrote it), never an earlier one's
            self.status_file.unlink(missing_ok=True)
        with self._lock:
            return [w.process for w in self.watched.values() if w.process is not None]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for entry in list(self.watched.values()):
                try:
                    self._check(entry)
                except Exception:  # a failed restart is retried later; the loop never ends by itself
                    log.exception("supervising %s failed", entry.name)
            if time.time() - self._last_write > HEARTBEAT_S:
                self._write_status()

    def _check(self, entry: Watched) -> None:
        now = time.time()
        if entry.state == "up":
            if entry.process is not None and entry.process.running:
                if entry.crashes_in_a_row and now - entry.up_since > self.settings.stable_after_s:
                    entry.crashes_in_a_row = 0
                return
            code = entry.process.exit_code if entry.process is not None else None
            wait = self._backoff(entry)
            with self._lock:
                entry.state, entry.last_exit_code, entry.last_exit_at = "restarting", code, now
                entry.next_try_at = now + wait
                entry.crashes_in_a_row += 1
            self.metrics.set("rts_process_up", {"process": entry.name}, 0)
            self.say(f"{entry.name} exited (code {code}); restarting in {wait:.0f}s "
                     f"(crash {entry.crashes_in_a_row} in a row)")
            if entry.process is not None and (tail := log_tail(entry.process.log_file, 20)):
                self.say(f"last lines of {entry.process.log_file}:\n{tail}")
            self._write_status()
            return
        if now < entry.next_try_at or self._stop.is_set():
            return
        fresh = entry.factory()
        with self._lock:
            if self._stop.is_set():
                return
            entry.process = fresh  # recorded before it starts: stop() during the start finds and ends it
        try:
            fresh.start()
        except Exception as exc:
            wait = self._backoff(entry)
            with self._lock:
                entry.next_try_at = time.time() + wait
                entry.crashes_in_a_row += 1
            self.say(f"{entry.name} did not come back ({str(exc).splitlines()[0]}); next try in {wait:.0f}s")
            self._write_status()
            return
        with self._lock:
            entry.state, entry.up_since = "up", time.time()
            entry.restarts += 1
        self.metrics.set("rts_process_up", {"process": entry.name}, 1)
        self.metrics.inc("rts_process_restarts_total", {"process": entry.name})
        if self.on_start is not None:
            self.on_start(entry.name, fresh)
        self.say(f"{entry.name} restarted (pid {fresh.pid}, {time.time() - entry.last_exit_at:.1f}s after it exited)")
        self._write_status()

    def _backoff(self, entry: Watched) -> float:
        """1 s, 2 s, 4 s ... per crash in a row, capped."""
        return min(self.settings.restart_backoff_s * 2 ** entry.crashes_in_a_row, self.settings.restart_backoff_max_s)

    def _write_status(self) -> None:
        if self.status_file is None or self._stop.is_set():
            return
        self._last_write = time.time()
        write_status(self.status_file, self.status())
