"""Run records, version lineage, drift references and the serving pointer, as JSON in the data bucket.

Keys::

    runs/<run_id>.json                      every run: model, trigger events, stages with timings, outcome
    runs/<run_id>.request.json              what a run was asked to do (written before it is submitted)
    models/<model>/versions/<N>.json        lineage of a published version
    models/<model>/stages.json              the stage of every version, and every transition (registry/stages.py)
    models/<model>/policy.yaml              the model's delivery policy, when changed at run time (rollout/policy.py)
    models/<model>/routing.json             what the gateways route by, written by the rollout controller
    models/<model>/reference/<N>.json       drift reference of a version (its training inputs and outputs)
    events/processed/<sha1(event id)>.json  dedupe markers (written once the run is recorded)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from typing import Any

from services.settings import REPO_ROOT
from services.storage import ObjectStore


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


def reference_key(model: str, version: int | str) -> str:
    return f"models/{model}/reference/{version}.json"


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
        return [json.loads(self.store.get_bytes(o.key)) for o in self.store.list("runs/")
                if o.key.endswith(".json") and not o.key.endswith(".request.json")]

    def save_request(self, run_id: str, request: dict) -> None:
        self._put(f"runs/{run_id}.request.json", request)

    def request(self, run_id: str) -> dict | None:
        return self._get(f"runs/{run_id}.request.json")

    # versions
    def save_version(self, model: str, record: dict) -> None:
        self._put(f"models/{model}/versions/{record['version']}.json", record)

    def version(self, model: str, version: int) -> dict | None:
        return self._get(f"models/{model}/versions/{version}.json")

    def versions(self, model: str) -> list[dict]:
        out = [json.loads(self.store.get_bytes(o.key)) for o in self.store.list(f"models/{model}/versions/")
               if o.key.endswith(".json")]
        return sorted(out, key=lambda r: r["version"])

    # drift references
    def save_reference(self, model: str, version: int, reference_json: str) -> None:
        self.store.put_bytes(reference_key(model, version), reference_json.encode())

    def reference(self, model: str, version: int | str) -> bytes | None:
        key = reference_key(model, version)
        return self.store.get_bytes(key) if self.store.exists(key) else None

    # stages
    def stages(self, model: str) -> dict | None:
        return self._get(f"models/{model}/stages.json")

    def save_stages(self, model: str, book: dict) -> None:
        self._put(f"models/{model}/stages.json", book)

    # what the rollout side keeps beside them
    def get_json(self, key: str) -> Any | None:
        return self._get(key)

    def put_json(self, key: str, value: Any) -> None:
        self._put(key, value)

    def get_text(self, key: str) -> str | None:
        return self.store.get_bytes(key).decode() if self.store.exists(key) else None

    def put_text(self, key: str, text: str) -> None:
        self.store.put_bytes(key, text.encode())

    # dedupe
    @staticmethod
    def _event_key(event_id: str) -> str:
        return f"events/processed/{hashlib.sha1(event_id.encode()).hexdigest()}.json"

    def is_processed(self, event_id: str) -> bool:
        return self.store.exists(self._event_key(event_id))

    def mark_processed(self, event_id: str, run_id: str) -> None:
        self._put(self._event_key(event_id), {"event_id": event_id, "run_id": run_id, "at": now()})
        self.release(event_id)

    # claims: an event handed to a run that has not ended yet (a listener killed meanwhile finds it)
    @staticmethod
    def _claim_key(event_id: str) -> str:
        return f"events/claimed/{hashlib.sha1(event_id.encode()).hexdigest()}.json"

    def claim(self, event_id: str, run_id: str) -> None:
        self._put(self._claim_key(event_id), {"event_id": event_id, "run_id": run_id, "at": now()})

    def claim_of(self, event_id: str) -> str | None:
        """The run an event was handed to and which has not been recorded as done, if any."""
        claim = self._get(self._claim_key(event_id))
        return claim["run_id"] if claim else None

    def release(self, event_id: str) -> None:
        self.store.delete(self._claim_key(event_id))
