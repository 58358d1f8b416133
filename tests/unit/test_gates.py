"""The gates a candidate passes before it is published, in-process on onnxruntime (no Triton).

Covered: the platform's holdout gate for classification (accuracy, higher is better) and regression
(RMSE, lower is better), with and without production; the latency gate for the real candidate and
a deliberately slow one; ``run_gates`` with the real digits candidate (all pass); each digits gate
(per-class recall, invariances, minimum functionality) failing for a bad candidate and passing for
the real one; a gate that raises is recorded as failed with the error; ``gates_to_json`` NaN -> None.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from services.modelkit import GateContext, GateResult
from services.modelkit.discovery import load_package
from services.models.digits import gates as digits_gates
from services.retraining.gates import gates_to_json, holdout_metric_gate, latency_gate, run_gates
from services.settings import RetrainSettings

DIGITS = load_package("services.models.digits")
DIABETES = load_package("services.models.diabetes")
HOLDOUT = DIGITS.base_data().holdout


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[np.asarray(classes, dtype=int) % 10]


def context(candidate, features=DIGITS.features) -> GateContext:
    """What run_gates hands the digits gates, for any candidate (features -> class scores)."""
    holdout_features = features(HOLDOUT.x)
    return GateContext(candidate=candidate, production=None, holdout=HOLDOUT, holdout_features=holdout_features,
                       features=features, predicted=DIGITS.task.predicted,
                       metrics=DIGITS.task.metrics(candidate(holdout_features), HOLDOUT.y))


def always_zero(features: np.ndarray) -> np.ndarray:
    return one_hot(np.zeros(len(features)))


def raw_pixels(x: np.ndarray) -> np.ndarray:
    """Features without the serving normalization (which makes brightness and position invisible)."""
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1)


def by_column_of_ink(features: np.ndarray) -> np.ndarray:
    """A candidate whose answer follows where the digit sits (its ink's mean column, in quarter pixels)."""
    ink = features.reshape(len(features), 8, 8).sum(axis=1)
    mean_col = (ink * np.arange(8)).sum(axis=1) / np.maximum(ink.sum(axis=1), 1e-9)
    return one_hot(np.round(mean_col * 4))


# ---- the holdout gate ---------------------------------------------------------------------------

def test_holdout_gate_classification_accuracy_higher_is_better():
    production = {"accuracy": 0.96}
    ok = holdout_metric_gate(DIGITS, {"accuracy": 0.951}, production, tolerance=0.01)
    assert ok.name == "holdout_accuracy_vs_production" and ok.passed
    assert ok.threshold == pytest.approx(0.9504) and ok.value == 0.951
    assert not holdout_metric_gate(DIGITS, {"accuracy": 0.95}, production, tolerance=0.01).passed
    assert holdout_metric_gate(DIGITS, {"accuracy": 0.99}, production, tolerance=0.0).passed
    assert not holdout_metric_gate(DIGITS, {"accuracy": 0.9599}, production, tolerance=0.0).passed


def test_holdout_gate_regression_rmse_lower_is_better():
    production = {"rmse": 50.0}
    ok = holdout_metric_gate(DIABETES, {"rmse": 50.4}, production, tolerance=0.01)
    assert ok.name == "holdout_rmse_vs_production" and ok.passed and ok.threshold == pytest.approx(50.5)
    assert not holdout_metric_gate(DIABETES, {"rmse": 50.6}, production, tolerance=0.01).passed
    assert holdout_metric_gate(DIABETES, {"rmse": 10.0}, production, tolerance=0.0).passed
    assert not holdout_metric_gate(DIABETES, {"rmse": 50.01}, production, tolerance=0.0).passed


@pytest.mark.parametrize("package, metric", [(DIGITS, "accuracy"), (DIABETES, "rmse")])
def test_holdout_gate_without_production_passes_with_no_threshold(package, metric):
    result = holdout_metric_gate(package, {metric: 0.1}, None, tolerance=0.01)
    assert result.passed and result.value == 0.1 and math.isnan(result.threshold)
    assert "no production" in result.detail


# ---- the latency gate ---------------------------------------------------------------------------

class Slow:
    """A candidate ensemble that takes `seconds` per call."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def primary(self, rows: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.seconds)
        return always_zero(rows)


def test_latency_gate_passes_for_the_real_candidate(digits):
    one_row = DIGITS.holdout_features()[:1]
    result = latency_gate(digits.ensemble, one_row, budget_ms=5.0)
    assert result.name == "latency_p50_ms" and result.passed and 0 < result.value <= 5.0


def test_latency_gate_fails_for_a_slow_candidate():
    slow = Slow(0.003)
    result = latency_gate(slow, DIGITS.holdout_features()[:1], budget_ms=1.0, rounds=5)
    assert not result.passed and result.value >= 3.0 and result.threshold == 1.0
    assert slow.calls == 20 + 5  # warm-up calls are not timed


# ---- run_gates with the real candidate ----------------------------------------------------------

def test_run_gates_passes_every_gate_for_the_real_digits_candidate(digits):
    results, metrics = run_gates(DIGITS, digits.ensemble, None, RetrainSettings())
    assert [r.name for r in results] == ["holdout_accuracy_vs_production", "per_class_recall",
                                         "invariance_file_format", "invariance_one_pixel_shift",
                                         "minimum_functionality", "latency_p50_ms"]
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    assert metrics["candidate"]["accuracy"] > 0.95 and metrics["production"] is None
    assert metrics["latency_p50_ms"] == results[-1].value


def test_run_gates_compares_with_production(digits):
    results, metrics = run_gates(DIGITS, digits.ensemble, digits.ensemble, RetrainSettings(metric_tolerance=0.0))
    holdout = results[0]
    assert holdout.passed and holdout.value == holdout.threshold == metrics["production"]["accuracy"]


# ---- the digits package's own gates -------------------------------------------------------------

def test_per_class_recall_passes_for_the_real_candidate_and_fails_for_one_answer(digits):
    real = digits_gates.per_class_recall(context(digits.ensemble.primary))
    assert real.passed and real.value >= digits_gates.MIN_CLASS_RECALL
    bad = digits_gates.per_class_recall(context(always_zero))
    assert not bad.passed and bad.value == 0.0 and bad.detail == "lowest: class 1"


def test_invariances_pass_for_the_real_candidate(digits):
    results = digits_gates.invariances(context(digits.ensemble.primary))
    assert [r.name for r in results] == ["invariance_file_format", "invariance_one_pixel_shift"]
    assert all(r.passed and r.value >= digits_gates.MIN_INVARIANCE for r in results)


def test_file_format_invariance_fails_for_a_candidate_that_knows_only_exact_pixels(digits):
    exact = DIGITS.features(HOLDOUT.x)

    def exact_only(features: np.ndarray) -> np.ndarray:
        scores = one_hot(np.zeros(len(features), dtype=int))
        known = np.array([np.isclose(exact, row, atol=1e-4).all(axis=1).any() for row in features])
        if known.any():
            scores[known] = digits.ensemble.primary(features[known])
        return scores

    file_format, _ = digits_gates.invariances(context(exact_only))
    assert not file_format.passed and file_format.value < 0.5


def test_shift_invariance_fails_for_a_candidate_that_follows_position():
    _, shift = digits_gates.invariances(context(by_column_of_ink, features=raw_pixels))
    assert not shift.passed and shift.value < 0.5


def test_the_serving_features_undo_brightness_and_mostly_position():
    """Why there is no brightness gate, and why the shift fake needs raw pixels: normalize_digit
    stretches the ink to full scale and recentres the digit."""
    base = DIGITS.features(HOLDOUT.x)
    dimmer = DIGITS.features(np.clip(HOLDOUT.x * 0.85, 0, 16))
    np.testing.assert_allclose(dimmer, base, atol=1e-5)
    shifted = DIGITS.features(digits_gates.shift_one_pixel(HOLDOUT.x))
    assert (np.abs(shifted - base).max(axis=1) > 1e-3).mean() < 0.1


def test_minimum_functionality_passes_for_the_real_candidate_and_fails_for_a_bad_one(digits):
    real = digits_gates.minimum_functionality(context(digits.ensemble.primary))
    per_class = digits_gates.FUNCTIONALITY_PER_CLASS
    assert real.passed and real.value == real.threshold == 10 * per_class
    bad = digits_gates.minimum_functionality(context(always_zero))
    assert not bad.passed and bad.value == per_class and "wrong on holdout rows" in bad.detail


def test_minimum_functionality_fails_for_one_wrong_clean_example(digits):
    idx = digits_gates.functionality_set(HOLDOUT.x, HOLDOUT.y, digits_gates.FUNCTIONALITY_PER_CLASS)
    target = HOLDOUT.x[idx[0]]

    def wrong_on_one(features: np.ndarray) -> np.ndarray:
        scores = digits.ensemble.primary(features)
        hit = np.all(np.isclose(features, DIGITS.features(target[None])[0]), axis=1)
        scores[hit] = one_hot(HOLDOUT.y[idx[0]] + 1)[0]
        return scores

    result = digits_gates.minimum_functionality(context(wrong_on_one))
    assert not result.passed and result.detail == f"wrong on holdout rows {[int(idx[0])]}"


# ---- a gate that raises -------------------------------------------------------------------------

def boom(ctx: GateContext) -> GateResult:
    raise ValueError("the check itself is broken")


class DigitsWithABrokenGate(type(DIGITS)):
    def gates(self):
        return (boom, digits_gates.per_class_recall)


def test_a_gate_that_raises_fails_with_the_error_and_the_others_still_run(digits):
    results, _ = run_gates(DigitsWithABrokenGate(), digits.ensemble, None, RetrainSettings())
    by_name = {r.name: r for r in results}
    assert list(by_name) == ["holdout_accuracy_vs_production", "boom", "per_class_recall", "latency_p50_ms"]
    broken = by_name["boom"]
    assert not broken.passed and math.isnan(broken.value)
    assert broken.detail == "the gate raised ValueError: the check itself is broken"
    assert by_name["per_class_recall"].passed and by_name["latency_p50_ms"].passed


# ---- gates_to_json ------------------------------------------------------------------------------

def test_gates_to_json_turns_nan_into_none():
    results = [GateResult("a", True, 0.5, float("nan"), "x"), GateResult("b", False, float("nan"), 2.0)]
    out = gates_to_json(results)
    assert out == [{"name": "a", "passed": True, "value": 0.5, "threshold": None, "detail": "x"},
                   {"name": "b", "passed": False, "value": None, "threshold": 2.0, "detail": ""}]
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN
