"""Data drift: reference statistics from training, a sliding-window monitor, and a retraining trigger.

Model-agnostic: a model package says which columns drift is watched on (``drift_features`` and
``drift_values``: a few numbers per row, e.g. mean intensity and ink share of an image, or the raw
columns of a table) and whether its answers are class scores or values. This module compares
windows of those with the same statistics of the data a version was trained on.

Usage::

    ref = ReferenceStats.from_training(values, outputs, names=("mean_intensity", ...), kind="classification")
    records.save_reference(model, version, ref.to_json())

    monitor = DriftMonitor(ReferenceStats.from_json(text), window_size=500)
    trigger = DriftTrigger(monitor, model="churn", emit=request_retraining, cooldown_s=3600)
    trigger.observe(values_batch, outputs_batch)        # checks every `check_every` rows
    monitor.observe_schema_violation("wrong_shape")     # where preprocessing rejects an input

What the report compares (recent window vs. the training reference):

- per drift feature: PSI (population stability index) over the reference's deciles, a two-sample
  Kolmogorov-Smirnov statistic (``scipy.stats.ks_2samp``) against a stored reference sample, and
  the standardized mean difference ``(mean_w - mean_ref) / std_ref`` (``max_abs_feature_z``);
- predictions: PSI of the predicted classes and of the confidence (classification), or PSI and KS
  of the predicted values (regression), plus a chi-square test of the class mix;
- schema skew: counts of rows refused before the model (wrong shapes, non-finite values).

``drifted`` is true once the window holds ``min_samples`` rows and any PSI is over its limit (0.2
by default: the usual "significant shift" level), or an optional KS / z limit is exceeded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

CONFIDENCE_EDGES = np.array([0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])
PSI_EPS = 1e-4
REFERENCE_SAMPLE = 2000  # values per column kept for KS
Kind = Literal["classification", "regression"]


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = PSI_EPS) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    e = np.clip(np.asarray(expected, dtype=np.float64), eps, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), eps, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def proportions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin; values outside the edges count in the outer bins."""
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def decile_edges(values: np.ndarray) -> np.ndarray:
    """Bin edges at the deciles of `values`, outer edges at its min and max (clipped into, so open)."""
    values = np.asarray(values, dtype=np.float64)
    edges = np.unique(np.concatenate([[values.min()], np.quantile(values, np.linspace(0.1, 0.9, 9)),
                                      [values.max()]]))
    if len(edges) < 2:  # a constant column: one bin around it
        edges = np.array([edges[0] - 1e-6, edges[0] + 1e-6])
    return edges


def _class_proportions(predicted: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(predicted, minlength=n_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def _r(values, decimals: int = 6) -> list[float]:
    return [round(float(v), decimals) for v in np.asarray(values).ravel()]


@dataclass
class ReferenceStats:
    """What serving traffic is compared with; JSON-serializable, stored beside a version's lineage."""

    kind: Kind
    n_samples: int
    feature_names: list[str]
    feature_mean: list[float]
    feature_std: list[float]
    feature_edges: list[list[float]]
    feature_hist: list[list[float]]
    feature_sample: list[list[float]]
    class_dist: list[float] = field(default_factory=list)  # classification
    confidence_hist: list[float] = field(default_factory=list)  # classification, over CONFIDENCE_EDGES
    value_edges: list[float] = field(default_factory=list)  # regression
    value_hist: list[float] = field(default_factory=list)
    value_sample: list[float] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_dist)

    @classmethod
    def from_training(cls, values: np.ndarray, outputs: np.ndarray, *, names: Sequence[str], kind: Kind,
                      meta: Mapping | None = None, seed: int = 0) -> "ReferenceStats":
        """From the drift values of the rows a version was trained on and its outputs on them
        (class scores (n, k) for classification, values (n,) or (n, 1) for regression)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(names) or len(x) < 20:
            raise ValueError(f"need drift values (n >= 20, {len(names)}) for {list(names)}, got {x.shape}")
        if len(outputs) != len(x):
            raise ValueError(f"{len(x)} rows of values but {len(outputs)} outputs")
        rng = np.random.default_rng(seed)
        edges = [decile_edges(col) for col in x.T]
        sample = min(REFERENCE_SAMPLE, len(x))
        ref = cls(kind=kind, n_samples=int(len(x)), feature_names=list(names),
                  feature_mean=_r(x.mean(axis=0)), feature_std=_r(x.std(axis=0)),
                  feature_edges=[_r(e) for e in edges],
                  feature_hist=[_r(proportions(col, e)) for col, e in zip(x.T, edges)],
                  feature_sample=[_r(rng.choice(col, size=sample, replace=False), 5) for col in x.T],
                  meta=dict(meta or {}))
        if kind == "classification":
            p = np.asarray(outputs, dtype=np.float64)
            ref.class_dist = _r(_class_proportions(p.argmax(axis=1), p.shape[1]))
            ref.confidence_hist = _r(proportions(p.max(axis=1), CONFIDENCE_EDGES))
        else:
            v = np.asarray(outputs, dtype=np.float64).reshape(len(x), -1)[:, 0]
            value_edges = decile_edges(v)
            ref.value_edges, ref.value_hist = _r(value_edges), _r(proportions(v, value_edges))
            ref.value_sample = _r(rng.choice(v, size=sample, replace=False), 5)
        return ref

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ReferenceStats":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class DriftThresholds:
    """Limits above which the window is drifted; None switches a check off."""

    psi_feature: float | None = 0.2  # each drift feature
    psi_prediction: float | None = 0.2  # predicted class mix, or predicted values
    psi_confidence: float | None = 0.25  # classification
    ks_feature: float | None = None  # KS D statistic of each drift feature, e.g. 0.3
    max_abs_feature_z: float | None = None  # standardized mean difference, e.g. 1.5
    min_samples: int = 200


class DriftMonitor:
    """Sliding window of the last ``window_size`` rows; thread-safe (Serve runs requests concurrently)."""

    def __init__(self, reference: ReferenceStats, window_size: int = 500,
                 thresholds: DriftThresholds = DriftThresholds()) -> None:
        if window_size < thresholds.min_samples:
            raise ValueError(f"window_size {window_size} is smaller than min_samples {thresholds.min_samples}: "
                             "the monitor could never decide")
        self.reference = reference
        self.window_size = window_size
        self.thresholds = thresholds
        self.outputs = reference.n_classes if reference.kind == "classification" else 1
        self._x = np.zeros((window_size, reference.n_features), dtype=np.float32)
        self._p = np.zeros((window_size, self.outputs), dtype=np.float32)
        self._next = self._filled = self._seen = 0
        self._schema: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._edges = [np.asarray(e) for e in reference.feature_edges]

    @property
    def samples(self) -> int:
        return self._filled

    @property
    def seen(self) -> int:
        """Rows observed since the start (not only those in the window)."""
        return self._seen

    def observe_schema_violation(self, kind: str, count: int = 1) -> None:
        """An input refused before the model: ``wrong_shape``, ``not_a_number``..."""
        with self._lock:
            self._schema[kind] += count

    def observe(self, values: np.ndarray, outputs: np.ndarray) -> int:
        """Add a served batch (drift values, model outputs); rows with a wrong shape or non-finite values
        are counted, not added. Returns the number of rows added."""
        x = np.asarray(values, dtype=np.float32)
        p = np.asarray(outputs, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        p = p.reshape(len(p), -1) if p.ndim >= 1 and len(p) else p.reshape(0, self.outputs)
        if x.ndim != 2 or x.shape[1] != self.reference.n_features or p.shape[1] != self.outputs or len(x) != len(p):
            self.observe_schema_violation("wrong_shape", max(1, len(x)))
            return 0
        bad = ~(np.isfinite(x).all(axis=1) & np.isfinite(p).all(axis=1))
        with self._lock:
            if bad.any():
                self._schema["not_a_number"] += int(bad.sum())
            x, p = x[~bad], p[~bad]
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
        with self._lock:
            x = self._x[:self._filled].astype(np.float64)
            p = self._p[:self._filled].astype(np.float64)
            schema, seen = dict(self._schema), self._seen
        ref, t = self.reference, self.thresholds
        n = len(x)
        report: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "samples": n, "seen": seen, "window_size": self.window_size, "min_samples": t.min_samples,
            "ready": n >= t.min_samples, "schema_violations": schema, "drifted": False, "reasons": [],
            "reference": {"n_samples": ref.n_samples, **ref.meta}, "thresholds": asdict(t), "scores": {},
        }
        if n == 0:
            return report
        # Imported here: scipy.stats takes half a second to import, which every new serving replica (a cold start
        # from zero) would pay before its first request; the first drift check pays it instead, off the hot path.
        from scipy import stats

        scores: dict[str, float] = {}
        limits: dict[str, float | None] = {}
        p_values: dict[str, float] = {}
        for j, name in enumerate(ref.feature_names):
            col = x[:, j]
            scores[f"psi_{name}"] = psi(ref.feature_hist[j], proportions(col, self._edges[j]))
            limits[f"psi_{name}"] = t.psi_feature
            ks = stats.ks_2samp(col, ref.feature_sample[j])
            scores[f"ks_{name}"], limits[f"ks_{name}"] = float(ks.statistic), t.ks_feature
            p_values[f"ks_{name}"] = float(ks.pvalue)
        # A floor on the std: a column that barely moves in training would turn any change into an infinite z.
        std = np.maximum(np.asarray(ref.feature_std), 1e-3 + 0.05 * np.abs(np.asarray(ref.feature_mean)))
        shift = (x.mean(axis=0) - np.asarray(ref.feature_mean)) / std
        scores["max_abs_feature_z"], limits["max_abs_feature_z"] = float(np.abs(shift).max()), t.max_abs_feature_z
        if ref.kind == "classification":
            predicted = p.argmax(axis=1)
            class_props = _class_proportions(predicted, ref.n_classes)
            scores["psi_predicted_class"], limits["psi_predicted_class"] = psi(ref.class_dist, class_props), \
                t.psi_prediction
            scores["psi_confidence"] = psi(ref.confidence_hist, proportions(p.max(axis=1), CONFIDENCE_EDGES))
            limits["psi_confidence"] = t.psi_confidence
            expected = np.clip(np.asarray(ref.class_dist), PSI_EPS, None)
            chi2 = stats.chisquare(np.bincount(predicted, minlength=ref.n_classes), expected / expected.sum() * n)
            p_values["chi2_predicted_class"] = float(chi2.pvalue)
            report["predicted_class_distribution"] = _r(class_props, 4)
            report["mean_confidence"] = round(float(p.max(axis=1).mean()), 4)
        else:
            v = p[:, 0]
            scores["psi_predicted_value"] = psi(ref.value_hist, proportions(v, np.asarray(ref.value_edges)))
            limits["psi_predicted_value"] = t.psi_prediction
            ks = stats.ks_2samp(v, ref.value_sample)
            scores["ks_predicted_value"], p_values["ks_predicted_value"] = float(ks.statistic), float(ks.pvalue)
            report["mean_prediction"] = round(float(v.mean()), 4)
        report["scores"] = {k: round(v, 6) for k, v in scores.items()}
        report["p_values"] = p_values
        report["feature_shift"] = {name: round(float(z), 4) for name, z in zip(ref.feature_names, shift)}
        if report["ready"]:
            report["reasons"] = [f"{name} {scores[name]:.3f} > {limit:g}" for name, limit in limits.items()
                                 if limit is not None and scores[name] > limit]
            report["drifted"] = bool(report["reasons"])
        return report


Emit = Callable[[dict], Any]


class DriftTrigger:
    """Calls ``emit(report)`` for a drifted window, at most once per cooldown, and publishes the gauges.

    ``emit`` runs in the caller's thread; give it something quick (write a retrain request to the
    bucket on a thread, a Pub/Sub publish future).
    """

    def __init__(self, monitor: DriftMonitor, model: str, emit: Emit, *, cooldown_s: float = 3600.0,
                 check_every: int = 100, clock: Callable[[], float] = time.monotonic,
                 on_report: Callable[[str, dict], None] | None = None) -> None:
        self.monitor, self.model, self.emit = monitor, model, emit
        self.cooldown_s, self.check_every = cooldown_s, max(1, check_every)
        self.clock = clock
        self.on_report = on_report  # e.g. publish the drift gauges
        self.last_fired: float | None = None
        self.history: list[dict] = []  # the reports check() computed, for plot_drift
        self._since_check = 0
        self._lock = threading.Lock()

    def observe(self, values: np.ndarray, outputs: np.ndarray) -> dict | None:
        """Feed a served batch; every ``check_every`` rows run ``check()``. Returns the report if it fired."""
        added = self.monitor.observe(values, outputs)
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
        if self.on_report is not None:
            self.on_report(self.model, report)
        if not report["drifted"]:
            return None
        with self._lock:
            now = self.clock()
            if self.last_fired is not None and now - self.last_fired < self.cooldown_s:
                return None
            self.last_fired = now
        self.emit(report)
        return report


def plot_drift(report_history: Sequence[Mapping[str, Any]], path: str, statistics: Sequence[str] | None = None,
               threshold: float | None = 0.2, title: str = "Drift of served traffic vs. training") -> str:
    """PNG of drift statistics over successive reports (every PSI by default), with the threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if statistics is None:
        statistics = sorted({k for r in report_history for k in r.get("scores", {}) if k.startswith("psi_")})
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
