"""Drift: held-out digits do not drift; shifted traffic does, and the trigger fires once per cooldown."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.models.digits.data import load_split
from services.telemetry import metrics
from services.telemetry.drift import DriftMonitor, DriftThresholds, DriftTrigger, ReferenceStats, plot_drift, psi

SPLIT = load_split()
IMAGES, LABELS = SPLIT.holdout.x, SPLIT.holdout.y


def monitor(ref, window=500, min_samples=200):
    return DriftMonitor(ref, window_size=window, thresholds=DriftThresholds(min_samples=min_samples))


def test_reference_round_trips_through_json(digits):
    ref = digits.reference
    again = ReferenceStats.from_json(ref.to_json())
    assert again == ref and again.meta == {"version": 1}
    assert len(ref.to_json()) < 200_000
    assert all(abs(sum(h) - 1) < 1e-4 for h in ref.feature_hist) and abs(sum(ref.class_dist) - 1) < 1e-4
    assert json.loads(ref.to_json())["n_samples"] == len(SPLIT.train)
    assert ref.feature_names == list(digits.package.drift_features)


def test_psi_is_zero_for_equal_and_large_for_disjoint():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([1, 0], [0, 1]) > 5


def test_held_out_digits_do_not_drift(digits):
    m = monitor(digits.reference)
    m.observe(*digits.served(digits.package.features(IMAGES)))
    report = m.report()
    assert report["ready"] and report["samples"] == len(IMAGES)
    assert not report["drifted"], report["reasons"]
    assert all(v < 0.1 for k, v in report["scores"].items() if k.startswith("psi_")), report["scores"]
    assert report["p_values"]["chi2_predicted_class"] > 0.01


def test_not_enough_samples_never_drifts(digits):
    m = monitor(digits.reference)
    m.observe(*digits.served((16 - IMAGES[:50]).reshape(50, -1)))
    report = m.report()
    assert not report["ready"] and not report["drifted"] and report["scores"]["psi_mean_intensity"] > 1


@pytest.mark.parametrize("shift", ["inverted", "brightened", "noisy", "class_mix"])
def test_shifted_traffic_drifts(digits, shift):
    rng = np.random.default_rng(1)
    features = digits.package.features
    if shift == "inverted":  # 16 - x reaching the model (a client bypassing the normalizing preprocess)
        x = (16 - IMAGES).reshape(len(IMAGES), -1)
    elif shift == "brightened":
        x = np.clip(IMAGES * 1.8 + 3, 0, 16).reshape(len(IMAGES), -1)
    elif shift == "noisy":  # survives preprocessing: sensor noise on the uploads
        x = features(np.clip(IMAGES + rng.normal(0, 4, IMAGES.shape), 0, 16))
    else:  # only ones and sevens
        x = features(np.concatenate([IMAGES[np.isin(LABELS, [1, 7])]] * 4))
    m = monitor(digits.reference)
    m.observe(*digits.served(x))
    report = m.report()
    assert report["drifted"], report["scores"]
    assert report["reasons"]


def test_regression_outputs_drift_on_their_values():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, size=(400, 2))
    ref = ReferenceStats.from_training(values, values[:, 0] * 10 + 100, names=("a", "b"), kind="regression")
    m = monitor(ref)
    m.observe(values[:300], (values[:300, 0] * 10 + 100)[:, None])
    assert not m.report()["drifted"]
    m = monitor(ref)
    shifted = values[:300] + [0, 3]
    m.observe(shifted, (shifted[:, 0] * 10 + 100)[:, None])
    report = m.report()
    assert report["drifted"] and any(r.startswith("psi_b") for r in report["reasons"])
    assert "psi_predicted_value" in report["scores"] and report["scores"]["psi_predicted_value"] < 0.2


def test_window_slides_and_schema_violations_are_counted(digits):
    m = monitor(digits.reference, window=300, min_samples=100)
    inverted = (16 - IMAGES).reshape(-1, 64)
    m.observe(*digits.served(inverted))
    assert m.report()["drifted"]
    normal = digits.package.features(IMAGES)
    for start in range(0, len(IMAGES), 7):  # small batches wrap around the ring buffer
        m.observe(*digits.served(normal[start:start + 7]))
    report = m.report()
    assert report["samples"] == 300 and report["seen"] == 2 * len(IMAGES) and not report["drifted"], report["reasons"]
    values, scores = digits.served(normal[:4])
    assert m.observe(values[:, :2], scores) == 0  # wrong width
    bad = values.copy()
    bad[0, 0] = np.nan
    assert m.observe(bad, scores) == 3
    m.observe_schema_violation("wrong_shape")
    assert m.report()["schema_violations"] == {"wrong_shape": 5, "not_a_number": 1}


def test_trigger_fires_once_per_cooldown(digits, tmp_path):
    metrics.reset_metrics("prometheus")
    now = [1000.0]
    fired = []
    trigger = DriftTrigger(monitor(digits.reference), model="digits", emit=fired.append, cooldown_s=600,
                           check_every=100, clock=lambda: now[0], on_report=metrics.set_drift)
    normal = digits.package.features(IMAGES)
    for start in range(0, len(IMAGES), 20):
        assert trigger.observe(*digits.served(normal[start:start + 20])) is None
    assert fired == []
    inverted = (16 - IMAGES).reshape(-1, 64)
    for start in range(0, len(IMAGES), 20):
        trigger.observe(*digits.served(inverted[start:start + 20]))
    assert len(fired) == 1 and fired[0]["drifted"] and fired[0]["reasons"]
    assert trigger.check() is None and len(fired) == 1  # still drifted, inside the cooldown
    now[0] += 601
    assert trigger.check() is not None and len(fired) == 2
    assert metrics.sample_value("rts_drift_detected", {"model": "digits"}) == 1
    assert metrics.sample_value("rts_drift_score", {"model": "digits", "statistic": "psi_mean_intensity"}) > 1

    png = plot_drift(trigger.history, str(tmp_path / "drift.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_monitor_refuses_a_window_smaller_than_min_samples(digits):
    with pytest.raises(ValueError, match="min_samples"):
        monitor(digits.reference, window=100, min_samples=200)
