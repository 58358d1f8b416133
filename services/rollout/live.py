"""What a gateway replica sees of each live version, sent to the rollout controller about once a second.

On the request path only counters and list appends happen (``request``, ``shadow``,
``prediction``); a reporter thread swaps the buffers and hands them to the controller with one
fire-and-forget actor call. The recent predictions also stay here for a while, so feedback that
arrives at this replica right after its request joins at once::

    live = LiveStats(replica="ingress-1")
    live.request("churn", "3", ok=True, latency_s=0.004)
    live.shadow("churn", "4", ok=True, latency_s=0.005, disagree=False)
    live.prediction(request_id, "churn", "3", predicted=["stays"])
    Reporter(live, controller, drift_of).start()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

log = logging.getLogger(__name__)


MAX_ROW_BYTES = 64 * 1024


def _empty() -> dict:
    return {"requests": 0, "errors": 0, "latencies_ms": [], "shadow_requests": 0, "shadow_errors": 0,
            "shadow_disagreements": 0, "shadow_latencies_ms": [], "shadow_skipped": 0}


class LiveStats:
    def __init__(self, replica: str, max_latencies: int = 5000, recent: int = 20_000) -> None:
        self.replica = replica
        self.max_latencies = max_latencies
        self._versions: dict[tuple[str, str], dict] = {}
        self._predictions: list[tuple] = []
        self._recent: OrderedDict[str, tuple] = OrderedDict()  # request id -> (model, version, predicted, time, rows)
        self._recent_max = recent
        self._lock = threading.Lock()

    def _slot(self, model: str, version: str) -> dict:
        slot = self._versions.get((model, version))
        if slot is None:
            slot = self._versions[(model, version)] = _empty()
        return slot

    def request(self, model: str, version: str, ok: bool, latency_s: float) -> None:
        slot = self._slot(model, version)
        slot["requests"] += 1
        if not ok:
            slot["errors"] += 1
        elif len(slot["latencies_ms"]) < self.max_latencies:
            slot["latencies_ms"].append(latency_s * 1000)

    def shadow(self, model: str, version: str, ok: bool, latency_s: float, disagree: bool | None) -> None:
        slot = self._slot(model, version)
        slot["shadow_requests"] += 1
        if not ok:
            slot["shadow_errors"] += 1
            return
        if disagree:
            slot["shadow_disagreements"] += 1
        if len(slot["shadow_latencies_ms"]) < self.max_latencies:
            slot["shadow_latencies_ms"].append(latency_s * 1000)

    def shadow_skipped(self, model: str, version: str) -> None:
        self._slot(model, version)["shadow_skipped"] += 1

    def prediction(self, request_id: str, model: str, version: str, predicted: list, rows: Any = None) -> None:
        """What `version` answered to `request_id`; `rows` (the ensemble's input) make its feedback training data,
        kept only when small (at most ``MAX_ROW_BYTES`` per request)."""
        if rows is not None and getattr(rows, "nbytes", MAX_ROW_BYTES + 1) > MAX_ROW_BYTES:
            rows = None
        record = (request_id, model, version, predicted, time.time(), rows)
        self._predictions.append(record)
        self._recent[request_id] = record[1:]
        if len(self._recent) > self._recent_max:
            self._recent.popitem(last=False)

    def recent(self, request_id: str) -> tuple | None:
        """(model, version, predicted per row, time, rows or None) of a request this replica answered lately."""
        return self._recent.get(request_id)

    def take(self) -> dict[str, Any] | None:
        """Everything since the last call, or None when nothing happened."""
        with self._lock:
            versions, self._versions = self._versions, {}
            predictions, self._predictions = self._predictions, []
        if not versions and not predictions:
            return None
        by_model: dict[str, dict[str, dict]] = {}
        # list(): the request path (the event loop's thread) may still touch the dict it had in hand.
        for (model, version), slot in list(versions.items()):
            by_model.setdefault(model, {})[version] = slot
        return {"replica": self.replica, "at": time.time(), "versions": by_model, "predictions": predictions}


class Reporter:
    """Sends LiveStats to the controller every `interval_s`; drift of challengers every `drift_every_s`.

    `send(snapshot)` is a fire-and-forget call (an actor's ``report.remote``); `drift_of(model,
    version)` gives the largest PSI of a version's drift window (or None), asked only for the
    versions `watched()` names (the challengers and their production), because a drift check costs milliseconds.
    """

    def __init__(self, live: LiveStats, send: Callable[[dict], Any],
                 watched: Callable[[], list[tuple[str, str]]] = list,
                 drift_of: Callable[[str, str], float | None] = lambda m, v: None,
                 interval_s: float = 1.0, drift_every_s: float = 5.0) -> None:
        self.live, self.send, self.watched, self.drift_of = live, send, watched, drift_of
        self.interval_s, self.drift_every_s = interval_s, drift_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Reporter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rollout-reporter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        last_drift = 0.0
        while not self._stop.wait(self.interval_s):
            try:
                snapshot = self.live.take()
                if time.monotonic() - last_drift >= self.drift_every_s:
                    last_drift = time.monotonic()
                    drift = {}
                    for model, version in self.watched():
                        psi = self.drift_of(model, version)
                        if psi is not None:
                            drift.setdefault(model, {})[version] = psi
                    if drift:
                        snapshot = snapshot or {"replica": self.live.replica, "at": time.time(), "versions": {},
                                                "predictions": []}
                        snapshot["drift"] = drift
                if snapshot is not None:
                    self.send(snapshot)
            except Exception:  # the controller away (restarting): the next report carries on
                log.exception("could not report live stats to the rollout controller")
