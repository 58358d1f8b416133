"""Drift watching in the serving path: windowed input/prediction statistics vs the served version's reference.

Each published version stores ``models/<model>/reference/<version>.json`` (ReferenceStats of its
training inputs and outputs) in the data bucket. The watch keeps one DriftMonitor per model for
the version that is answering; when that version changes it loads the new reference (off the
request path) and starts a fresh window. When the window drifts past the thresholds, a retrain
request is written to ``datasets/<model>/requests/`` in the data bucket: the same event path as
new data (folder watcher, S3 -> SQS, GCS -> Pub/Sub), so the listener, dedupe and debounce apply.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from typing import Any

import numpy as np

from services.observability.drift import DriftMonitor, DriftTrigger, ReferenceStats
from services.observability.tracing import current_traceparent

log = logging.getLogger(__name__)


def reference_key(model: str, version: int | str) -> str:
    return f"models/{model}/reference/{version}.json"


class DriftWatch:
    def __init__(self, data_uri: str, *, window: int = 500, cooldown_s: float = 600.0, check_every: int = 250,
                 retry_missing_s: float = 60.0) -> None:
        self.data_uri = data_uri
        self.window, self.cooldown_s, self.check_every = window, cooldown_s, check_every
        self.triggers: dict[str, tuple[str, DriftTrigger]] = {}
        self._loading: set[tuple[str, str]] = set()
        self._missing: dict[tuple[str, str], float] = {}  # no reference yet: do not look again before then
        self.retry_missing_s = retry_missing_s
        self._rows = 0
        self._checking = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-check")
        self._lock = threading.Lock()
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from services.storage import open_store

            self._store = open_store(self.data_uri)
        return self._store

    def observe(self, model: str, version: str, features: np.ndarray, scores: np.ndarray) -> None:
        current = self.triggers.get(model)
        if current is None or current[0] != version:
            self._load_async(model, version)
            return
        trigger = current[1]
        added = trigger.monitor.observe(features, scores)
        with self._lock:
            self._rows += added
            due = self._rows >= self.check_every and not self._checking
            if due:
                self._rows, self._checking = 0, True
        if due:
            # The check (PSI, KS, ~10 ms) runs off the event loop so requests never wait for it.
            self._executor.submit(self._check, trigger)

    def _check(self, trigger: DriftTrigger) -> None:
        try:
            trigger.check()
        except Exception:
            log.exception("drift check failed")
        finally:
            with self._lock:
                self._checking = False

    def report(self, model: str) -> dict[str, Any] | None:
        current = self.triggers.get(model)
        if current is None:
            return None
        return {"model": model, "version": current[0], **current[1].monitor.report()}

    def _load_async(self, model: str, version: str) -> None:
        with self._lock:
            if (model, version) in self._loading or self._missing.get((model, version), 0) > time.monotonic():
                return
            self._loading.add((model, version))
        threading.Thread(target=self._load, args=(model, version), daemon=True).start()

    def _load(self, model: str, version: str) -> None:
        try:
            key = reference_key(model, version)
            if not self.store.exists(key):
                log.warning("no drift reference %s; drift is not watched for this version", key)
                self._missing[(model, version)] = time.monotonic() + self.retry_missing_s
                return
            reference = ReferenceStats.from_json(self.store.get_bytes(key))
            trigger = DriftTrigger(DriftMonitor(reference, self.window), model,
                                   lambda event: self._emit(model, event), cooldown_s=self.cooldown_s,
                                   check_every=self.check_every)
            self.triggers[model] = (version, trigger)
            log.info("watching drift of %s version %s", model, version)
        except Exception:
            log.exception("could not load the drift reference of %s version %s", model, version)
        finally:
            with self._lock:
                self._loading.discard((model, version))

    def _emit(self, model: str, event: dict) -> None:
        event.setdefault("traceparent", current_traceparent())
        key = f"datasets/{model}/requests/{event['id']}.json"
        metadata = {"traceparent": event["traceparent"]} if event.get("traceparent") else None
        # Off the request path: a bucket write can take a while on a cloud store.
        threading.Thread(target=self.store.put_bytes, args=(key, json.dumps(event, default=str).encode()),
                         kwargs={"metadata": metadata}, daemon=True).start()
        log.warning("input drift on %s: retrain requested (%s)", model, key)
