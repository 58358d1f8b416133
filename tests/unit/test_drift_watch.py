"""DriftWatch: the serving side of drift. Requests only enqueue; a background thread fills the
window, checks at a bounded rate, and writes one retrain request into the data bucket."""

from __future__ import annotations

import json
import time

import numpy as np

from services.models.digits.data import load_split
from services.registry.records import Records
from services.serving.drift_watch import DriftWatch
from services.storage import open_store
from services.telemetry import metrics

HOLDOUT = load_split().holdout.x


def wait_for(predicate, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def records(tmp_path, digits, versions=("1",)) -> Records:
    store = Records(open_store(f"file://{tmp_path}/data"))
    for version in versions:
        store.save_reference("digits", version, digits.reference.to_json())
    return store


def requests_written(store: Records) -> list:
    return [o.key for o in store.store.list("datasets/digits/requests/") if o.key.endswith(".json")]


def test_watch_fills_the_window_off_the_request_path_and_requests_one_retrain(digits, tmp_path):
    metrics.reset_metrics("prometheus")
    store = records(tmp_path, digits)
    watch = DriftWatch(store, {"digits": digits.package}, window=500, check_every=100, min_check_interval_s=0.5,
                       ingest_interval_s=0.05)

    def serve(features: np.ndarray, version: str = "1") -> None:
        for start in range(0, len(features), 16):
            batch = features[start:start + 16]
            watch.observe("digits", version, batch, {"probabilities": digits.scores(batch)})

    normal = digits.package.features(HOLDOUT)
    serve(normal[:16])  # the first batch of a version only starts loading its reference
    wait_for(lambda: watch.report("digits"))
    assert watch.report("digits")["samples"] == 0
    serve(normal[:320])
    report = wait_for(lambda: (r := watch.report("digits"))["samples"] >= 320 and r)
    assert report["drifted"] is False and report["version"] == "1"
    time.sleep(1.0)  # more than one check interval: a check ran and requested nothing
    assert requests_written(store) == []

    noisy = np.clip(np.random.default_rng(0).uniform(0, 16, (400, 64)), 0, 16).astype(np.float32)
    serve(noisy)  # then traffic stops: the pending check must still run
    keys = wait_for(lambda: requests_written(store))
    assert len(keys) == 1
    event = json.loads(store.store.get_bytes(keys[0]))
    assert event["type"] == "rts.retrain.requested" and event["data"]["reason"] == "drift"
    assert event["data"]["model"] == "digits" and event["data"]["report"]["drifted"] is True
    assert watch.report("digits")["drifted"] is True
    assert metrics.sample_value("rts_drift_triggers_total", {"model": "digits"}) == 1
    serve(noisy)
    time.sleep(1.0)
    assert len(requests_written(store)) == 1  # inside the cooldown


def test_bad_rows_are_counted_not_fatal(digits, tmp_path):
    watch = DriftWatch(records(tmp_path, digits), {"digits": digits.package}, check_every=10_000,
                       ingest_interval_s=0.01)
    normal = digits.package.features(HOLDOUT[:8])
    scores = {"probabilities": digits.scores(normal)}
    watch.observe("digits", "1", normal, scores)
    wait_for(lambda: watch.report("digits"))
    watch.observe("digits", "1", normal, {"probabilities": np.ones((8, 3), np.float32)})  # wrong width
    watch.observe("digits", "1", normal, scores)
    report = wait_for(lambda: (r := watch.report("digits"))["samples"] == 8 and r)
    assert report["schema_violations"]["wrong_shape"] == 8


def test_a_new_version_gets_its_own_reference_and_a_fresh_window(digits, tmp_path):
    watch = DriftWatch(records(tmp_path, digits, ("1", "2")), {"digits": digits.package}, check_every=50,
                       min_check_interval_s=0.1, ingest_interval_s=0.01)
    normal = digits.package.features(HOLDOUT[:64])
    scores = {"probabilities": digits.scores(normal)}
    watch.observe("digits", "1", normal, scores)
    wait_for(lambda: watch.report("digits"))
    watch.observe("digits", "1", normal, scores)
    wait_for(lambda: watch.report("digits")["samples"] == 64)
    watch.observe("digits", "2", normal[:8], scores)  # version 2 answers now: load its reference
    wait_for(lambda: (r := watch.report("digits")) and r["version"] == "2")
    assert watch.report("digits")["samples"] == 0
    watch.observe("digits", "2", normal[:8], {"probabilities": scores["probabilities"][:8]})
    wait_for(lambda: watch.report("digits")["samples"] == 8)
    assert watch.report("digits", "1")["samples"] == 64  # version 1's window is kept beside it


def test_a_challengers_drift_is_a_rollout_signal_not_a_retrain_request(digits, tmp_path):
    """Drift of a version that is not production (a shadow or canary) gives its PSI to the rollout
    controller (``max_psi``) and requests no retraining; production's drift still does."""
    metrics.reset_metrics("prometheus")
    store = records(tmp_path, digits, ("1", "2"))
    watch = DriftWatch(store, {"digits": digits.package}, window=200, check_every=100, min_check_interval_s=0.1,
                       ingest_interval_s=0.01, is_production=lambda model, version: version == "1")
    noisy = np.clip(np.random.default_rng(0).uniform(0, 16, (400, 64)), 0, 16).astype(np.float32)
    scores = {"probabilities": digits.scores(noisy)}
    watch.observe("digits", "2", noisy[:8], scores, answered=False)  # mirrored: loads version 2's reference
    wait_for(lambda: watch.report("digits", "2"))
    assert watch.max_psi("digits", "2") is None  # not enough rows yet
    for start in range(0, 400, 50):
        watch.observe("digits", "2", noisy[start:start + 50], {"probabilities": scores["probabilities"][start:start + 50]},
                      answered=False)
    psi = wait_for(lambda: watch.max_psi("digits", "2"))
    assert psi > 0.3
    assert watch.report("digits") is None  # no version has answered a user: nothing to show for the model
    time.sleep(0.5)
    assert requests_written(store) == [] and metrics.sample_value("rts_drift_triggers_total", {"model": "digits"}) in (None, 0)

    watch.observe("digits", "1", noisy[:8], scores)  # production drifts the same way: that is a retrain request
    wait_for(lambda: watch.report("digits", "1"))
    for start in range(0, 400, 50):
        watch.observe("digits", "1", noisy[start:start + 50], {"probabilities": scores["probabilities"][start:start + 50]})
    wait_for(lambda: requests_written(store))


def test_a_version_without_a_reference_is_not_watched_and_not_looked_up_per_request(digits, tmp_path):
    store = records(tmp_path, digits, ())
    lookups = []
    original = store.reference
    store.reference = lambda model, version: lookups.append(version) or original(model, version)
    watch = DriftWatch(store, {"digits": digits.package}, retry_missing_s=60)
    normal = digits.package.features(HOLDOUT[:4])
    for _ in range(20):
        watch.observe("digits", "7", normal, {"probabilities": digits.scores(normal)})
        time.sleep(0.01)
    time.sleep(0.2)
    assert watch.report("digits") is None and lookups == ["7"]
