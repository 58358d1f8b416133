"""Data drift: reference statistics from training, a sliding-window monitor, and a retraining trigger.

Usage::

    ref = ReferenceStats.from_training(features, probabilities)   # (n, 64) on 0..16, (n, 10)
    store.put_bytes(f"lineage/{version}/reference_stats.json", ref.to_json().encode())

    monitor = DriftMonitor(ReferenceStats.from_json(text), window_size=500)
    trigger = DriftTrigger(monitor, model="digits", emit=publish_event, cooldown_s=3600)
    trigger.observe(features_batch, probabilities_batch)   # per request; checks every `check_every` rows
    monitor.observe_schema_violation("wrong_shape")        # where preprocessing rejects an input

What the report compares (recent window vs. the training reference):

- ``feature_shift``: per-feature standardized mean difference ``(mean_w - mean_ref) / std_ref``;
  ``max_abs_feature_z`` is its largest magnitude;
- PSI (population stability index) of the pixel-intensity histogram, of the per-image mean
  intensity (reference deciles as bins), of the predicted classes and of the confidence;
- a chi-square test of the predicted classes and two-sample Kolmogorov–Smirnov statistics
  (``scipy.stats.ks_2samp``) of pixel intensities and per-image means against a stored reference sample;
- schema skew: counts of wrong shapes / out-of-range values (those rows never enter the window).

``drifted`` is true once the window holds ``min_samples`` images and any PSI named in
``DriftThresholds`` is over its limit (0.2 by default: the usual "significant shift" level), or an
optional KS / feature-shift limit is exceeded. Values are what the model sees: features after
preprocessing. The digits preprocessing normalizes polarity and contrast, so an inverted or
brightened upload reaches the model undrifted; noise, blur, other glyphs and a changed class mix do not.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence

import numpy as np

VALUE_MIN, VALUE_MAX = 0.0, 16.0
PIXEL_EDGES = np.linspace(VALUE_MIN, VALUE_MAX, 9)  # 8 bins of width 2
CONFIDENCE_EDGES = np.array([0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])
PSI_EPS = 1e-4
REFERENCE_SAMPLE = 2000  # per-image means kept for KS
REFERENCE_PIXEL_SAMPLE = 8000  # pixel values kept for KS


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=np.float64), eps, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), eps, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def _class_proportions(predicted: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(predicted, minlength=n_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


@dataclass
class ReferenceStats:
    """What serving traffic is compared with; JSON-serializable, stored next to a version's lineage."""

    n_samples: int
    feature_mean: list[float]
    feature_std: list[float]
    feature_min: list[float]
    feature_max: list[float]
    pixel_edges: list[float]
    pixel_hist: list[float]
    image_mean_edges: list[float]  # reference deciles, outer edges open
    image_mean_hist: list[float]
    class_dist: list[float]
    confidence_edges: list[float]
    confidence_hist: list[float]
    image_mean_sample: list[float]
    pixel_sample: list[float]
    meta: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_mean)

    @property
    def n_classes(self) -> int:
        return len(self.class_dist)

    @classmethod
    def from_training(cls, features: np.ndarray, probabilities: np.ndarray, *, meta: Mapping | None = None,
                      seed: int = 0) -> "ReferenceStats":
        """From the rows a version was trained (or validated) on and the model's probabilities on them.

        Prefer probabilities on held-out rows: on training rows the model is overconfident, so the
        confidence histogram would call healthy traffic drifted.
        """
        x = np.asarray(features, dtype=np.float64)
        p = np.asarray(probabilities, dtype=np.float64)
        if x.ndim != 2 or p.ndim != 2 or len(x) != len(p) or len(x) < 20:
            raise ValueError(f"need features (n, d) and probabilities (n, k) with the same n >= 20, "
                             f"got {x.shape} and {p.shape}")
        rng = np.random.default_rng(seed)
        image_means = x.mean(axis=1)
        inner = np.unique(np.quantile(image_means, np.linspace(0.1, 0.9, 9)))
        mean_edges = np.concatenate([[VALUE_MIN], inner, [VALUE_MAX]])
        pixels = x.ravel()
        pixel_sample = rng.choice(pixels, size=min(REFERENCE_PIXEL_SAMPLE, len(pixels)), replace=False)
        mean_sample = rng.choice(image_means, size=min(REFERENCE_SAMPLE, len(image_means)), replace=False)
        confidence = p.max(axis=1)

        def r(a) -> list[float]:
            return [round(float(v), 6) for v in np.asarray(a).ravel()]

        return cls(
            n_samples=int(len(x)),
            feature_mean=r(x.mean(axis=0)), feature_std=r(x.std(axis=0)),
            feature_min=r(x.min(axis=0)), feature_max=r(x.max(axis=0)),
            pixel_edges=r(PIXEL_EDGES), pixel_hist=r(_proportions(pixels, PIXEL_EDGES)),
            image_mean_edges=r(mean_edges), image_mean_hist=r(_proportions(image_means, mean_edges)),
            class_dist=r(_class_proportions(p.argmax(axis=1), p.shape[1])),
            confidence_edges=r(CONFIDENCE_EDGES), confidence_hist=r(_proportions(confidence, CONFIDENCE_EDGES)),
            image_mean_sample=[round(float(v), 4) for v in mean_sample],
            pixel_sample=[round(float(v), 3) for v in pixel_sample],
            meta=dict(meta or {}),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ReferenceStats":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class DriftThresholds:
    """Limits above which the window is drifted; None switches a check off."""

    psi_pixel_intensity: float | None = 0.2
    psi_image_mean: float | None = 0.2
    psi_predicted_class: float | None = 0.2
    psi_confidence: float | None = 0.25
    ks_image_mean: float | None = None  # KS D statistic, e.g. 0.3
    max_abs_feature_z: float | None = None  # standardized mean difference, e.g. 1.5
    min_samples: int = 200


class DriftMonitor:
    """Sliding window of the last ``window_size`` images; thread-safe (Serve runs requests concurrently)."""

    def __init__(self, reference: ReferenceStats, window_size: int = 500,
                 thresholds: DriftThresholds = DriftThresholds()) -> None:
        if window_size < thresholds.min_samples:
            raise ValueError(f"window_size {window_size} is smaller than min_samples {thresholds.min_samples}: "
                             "the monitor could never decide")
        self.reference = reference
        self.window_size = window_size
        self.thresholds = thresholds
        d, k = reference.n_features, reference.n_classes
        self._x = np.zeros((window_size, d), dtype=np.float32)
        self._p = np.zeros((window_size, k), dtype=np.float32)
        self._next = 0
        self._filled = 0
        self._seen = 0
        self._schema: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ref = {
            "mean": np.asarray(reference.feature_mean), "std": np.asarray(reference.feature_std),
            "pixel_edges": np.asarray(reference.pixel_edges), "pixel_hist": np.asarray(reference.pixel_hist),
            "mean_edges": np.asarray(reference.image_mean_edges),
            "mean_hist": np.asarray(reference.image_mean_hist),
            "class": np.asarray(reference.class_dist),
            "conf_edges": np.asarray(reference.confidence_edges), "conf_hist": np.asarray(reference.confidence_hist),
            "mean_sample": np.asarray(reference.image_mean_sample),
            "pixel_sample": np.asarray(reference.pixel_sample),
        }

    @property
    def samples(self) -> int:
        return self._filled

    @property
    def seen(self) -> int:
        """Images observed since the start (not only those in the window)."""
        return self._seen

    def observe_schema_violation(self, kind: str, count: int = 1) -> None:
        """An input rejected or repaired before the model: ``wrong_shape``, ``out_of_range``, ``not_a_number``..."""
        with self._lock:
            self._schema[kind] += count

    def observe(self, features: np.ndarray, probabilities: np.ndarray) -> int:
        """Add a served batch; rows with a wrong shape or values outside 0..16 are counted, not added.

        Returns the number of rows added.
        """
        x = np.asarray(features, dtype=np.float32)
        p = np.asarray(probabilities, dtype=np.float32)
        d, k = self.reference.n_features, self.reference.n_classes
        if x.ndim == 1:
            x = x[None, :]
        if p.ndim == 1:
            p = p[None, :]
        if x.ndim != 2 or x.shape[1] != d or p.ndim != 2 or p.shape[1] != k or len(x) != len(p):
            self.observe_schema_violation("wrong_shape", max(1, len(x)))
            return 0
        bad_number = ~np.isfinite(x).all(axis=1)
        out_of_range = ~bad_number & ((x < VALUE_MIN - 1e-3) | (x > VALUE_MAX + 1e-3)).any(axis=1)
        keep = ~(bad_number | out_of_range)
        with self._lock:
            if bad_number.any():
                self._schema["not_a_number"] += int(bad_number.sum())
            if out_of_range.any():
                self._schema["out_of_range"] += int(out_of_range.sum())
            x, p = x[keep], p[keep]
            n = len(x)
            if n > self.window_size:
                x, p = x[-self.window_size:], p[-self.window_size:]
            m = len(x)
            first = min(m, self.window_size - self._next)  # ring buffer: fill to the end, wrap the rest
            self._x[self._next:self._next + first] = x[:first]
            self._p[self._next:self._next + first] = p[:first]
            if m > first:
                self._x[:m - first] = x[first:]
                self._p[:m - first] = p[first:]
            self._next = (self._next + m) % self.window_size
            self._filled = min(self.window_size, self._filled + m)
            self._seen += n
            return n

    def reset(self) -> None:
        """Empty the window (after a new version starts serving, compare it with its own reference)."""
        with self._lock:
            self._next = self._filled = 0
            self._schema.clear()

    def report(self) -> dict[str, Any]:
        from scipy import stats

        with self._lock:
            x = self._x[:self._filled].astype(np.float64)
            p = self._p[:self._filled].astype(np.float64)
            schema = dict(self._schema)
            seen = self._seen
        ref, t = self._ref, self.thresholds
        n = len(x)
        report: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "samples": n, "seen": seen, "window_size": self.window_size, "min_samples": t.min_samples,
            "ready": n >= t.min_samples, "schema_violations": schema, "drifted": False, "reasons": [],
            "reference": {"n_samples": self.reference.n_samples, **self.reference.meta},
            "thresholds": asdict(t),
        }
        if n == 0:
            report["scores"] = {}
            return report
        # A floor on the std: pixels that are (almost) always blank in training would turn any ink there
        # into an infinite z; half an intensity step keeps them meaningful.
        shift = (x.mean(axis=0) - ref["mean"]) / np.maximum(ref["std"], 0.5)
        pixels, image_means = x.ravel(), x.mean(axis=1)
        predicted = p.argmax(axis=1)
        class_props = _class_proportions(predicted, len(ref["class"]))
        expected = np.clip(ref["class"], PSI_EPS, None)
        expected = expected / expected.sum() * n
        chi2 = stats.chisquare(np.bincount(predicted, minlength=len(ref["class"])), expected)
        ks_pixels = stats.ks_2samp(pixels, ref["pixel_sample"])
        ks_means = stats.ks_2samp(image_means, ref["mean_sample"])
        scores = {
            "psi_pixel_intensity": psi(ref["pixel_hist"], _proportions(pixels, ref["pixel_edges"])),
            "psi_image_mean": psi(ref["mean_hist"], _proportions(image_means, ref["mean_edges"])),
            "psi_predicted_class": psi(ref["class"], class_props),
            "psi_confidence": psi(ref["conf_hist"], _proportions(p.max(axis=1), ref["conf_edges"])),
            "ks_pixel_intensity": float(ks_pixels.statistic),
            "ks_image_mean": float(ks_means.statistic),
            "max_abs_feature_z": float(np.abs(shift).max()),
        }
        report["scores"] = {k: round(v, 6) for k, v in scores.items()}
        report["p_values"] = {"chi2_predicted_class": float(chi2.pvalue), "ks_pixel_intensity": float(ks_pixels.pvalue),
                              "ks_image_mean": float(ks_means.pvalue)}
        report["feature_shift"] = [round(float(v), 4) for v in shift]
        report["predicted_class_distribution"] = [round(float(v), 4) for v in class_props]
        report["mean_confidence"] = round(float(p.max(axis=1).mean()), 4)
        if report["ready"]:
            for name, limit in asdict(t).items():
                if name == "min_samples" or limit is None:
                    continue
                if scores[name] > limit:
                    report["reasons"].append(f"{name} {scores[name]:.3f} > {limit:g}")
            report["drifted"] = bool(report["reasons"])
        return report


Emit = Callable[[dict], Any]


class DriftTrigger:
    """Turns a drifted report into one ``rts.retrain.requested`` CloudEvent per cooldown.

    ``emit(event)`` is called synchronously in the caller's thread; give it something quick
    (append to the local event folder, a Pub/Sub publish future) or wrap it in an executor.
    """

    def __init__(self, monitor: DriftMonitor, model: str, emit: Emit, *, cooldown_s: float = 3600.0,
                 check_every: int = 100, clock: Callable[[], float] = time.monotonic,
                 publish_metrics: bool = True) -> None:
        self.monitor, self.model, self.emit = monitor, model, emit
        self.cooldown_s, self.check_every = cooldown_s, max(1, check_every)
        self.clock = clock
        self.publish_metrics = publish_metrics
        self.last_fired: float | None = None
        self.history: list[dict] = []  # the reports check() computed, for plot_drift
        self._since_check = 0
        self._lock = threading.Lock()

    def observe(self, features: np.ndarray, probabilities: np.ndarray) -> dict | None:
        """Feed a served batch; every ``check_every`` rows run ``check()``. Returns the event if one fired."""
        added = self.monitor.observe(features, probabilities)
        with self._lock:
            self._since_check += added
            due = self._since_check >= self.check_every
            if due:
                self._since_check = 0
        return self.check() if due else None

    def check(self) -> dict | None:
        report = self.monitor.report()
        self.history.append(report)
        del self.history[:-1000]
        if self.publish_metrics:
            from services.observability import metrics

            metrics.set_drift(self.model, report)
        if not report["drifted"]:
            return None
        with self._lock:
            now = self.clock()
            if self.last_fired is not None and now - self.last_fired < self.cooldown_s:
                return None
            self.last_fired = now
        event = retrain_event(self.model, report)
        if self.publish_metrics:
            from services.observability import metrics

            metrics.record_drift_trigger(self.model)
        self.emit(event)
        return event


def retrain_event(model: str, report: Mapping[str, Any]) -> dict:
    """The CloudEvent (JSON form) asking for a retraining run; carries the current trace, if any."""
    from services.observability.tracing import current_traceparent

    slim = {k: v for k, v in report.items() if k != "feature_shift"}
    event = {
        "specversion": "1.0",
        "id": f"drift-{uuid.uuid4().hex}",
        "source": "rts/drift",
        "type": "rts.retrain.requested",
        "subject": model,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "datacontenttype": "application/json",
        "data": {"reason": "drift", "model": model, "report": slim},
    }
    traceparent = current_traceparent()
    if traceparent:
        event["traceparent"] = traceparent  # CloudEvents distributed-tracing extension
    return event


def plot_drift(report_history: Sequence[Mapping[str, Any]], path: str,
               statistics: Sequence[str] = ("psi_pixel_intensity", "psi_image_mean", "psi_predicted_class",
                                            "psi_confidence"),
               threshold: float | None = 0.2, title: str = "Drift of served traffic vs. training") -> str:
    """PNG of drift statistics over successive reports, with the threshold line; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    xs = list(range(len(report_history)))
    for stat in statistics:
        ys = [r.get("scores", {}).get(stat, np.nan) for r in report_history]
        ax.plot(xs, ys, marker=".", label=stat)
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
    drifted = [i for i, r in enumerate(report_history) if r.get("drifted")]
    if drifted:
        ax.axvspan(drifted[0] - 0.5, xs[-1] + 0.5, color="red", alpha=0.08, label="drifted")
    ax.set_xlabel("report #")
    ax.set_ylabel("PSI")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
