"""Drift: held-out digits do not trigger, shifted traffic does, once per cooldown."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.models.digits.train import ensemble_proba, featurize, fit_members, load_split
from services.observability import metrics
from services.observability.drift import (DriftMonitor, DriftThresholds, DriftTrigger, ReferenceStats, plot_drift,
                                          psi)


@pytest.fixture(scope="module")
def world():
    split = load_split()
    train_x = featurize(split.train_images)
    models = fit_members(train_x, split.train_labels)
    ref = ReferenceStats.from_training(train_x, ensemble_proba(models, train_x), meta={"version": 1})

    def served(features):  # what the window sees: features and the model's probabilities
        features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        return features, ensemble_proba(models, features)

    return split, ref, served


def monitor(ref, window=500, min_samples=200):
    return DriftMonitor(ref, window_size=window, thresholds=DriftThresholds(min_samples=min_samples))


def test_reference_round_trips_through_json(world):
    _, ref, _ = world
    again = ReferenceStats.from_json(ref.to_json())
    assert again == ref and again.meta == {"version": 1}
    assert len(ref.to_json()) < 200_000
    assert abs(sum(ref.pixel_hist) - 1) < 1e-4 and abs(sum(ref.class_dist) - 1) < 1e-4
    assert json.loads(ref.to_json())["n_samples"] == 1437


def test_psi_is_zero_for_equal_and_large_for_disjoint():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([1, 0], [0, 1]) > 5


def test_held_out_digits_do_not_drift(world):
    split, ref, served = world
    m = monitor(ref)
    m.observe(*served(featurize(split.holdout_images)))
    report = m.report()
    assert report["ready"] and report["samples"] == len(split.holdout_images)
    assert not report["drifted"], report["reasons"]
    assert all(report["scores"][k] < 0.05 for k in ("psi_pixel_intensity", "psi_image_mean", "psi_predicted_class"))
    assert report["p_values"]["chi2_predicted_class"] > 0.01


def test_not_enough_samples_never_drifts(world):
    split, ref, served = world
    m = monitor(ref)
    m.observe(*served((16 - split.holdout_images[:50]).reshape(50, -1)))
    report = m.report()
    assert not report["ready"] and not report["drifted"] and report["scores"]["psi_image_mean"] > 1


@pytest.mark.parametrize("shift", ["inverted", "brightened", "noisy", "class_mix"])
def test_shifted_traffic_drifts(world, shift):
    split, ref, served = world
    images = split.holdout_images
    rng = np.random.default_rng(1)
    if shift == "inverted":  # 16 - x reaching the model (a client bypassing the normalizing preprocess)
        x = (16 - images).reshape(len(images), -1)
    elif shift == "brightened":
        x = np.clip(images * 1.8 + 3, 0, 16).reshape(len(images), -1)
    elif shift == "noisy":  # survives preprocessing: sensor noise on the uploads
        x = featurize(np.clip(images + rng.normal(0, 4, images.shape), 0, 16))
    else:  # only ones and sevens
        x = featurize(np.concatenate([images[np.isin(split.holdout_labels, [1, 7])]] * 4))
    m = monitor(ref)
    m.observe(*served(x))
    report = m.report()
    assert report["drifted"], report["scores"]
    assert report["reasons"]


def test_window_slides_and_schema_violations_are_counted(world):
    split, ref, served = world
    m = monitor(ref, window=300, min_samples=100)
    inverted = (16 - split.holdout_images).reshape(-1, 64)
    m.observe(*served(inverted))
    assert m.report()["drifted"]
    normal = featurize(split.holdout_images)
    for start in range(0, 360, 7):  # small batches wrap around the ring buffer
        m.observe(*served(normal[start:start + 7]))
    report = m.report()
    assert report["samples"] == 300 and report["seen"] == 720 and not report["drifted"], report["reasons"]
    x, p = served(normal[:4])
    assert m.observe(x[:, :10], p) == 0  # wrong width
    x_bad = x.copy()
    x_bad[0, 0], x_bad[1, 1] = 99, np.nan
    assert m.observe(x_bad, p) == 2
    m.observe_schema_violation("wrong_shape")
    assert m.report()["schema_violations"] == {"wrong_shape": 5, "out_of_range": 1, "not_a_number": 1}


def test_trigger_fires_once_per_cooldown(world, tmp_path):
    split, ref, served = world
    metrics.reset_metrics("prometheus")
    now = [1000.0]
    events = []
    trigger = DriftTrigger(monitor(ref), model="digits", emit=events.append, cooldown_s=600,
                           check_every=100, clock=lambda: now[0])
    normal = featurize(split.holdout_images)
    for start in range(0, 360, 20):
        assert trigger.observe(*served(normal[start:start + 20])) is None
    assert events == []
    inverted = (16 - split.holdout_images).reshape(-1, 64)
    for start in range(0, 360, 20):
        trigger.observe(*served(inverted[start:start + 20]))
    assert len(events) == 1
    event = events[0]
    assert {k: event[k] for k in ("source", "type", "subject")} == {
        "source": "rts/drift", "type": "rts.retrain.requested", "subject": "digits"}
    assert event["id"] and event["time"] and event["data"]["reason"] == "drift"
    assert event["data"]["report"]["drifted"]
    json.dumps(event)  # goes onto a queue as JSON
    assert trigger.check() is None and len(events) == 1  # still drifted, inside the cooldown
    now[0] += 601
    assert trigger.check() is not None and len(events) == 2
    assert metrics.sample_value("rts_drift_triggers_total", {"model": "digits"}) == 2
    assert metrics.sample_value("rts_drift_detected", {"model": "digits"}) == 1

    png = plot_drift(trigger.history, str(tmp_path / "drift.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_monitor_refuses_a_window_smaller_than_min_samples(world):
    with pytest.raises(ValueError, match="min_samples"):
        monitor(world[1], window=100, min_samples=200)
