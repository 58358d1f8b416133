"""Drift watching in the serving path: windowed statistics of served traffic vs the served version's reference.

Each published version stores its drift reference (``models/<model>/reference/<version>.json``,
``services.registry.records``). The watch keeps one DriftMonitor per model and version that
answers (or sees mirrored traffic), loading its reference off the request path the first time.
When the production version's window drifts past the thresholds, a retrain request is written to
``datasets/<model>/requests/`` in the data bucket: the same event path as new data (folder watcher,
S3 -> SQS, GCS -> Pub/Sub), so the listener, dedupe and debounce apply. A drift request with no new
data since the serving version is recorded by its run as skipped, with an alert: drift alone never
publishes a version. A challenger's drift (its largest PSI, ``max_psi``) is one of the SLOs the
rollout controller judges it on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from services.modelkit import ModelPackage
from services.registry.records import Records
from services.retraining.requests import retrain_request, write_request
from services.telemetry import metrics
from services.telemetry.drift import DriftMonitor, DriftTrigger, ReferenceStats

log = logging.getLogger(__name__)


class DriftWatch:
    """Feeds served batches to per-model DriftTriggers, entirely off the request path.

    ``observe`` (on the request path) only appends the batch to a bounded queue. One background
    thread drains it every ``ingest_interval_s`` (the model's drift values and one window update for
    many requests instead of one per request) and runs a check when ``check_every`` rows have come in,
    at most once per ``min_check_interval_s``: a check (PSI and KS on the window) costs milliseconds
    of CPU, and counting rows alone would make that cost grow with the load.
    """

    def __init__(self, records: Records, models: dict[str, ModelPackage], *, window: int = 500,
                 cooldown_s: float = 600.0, check_every: int = 250, min_check_interval_s: float = 2.0,
                 ingest_interval_s: float = 0.25, max_queued: int = 10_000, retry_missing_s: float = 60.0,
                 is_production: Callable[[str, str], bool] = lambda model, version: True) -> None:
        self.records, self.models, self.is_production = records, models, is_production
        self.window, self.cooldown_s, self.check_every = window, cooldown_s, check_every
        self.min_check_interval_s, self.ingest_interval_s = min_check_interval_s, ingest_interval_s
        self.retry_missing_s = retry_missing_s
        self.triggers: dict[tuple[str, str], DriftTrigger] = {}
        self.answering: dict[str, str] = {}  # model -> the version that answered last (what /drift shows)
        self._loading: set[tuple[str, str]] = set()
        self._missing: dict[tuple[str, str], float] = {}  # no reference yet: do not look again before then
        # Oldest batches are dropped if the worker falls behind: the window is a sample anyway.
        self._queue: deque[tuple[str, DriftTrigger, np.ndarray, np.ndarray]] = deque(maxlen=max_queued)
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def observe(self, model: str, version: str, rows: np.ndarray, outputs: dict[str, np.ndarray],
                answered: bool = True) -> None:
        """A served batch (or, `answered=False`, a mirrored one) of `version`: queued, nothing computed here."""
        if answered:
            self.answering[model] = version
        trigger = self.triggers.get((model, version))
        if trigger is None:
            self._load_async(model, version)
            return
        package = self.models[model]
        self._queue.append((model, trigger, rows, outputs[package.family.config.outputs[0].name]))
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="drift-watch", daemon=True)
                    self._worker.start()
        if not self._wake.is_set():
            self._wake.set()

    def _work(self) -> None:
        # scipy.stats (the checks' tests) costs half a second to import: not before a new replica's first request
        # (a cold start), and not in the middle of the first check; here, once traffic has begun.
        self._wake.wait()
        import scipy.stats  # noqa: F401
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
                current = set(self.triggers.values())
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
        batches: dict[DriftTrigger, tuple[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
        while self._queue:
            model, trigger, rows, output = self._queue.popleft()
            batches.setdefault(trigger, (model, []))[1].append((rows, output))
        added = {}
        for trigger, (model, items) in batches.items():
            package = self.models[model]
            added[trigger] = 0
            for rows, output in _stackable(items):
                try:
                    values = package.drift_values(rows)
                except Exception:  # rows this package cannot read: a schema problem, not a crash
                    trigger.monitor.observe_schema_violation("wrong_shape", len(rows))
                    continue
                added[trigger] += trigger.monitor.observe(values, output)
        return added

    def report(self, model: str, version: str | None = None) -> dict[str, Any] | None:
        version = version or self.answering.get(model)
        trigger = self.triggers.get((model, version)) if version is not None else None
        if trigger is None:
            return None
        return {"model": model, "version": version, **trigger.monitor.report()}

    def max_psi(self, model: str, version: str) -> float | None:
        """The largest PSI of a version's window (None before it holds min_samples rows)."""
        trigger = self.triggers.get((model, version))
        if trigger is None:
            return None
        report = trigger.monitor.report()
        scores = [v for k, v in report.get("scores", {}).items() if k.startswith("psi_")]
        return max(scores) if report.get("ready") and scores else None

    def _load_async(self, model: str, version: str) -> None:
        with self._lock:
            if (model, version) in self._loading or self._missing.get((model, version), 0) > time.monotonic():
                return
            self._loading.add((model, version))
        threading.Thread(target=self._load, args=(model, version), daemon=True).start()

    def _load(self, model: str, version: str) -> None:
        try:
            text = self.records.reference(model, version)
            if text is None:
                log.warning("no drift reference for %s version %s; drift is not watched for it", model, version)
                self._missing[(model, version)] = time.monotonic() + self.retry_missing_s
                return
            self.triggers[(model, version)] = DriftTrigger(
                DriftMonitor(ReferenceStats.from_json(text), self.window), model,
                lambda report: self._request_retraining(model, version, report), cooldown_s=self.cooldown_s,
                check_every=self.check_every,
                # The drift gauges are production's: a challenger's window is judged by the rollout instead.
                on_report=lambda m, report: metrics.set_drift(m, report) if self.is_production(m, version) else None)
            log.info("watching drift of %s version %s", model, version)
        except Exception:
            log.exception("could not load the drift reference of %s version %s", model, version)
        finally:
            with self._lock:
                self._loading.discard((model, version))

    def _request_retraining(self, model: str, version: str, report: dict) -> None:
        if not self.is_production(model, version):
            return  # a challenger's drift is a rollout SLO (max_psi), not a reason to retrain
        slim = {k: v for k, v in report.items() if k not in ("feature_shift", "thresholds")}
        event = retrain_request(model, "drift", source="rts/drift", extra={"report": slim})
        key = write_request(self.records.store, event, background=True)
        metrics.record_drift_trigger(model)
        log.warning("input drift on %s: retrain requested (%s)", model, key)


def _stackable(items: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """One batch when every item has the same row shape (the usual case), else the items one by one."""
    try:
        return [(np.concatenate([np.asarray(r) for r, _ in items]), np.concatenate([np.asarray(o) for _, o in items]))]
    except ValueError:
        return items
