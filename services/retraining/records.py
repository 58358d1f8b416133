"""Run records, version lineage and the serving pointer, kept as JSON in the data bucket.

Keys::

    runs/<run_id>.json                     every run: trigger events, stages with timings, outcome
    models/digits/versions/<N>.json        lineage of a published version
    models/digits/serving.json             which version serves, and the history of switches
    events/processed/<sha1(event id)>.json dedupe markers (written once the run is recorded)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from typing import Any

from services.common.settings import REPO_ROOT
from services.storage import ObjectStore

MODEL_PREFIX = "models/digits"


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return "unknown"


class Records:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def _put(self, key: str, value: Any) -> None:
        self.store.put_bytes(key, json.dumps(value, indent=2, default=str).encode())

    def _get(self, key: str) -> Any | None:
        return json.loads(self.store.get_bytes(key)) if self.store.exists(key) else None

    # runs
    def save_run(self, run: dict) -> None:
        self._put(f"runs/{run['run_id']}.json", run)

    def run(self, run_id: str) -> dict | None:
        return self._get(f"runs/{run_id}.json")

    def runs(self) -> list[dict]:
        return [json.loads(self.store.get_bytes(o.key)) for o in self.store.list("runs/") if o.key.endswith(".json")]

    # versions
    def save_version(self, record: dict) -> None:
        self._put(f"{MODEL_PREFIX}/versions/{record['version']}.json", record)

    def version(self, version: int) -> dict | None:
        return self._get(f"{MODEL_PREFIX}/versions/{version}.json")

    def versions(self) -> list[dict]:
        out = [json.loads(self.store.get_bytes(o.key)) for o in self.store.list(f"{MODEL_PREFIX}/versions/")
               if o.key.endswith(".json")]
        return sorted(out, key=lambda r: r["version"])

    # serving pointer
    def serving(self) -> dict:
        return self._get(f"{MODEL_PREFIX}/serving.json") or {"version": None, "history": []}

    def set_serving(self, version: int, reason: str, run_id: str | None = None) -> None:
        state = self.serving()
        state["history"].append({"version": version, "at": now(), "reason": reason, "run_id": run_id})
        state.update(version=version, since=now())
        self._put(f"{MODEL_PREFIX}/serving.json", state)

    # dedupe
    @staticmethod
    def _event_key(event_id: str) -> str:
        return f"events/processed/{hashlib.sha1(event_id.encode()).hexdigest()}.json"

    def is_processed(self, event_id: str) -> bool:
        return self.store.exists(self._event_key(event_id))

    def mark_processed(self, event_id: str, run_id: str) -> None:
        self._put(self._event_key(event_id), {"event_id": event_id, "run_id": run_id, "at": now()})
