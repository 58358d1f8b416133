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
import time
from collections import deque
from typing import Any

import numpy as np

from services.observability.drift import DriftMonitor, DriftTrigger, ReferenceStats
from services.observability.tracing import current_traceparent

log = logging.getLogger(__name__)


def reference_key(model: str, version: int | str) -> str:
    return f"models/{model}/reference/{version}.json"


class DriftWatch:
    """Feeds served batches to per-model DriftTriggers, entirely off the request path.

    ``observe`` (on the request path) only appends the batch to a bounded queue. One background
    thread drains it every ``ingest_interval_s`` (one vectorized window update for many requests
    instead of one per request) and runs a check when ``check_every`` rows have come in, at most
    once per ``min_check_interval_s``: a check (PSI and KS on the window) costs 10-30 ms of CPU, and
    counting rows alone would make that cost grow with the load.
    """

    def __init__(self, data_uri: str, *, window: int = 500, cooldown_s: float = 600.0, check_every: int = 250,
                 min_check_interval_s: float = 2.0, ingest_interval_s: float = 0.25, max_queued: int = 10_000,
                 retry_missing_s: float = 60.0) -> None:
        self.data_uri = data_uri
        self.window, self.cooldown_s, self.check_every = window, cooldown_s, check_every
        self.min_check_interval_s, self.ingest_interval_s = min_check_interval_s, ingest_interval_s
        self.retry_missing_s = retry_missing_s
        self.triggers: dict[str, tuple[str, DriftTrigger]] = {}
        self._loading: set[tuple[str, str]] = set()
        self._missing: dict[tuple[str, str], float] = {}  # no reference yet: do not look again before then
        # Oldest batches are dropped if the worker falls behind: the window is a sample anyway.
        self._queue: deque[tuple[DriftTrigger, np.ndarray, np.ndarray]] = deque(maxlen=max_queued)
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
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
        self._queue.append((current[1], features, scores))
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="drift-watch", daemon=True)
                    self._worker.start()
        if not self._wake.is_set():
            self._wake.set()

    def _work(self) -> None:
        since_check: dict[DriftTrigger, int] = {}
        last_check = -self.min_check_interval_s
        while True:
            wait_s = None
            if any(n >= self.check_every for n in since_check.values()):
                wait_s = max(0.0, last_check + self.min_check_interval_s - time.monotonic())
            if self._wake.wait(wait_s):
                time.sleep(self.ingest_interval_s)  # let a batch gather
                self._wake.clear()
            try:
                for trigger, added in self._ingest().items():
                    since_check[trigger] = since_check.get(trigger, 0) + added
                current = {t for _, t in self.triggers.values()}
                for stale in [t for t in since_check if t not in current]:  # a version that stopped serving
                    del since_check[stale]
                if time.monotonic() - last_check < self.min_check_interval_s:
                    continue
                due = [t for t, n in since_check.items() if n >= self.check_every]
                if due:
                    last_check = time.monotonic()
                for trigger in due:
                    since_check[trigger] = 0
                    trigger.check()
            except Exception:
                log.exception("drift watch failed; carrying on")

    def _ingest(self) -> dict[DriftTrigger, int]:
        """Move every queued batch into its model's window; rows added per trigger."""
        batches: dict[DriftTrigger, list[tuple[np.ndarray, np.ndarray]]] = {}
        while self._queue:
            trigger, features, scores = self._queue.popleft()
            batches.setdefault(trigger, []).append((features, scores))
        added = {}
        for trigger, items in batches.items():
            try:
                features = np.concatenate([np.atleast_2d(f) for f, _ in items])
                scores = np.concatenate([np.atleast_2d(p) for _, p in items])
            except ValueError:  # shapes differ: let the monitor count the bad ones one batch at a time
                added[trigger] = sum(trigger.monitor.observe(f, p) for f, p in items)
                continue
            added[trigger] = trigger.monitor.observe(features, scores)
        return added

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
