"""Prometheus metrics of the gateway, the pipeline stages, retraining and drift; one line per call site.

Usage::

    from services.telemetry import metrics

    metrics.configure_metrics()                         # once per process ("auto" backend, see below)
    with metrics.stage_timer("preprocess", "churn"):
        ...
    metrics.record_request("/v1/predict", "churn", "3", 200)
    body, content_type = metrics.exposition()           # for a /metrics route

Every metric is named ``rts_*``; the label sets are fixed here (``METRIC_FAMILIES``), never built
from user input, except ``model`` and ``route``, which callers take from the served specs and the
matched route template (never the raw path).

Backends, and why two
---------------------
A Ray Serve replica is its own process, and a Serve app usually has several; a Ray Job driver is a
short-lived process nobody scrapes. So a prometheus_client registry alone would be wrong twice:
``/metrics`` on the gateway's port reaches ONE replica per scrape (counters would jump between
replicas), and retraining metrics would vanish when the job ends. ``ray.util.metrics`` solves
both: each process reports to its node's Ray metrics agent, which Prometheus scrapes on the
node's metrics-export port (found through the service-discovery file Ray writes; see
``infra/prometheus/prometheus.yml``). Ray prefixes the names with ``ray_``; the scrape config
strips that prefix again, so dashboards query the same ``rts_*`` names whichever backend recorded them.

- ``"ray"``: ``ray.util.metrics`` (Serve replicas, retraining jobs). The gateway's /metrics then
  carries only this replica's process metrics.
- ``"prometheus"``: a per-process ``CollectorRegistry`` (tests, the CLI, the local retraining
  listener, a single-replica gateway) served by ``exposition()`` on /metrics.
- ``"auto"`` (default): ``"ray"`` when ``ray.is_initialized()`` in this process, else ``"prometheus"``.

``exposition()`` always returns the local registry, so /metrics is a useful per-replica debug view
in either mode (in "ray" mode it shows nothing of ours; set ``also_local=True`` to record both).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

Backend = Literal["auto", "prometheus", "ray"]

STAGES = ("preprocess", "triton", "postprocess", "total")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RUN_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass(frozen=True)
class Family:
    kind: Literal["counter", "gauge", "histogram"]
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


METRIC_FAMILIES = {f.name: f for f in (
    Family("counter", "rts_requests_total", "Gateway requests by route template, model, served version and HTTP status",
           ("route", "model", "version", "status")),
    Family("histogram", "rts_stage_seconds", "Latency of each pipeline stage (preprocess, triton, postprocess, total)",
           ("stage", "model"), LATENCY_BUCKETS),
    Family("histogram", "rts_batch_size", "Items per inference request", ("model",), BATCH_BUCKETS),
    Family("histogram", "rts_triton_batch_requests",
           "Requests per call the gateway made to Triton (concurrent requests are sent together)", ("model",),
           BATCH_BUCKETS),
    Family("counter", "rts_errors_total", "Requests that failed, by error code (the body's error.code)",
           ("code", "route")),
    Family("counter", "rts_retraining_runs_total", "Retraining runs by outcome", ("outcome",)),
    Family("histogram", "rts_retraining_duration_seconds", "Duration of a whole retraining run", ("outcome",),
           RUN_BUCKETS),
    Family("histogram", "rts_retraining_stage_seconds", "Duration of each retraining stage", ("stage",), RUN_BUCKETS),
    Family("counter", "rts_gate_results_total", "Quality gate evaluations by gate and result", ("gate", "passed")),
    Family("gauge", "rts_served_version", "Triton model version currently served", ("model",)),
    Family("gauge", "rts_drift_score", "Drift statistics of the recent window (PSI and KS per drift feature "
           "and of the predictions, max |z|)",
           ("model", "statistic")),
    Family("gauge", "rts_drift_detected", "1 when the recent window is judged drifted", ("model",)),
    Family("gauge", "rts_drift_window_samples", "Samples in the drift window", ("model",)),
    Family("counter", "rts_schema_violations_total", "Inputs with the wrong shape or out-of-range values",
           ("model", "kind")),
    Family("counter", "rts_drift_triggers_total", "Retraining requests emitted because of drift", ("model",)),
    Family("counter", "rts_drift_alerts_total", "Drift with no new labelled data behind it: an alert, no version",
           ("model",)),
    Family("gauge", "rts_traffic_share", "Share of live traffic each version is routed (the rollout's plan)",
           ("model", "version")),
    Family("gauge", "rts_version_stage", "1 for the stage each version is in", ("model", "version", "stage")),
    Family("counter", "rts_rollout_decisions_total", "Rollout decisions by kind (advance, promote, rollback...)",
           ("model", "decision")),
    Family("gauge", "rts_live_accuracy", "Accuracy of each version on joined feedback in its current window "
           "(regressors: mean absolute error)", ("model", "version")),
    Family("gauge", "rts_shadow_disagreement", "Share of mirrored requests where a version disagreed with production",
           ("model", "version")),
    Family("counter", "rts_route_fallbacks_total", "Requests routed to a version already unloaded, answered by "
           "production instead", ("model",)),
    Family("gauge", "rts_process_up", "1 while a process the launcher (`rts up`) supervises runs", ("process",)),
    Family("counter", "rts_process_restarts_total", "Times the launcher restarted a crashed process", ("process",)),
    Family("counter", "rts_feedback_total", "Feedback received, by what became of it (joined, pending, expired)",
           ("model", "status")),
)}


class _PromBackend:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics: dict[str, Any] = {}
        for f in METRIC_FAMILIES.values():
            if f.kind == "counter":
                self.metrics[f.name] = PromCounter(f.name, f.help, f.labels, registry=self.registry)
            elif f.kind == "gauge":
                self.metrics[f.name] = PromGauge(f.name, f.help, f.labels, registry=self.registry)
            else:
                self.metrics[f.name] = PromHistogram(f.name, f.help, f.labels, buckets=f.buckets,
                                                     registry=self.registry)

        # (name, label items) -> the labelled child: prometheus_client's labels() checks and joins the values on
        # every call, a third of a record's cost on the request path. Label sets are few (model, version, stage,
        # status...), and prometheus_client keeps every child anyway.
        self._children: dict[tuple, Any] = {}

    def _child(self, name: str, labels: Mapping[str, str]) -> Any:
        key = (name, *labels.items())
        try:
            return self._children[key]
        except KeyError:
            child = self._children[key] = self.metrics[name].labels(**labels)
            return child

    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        self._child(name, labels).inc(value)

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self._child(name, labels).set(value)

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self._child(name, labels).observe(value)


class _RayBackend:
    def __init__(self) -> None:
        from ray.util import metrics as ray_metrics

        self.metrics: dict[str, Any] = {}
        for f in METRIC_FAMILIES.values():
            if f.kind == "counter":
                self.metrics[f.name] = ray_metrics.Counter(f.name, f.help, tag_keys=f.labels)
            elif f.kind == "gauge":
                self.metrics[f.name] = ray_metrics.Gauge(f.name, f.help, tag_keys=f.labels)
            else:
                self.metrics[f.name] = ray_metrics.Histogram(f.name, f.help, boundaries=list(f.buckets),
                                                             tag_keys=f.labels)

    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        self.metrics[name].inc(value, tags=dict(labels))

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.metrics[name].set(value, tags=dict(labels))

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        self.metrics[name].observe(value, tags=dict(labels))


class Metrics:
    """The process's metric families on one or two backends (local registry first)."""

    def __init__(self, backend: Backend = "auto", *, also_local: bool = False) -> None:
        if backend == "auto":
            backend = "ray" if _ray_initialized() else "prometheus"
        self.backend_name = backend
        self.local = _PromBackend()
        self.sinks: list[Any] = []
        if backend == "ray":
            self.sinks.append(_RayBackend())
            if also_local:
                self.sinks.append(self.local)
        elif backend == "prometheus":
            self.sinks.append(self.local)
        else:
            raise ValueError(f"metrics backend must be auto, prometheus or ray, not {backend!r}")

    @property
    def registry(self) -> CollectorRegistry:
        return self.local.registry

    def inc(self, name: str, labels: Mapping[str, str], value: float = 1.0) -> None:
        for sink in self.sinks:
            sink.inc(name, labels, value)

    def set(self, name: str, labels: Mapping[str, str], value: float) -> None:
        for sink in self.sinks:
            sink.set(name, labels, value)

    def observe(self, name: str, labels: Mapping[str, str], value: float) -> None:
        for sink in self.sinks:
            sink.observe(name, labels, value)


def _ray_initialized() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


_lock = threading.Lock()
_metrics: Metrics | None = None


def configure_metrics(backend: Backend = "auto", *, also_local: bool = False) -> Metrics:
    """Choose the backend for this process (first call wins; later calls return the same object).

    Call it after ``ray.init`` in a job, or in a replica's constructor; helpers called earlier
    configure "auto" themselves.
    """
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics(backend, also_local=also_local)
        return _metrics


def get_metrics() -> Metrics:
    return _metrics if _metrics is not None else configure_metrics()


def reset_metrics(backend: Backend = "prometheus") -> Metrics:
    """A fresh set of metrics (tests)."""
    global _metrics
    with _lock:
        _metrics = Metrics(backend)
        return _metrics


# ---- one-line helpers for call sites -------------------------------------------------------------

def record_request(route: str, model: str, version: str | int | None, status: int | str) -> None:
    get_metrics().inc("rts_requests_total", {"route": route, "model": model or "",
                                             "version": str(version or ""), "status": str(status)})


def observe_stage(stage: str, model: str, seconds: float) -> None:
    get_metrics().observe("rts_stage_seconds", {"stage": stage, "model": model or ""}, seconds)


@contextlib.contextmanager
def stage_timer(stage: str, model: str) -> Iterator[None]:
    """Time the block into rts_stage_seconds{stage, model}, also when it raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        observe_stage(stage, model, time.perf_counter() - started)


def record_batch_size(model: str, size: int) -> None:
    get_metrics().observe("rts_batch_size", {"model": model or ""}, float(size))


def record_triton_batch(model: str, requests: int) -> None:
    get_metrics().observe("rts_triton_batch_requests", {"model": model}, float(requests))


def record_error(code: str, route: str = "") -> None:
    get_metrics().inc("rts_errors_total", {"code": code or "unknown", "route": route})


def record_retraining_run(outcome: str, seconds: float | None = None) -> None:
    m = get_metrics()
    m.inc("rts_retraining_runs_total", {"outcome": outcome})
    if seconds is not None:
        m.observe("rts_retraining_duration_seconds", {"outcome": outcome}, seconds)


def record_retraining_stage(stage: str, seconds: float) -> None:
    get_metrics().observe("rts_retraining_stage_seconds", {"stage": stage}, seconds)


def record_gate(gate: str, passed: bool) -> None:
    get_metrics().inc("rts_gate_results_total", {"gate": gate, "passed": "true" if passed else "false"})


def record_gates(results: Any) -> None:
    """Every gate of a run: objects with ``.name``/``.passed`` or dicts with those keys."""
    for r in results:
        name, passed = (r["name"], r["passed"]) if isinstance(r, Mapping) else (r.name, r.passed)
        record_gate(name, bool(passed))


def set_served_version(model: str, version: int | str) -> None:
    try:
        value = float(version)
    except (TypeError, ValueError):
        return  # "" before the first answer: nothing to say
    get_metrics().set("rts_served_version", {"model": model}, value)


def record_schema_violation(model: str, kind: str) -> None:
    get_metrics().inc("rts_schema_violations_total", {"model": model or "", "kind": kind})


def set_drift(model: str, report: Mapping[str, Any]) -> None:
    """Publish a DriftMonitor.report() as gauges (its statistics are named by the model's drift features)."""
    m = get_metrics()
    for stat, value in (report.get("scores") or {}).items():
        if value is not None:
            m.set("rts_drift_score", {"model": model, "statistic": stat}, float(value))
    m.set("rts_drift_detected", {"model": model}, 1.0 if report.get("drifted") else 0.0)
    m.set("rts_drift_window_samples", {"model": model}, float(report.get("samples", 0)))


def record_drift_alert(model: str) -> None:
    get_metrics().inc("rts_drift_alerts_total", {"model": model})


def set_traffic_shares(model: str, shares: Mapping[int | str, float], known: set[str] | None = None) -> None:
    """The planned share per version; versions in `known` that are no longer routed drop to 0."""
    m = get_metrics()
    for version in (known or set()) - {str(v) for v in shares}:
        m.set("rts_traffic_share", {"model": model, "version": version}, 0.0)
    for version, share in shares.items():
        m.set("rts_traffic_share", {"model": model, "version": str(version)}, float(share))


def set_version_stage(model: str, version: int | str, stage: str, stages: tuple[str, ...]) -> None:
    m = get_metrics()
    for s in stages:
        m.set("rts_version_stage", {"model": model, "version": str(version), "stage": s}, 1.0 if s == stage else 0.0)


def record_rollout_decision(model: str, decision: str) -> None:
    get_metrics().inc("rts_rollout_decisions_total", {"model": model, "decision": decision})


def set_live_quality(model: str, version: int | str, accuracy: float | None, disagreement: float | None) -> None:
    m = get_metrics()
    if accuracy is not None:
        m.set("rts_live_accuracy", {"model": model, "version": str(version)}, float(accuracy))
    if disagreement is not None:
        m.set("rts_shadow_disagreement", {"model": model, "version": str(version)}, float(disagreement))


def record_route_fallback(model: str) -> None:
    get_metrics().inc("rts_route_fallbacks_total", {"model": model})


def record_feedback(model: str, status: str) -> None:
    get_metrics().inc("rts_feedback_total", {"model": model or "", "status": status})


def record_drift_trigger(model: str) -> None:
    get_metrics().inc("rts_drift_triggers_total", {"model": model})


def exposition() -> tuple[bytes, str]:
    """(body, content type) of this process's local registry, for a /metrics route."""
    return generate_latest(get_metrics().registry), CONTENT_TYPE_LATEST


def sample_value(name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """Current value of one sample in the local registry (tests, debugging)."""
    return get_metrics().registry.get_sample_value(name, dict(labels or {}))
