"""The gate framework: the platform's gates, then the model's own, on the ONNX files Triton will serve.

Platform gates, for every model:

- ``holdout_<metric>_vs_production``: the task's primary metric on the fixed holdout (accuracy,
  RMSE...) no worse than production's by more than the package's ``metric_tolerance``, else
  ``RTS_RETRAIN_METRIC_TOLERANCE`` (relative);
- ``latency_p50_ms``: one row through the candidate ensemble on onnxruntime within
  ``RTS_RETRAIN_LATENCY_BUDGET_MS``.

Then every gate the package returns from ``gates()`` (see ``services.modelkit.gates``). A gate that
raises fails, with the error as its detail: a broken check never lets a candidate through.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np

from services.modelkit import GateContext, GateResult, ModelPackage
from services.settings import RetrainSettings
from services.triton.onnx_ensemble import OnnxEnsemble

log = logging.getLogger(__name__)


def holdout_metric_gate(package: ModelPackage, candidate: dict, production: dict | None,
                        tolerance: float) -> GateResult:
    metric = package.task.primary_metric
    name = f"holdout_{metric}_vs_production"
    if production is None:
        return GateResult(name, True, candidate[metric], float("nan"), "no production model to compare with")
    passed, threshold = package.task.better(candidate[metric], production[metric], tolerance)
    return GateResult(name, passed, candidate[metric], threshold,
                      f"production {production[metric]:.4f}, tolerance {tolerance:.1%}")


def latency_gate(candidate: OnnxEnsemble, one_row: np.ndarray, budget_ms: float, rounds: int = 200) -> GateResult:
    for _ in range(20):
        candidate.primary(one_row)
    timings = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        candidate.primary(one_row)
        timings.append((time.perf_counter() - t0) * 1000)
    p50 = float(np.percentile(timings, 50))
    return GateResult("latency_p50_ms", p50 <= budget_ms, p50, budget_ms,
                      "one row through the ensemble, onnxruntime CPU")


def run_gates(package: ModelPackage, candidate: OnnxEnsemble, production: OnnxEnsemble | None,
              config: RetrainSettings) -> tuple[list[GateResult], dict]:
    """Every gate's result, and the holdout metrics of candidate and production."""
    holdout = package.base_data().holdout
    features = package.features(holdout.x)
    cand = package.task.metrics(candidate.primary(features), holdout.y)
    prod = package.task.metrics(production.primary(features), holdout.y) if production is not None else None
    tolerance = package.metric_tolerance if package.metric_tolerance is not None else config.metric_tolerance
    results = [holdout_metric_gate(package, cand, prod, tolerance)]
    ctx = GateContext(candidate=candidate.primary, production=production.primary if production else None,
                      holdout=holdout, holdout_features=features, features=package.features,
                      predicted=package.task.predicted, metrics=cand)
    for gate in package.gates():
        name = getattr(gate, "__name__", type(gate).__name__)
        try:
            outcome = gate(ctx)
        except Exception as exc:  # noqa: BLE001 - a gate that breaks fails, it never passes
            log.exception("gate %s raised", name)
            outcome = GateResult(name, False, float("nan"), float("nan"), f"the gate raised {type(exc).__name__}: {exc}")
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    results.append(latency_gate(candidate, features[:1], config.latency_budget_ms))
    latency = results[-1].value
    return results, {"candidate": cand, "production": prod, "latency_p50_ms": latency}


def gates_to_json(results: list[GateResult]) -> list[dict]:
    return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(r).items()} for r in results]
