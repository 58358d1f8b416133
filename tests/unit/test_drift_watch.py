"""DriftWatch: the serving side of drift. Requests only enqueue; a background thread fills the
window, checks at a bounded rate, and writes one retrain request into the data bucket."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from services.models.digits.train import ensemble_proba, featurize, fit_members, load_split
from services.observability import metrics
from services.observability.drift import ReferenceStats
from services.pipeline.drift_watch import DriftWatch, reference_key
from services.storage import open_store


@pytest.fixture(scope="module")
def world():
    split = load_split()
    train_x = featurize(split.train_images)
    models = fit_members(train_x, split.train_labels)
    ref = ReferenceStats.from_training(train_x, ensemble_proba(models, train_x), meta={"version": 1})
    return split, models, ref


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def requests_written(data: str) -> list:
    return [o.key for o in open_store(data).list("datasets/digits/requests/") if o.key.endswith(".json")]


def test_watch_fills_the_window_off_the_request_path_and_requests_one_retrain(world, tmp_path):
    split, models, ref = world
    metrics.reset_metrics("prometheus")
    data = f"file://{tmp_path}/data"
    open_store(data).put_bytes(reference_key("digits", "1"), ref.to_json().encode())
    watch = DriftWatch(data, window=500, check_every=100, min_check_interval_s=0.5, ingest_interval_s=0.05)

    def serve(features: np.ndarray, version: str = "1") -> None:
        for start in range(0, len(features), 16):
            batch = features[start:start + 16]
            watch.observe("digits", version, batch, ensemble_proba(models, batch))

    normal = featurize(split.holdout_images)
    serve(normal[:16])  # the first batch of a version only starts loading its reference
    wait_for(lambda: watch.report("digits"))
    assert watch.report("digits")["samples"] == 0
    serve(normal[:320])
    report = wait_for(lambda: (r := watch.report("digits"))["samples"] >= 320 and r)
    assert report["drifted"] is False and report["version"] == "1"
    time.sleep(1.0)  # more than one check interval: a check ran and requested nothing
    assert requests_written(data) == []

    noisy = np.clip(np.random.default_rng(0).uniform(0, 16, (400, 64)), 0, 16).astype(np.float32)
    serve(noisy)  # then traffic stops: the pending check must still run
    keys = wait_for(lambda: requests_written(data))
    assert len(keys) == 1
    event = json.loads(open_store(data).get_bytes(keys[0]))
    assert event["type"] == "rts.retrain.requested" and event["data"]["reason"] == "drift"
    assert watch.report("digits")["drifted"] is True
    serve(noisy)
    time.sleep(1.0)
    assert len(requests_written(data)) == 1  # inside the cooldown


def test_bad_shapes_are_counted_not_fatal(world, tmp_path):
    split, models, ref = world
    data = f"file://{tmp_path}/data"
    open_store(data).put_bytes(reference_key("digits", "1"), ref.to_json().encode())
    watch = DriftWatch(data, check_every=10_000, ingest_interval_s=0.01)
    normal = featurize(split.holdout_images[:8])
    watch.observe("digits", "1", normal, ensemble_proba(models, normal))
    wait_for(lambda: watch.report("digits"))
    watch.observe("digits", "1", normal[:, :60], np.ones((8, 10), np.float32) / 10)  # wrong width
    watch.observe("digits", "1", normal, ensemble_proba(models, normal))
    report = wait_for(lambda: (r := watch.report("digits"))["samples"] == 8 and r)
    assert report["schema_violations"]["wrong_shape"] == 8


def test_a_new_version_gets_its_own_reference_and_a_fresh_window(world, tmp_path):
    split, models, ref = world
    data = f"file://{tmp_path}/data"
    for version in ("1", "2"):
        open_store(data).put_bytes(reference_key("digits", version), ref.to_json().encode())
    watch = DriftWatch(data, check_every=50, min_check_interval_s=0.1, ingest_interval_s=0.01)
    normal = featurize(split.holdout_images[:64])
    scores = ensemble_proba(models, normal)
    watch.observe("digits", "1", normal, scores)
    wait_for(lambda: watch.report("digits"))
    watch.observe("digits", "1", normal, scores)
    wait_for(lambda: watch.report("digits")["samples"] == 64)
    watch.observe("digits", "2", normal[:8], scores[:8])  # version 2 answers now: load its reference
    wait_for(lambda: watch.report("digits")["version"] == "2")
    assert watch.report("digits")["samples"] == 0
    watch.observe("digits", "2", normal[:8], scores[:8])
    wait_for(lambda: watch.report("digits")["samples"] == 8)
