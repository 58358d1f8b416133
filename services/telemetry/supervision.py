"""The launcher's report on the processes it supervises (Triton, the listener), for ``/healthz``.

``rts up`` (services.runtime.supervisor) rewrites ``<var_dir>/run/processes.json`` on every change and
at least every ``HEARTBEAT_S``; the gateway on the same machine shows it in ``/healthz``. Where no
launcher runs (Kubernetes, an external Triton) the file is absent and ``/healthz`` shows nothing of it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from services.settings import Settings

HEARTBEAT_S = 5.0  # a file older than three heartbeats is stale: its launcher is gone


def status_path(settings: Settings) -> Path:
    return settings.var_dir / "run" / "processes.json"


def write_status(path: Path, processes: dict[str, dict]) -> None:
    body = {"launcher_pid": os.getpid(), "updated_at": time.time(), "processes": processes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)


def read_status(path: Path) -> dict[str, dict] | None:
    """The supervised processes as the launcher last wrote them; None when no launcher keeps it fresh."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if time.time() - body.get("updated_at", 0) > 3 * HEARTBEAT_S:
        return None
    return body.get("processes")
