"""A retraining run's decisions, in-process: the steps of services.retraining.run without Ray or Triton.

Version 1 of digits is built once (``build_first_version``); each test runs ``execute`` on a copy of
that state, training here with the package's default TrainParams. Covered: (a) no new data ->
"skipped" with a reason, nothing published; (b) force -> "published" version 2 with its lineage
record and drift reference, a candidate (production at once only with a direct policy); a
candidate on its way is what the next run compares new data with; drift without new data is an
alert, not a version; the data of a version rolled back live is quarantined; (c) only a bad incoming file -> rejected with a report,
"skipped"; (d) mislabelled data -> "gates_failed", nothing published, the file quarantined; and a
failed gate quarantines every file new since the serving version, an earlier run's leftover included.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from services.modelkit.discovery import load_package
from services.models.digits.gates import shift_one_pixel
from services.registry.publish import Registry
from services.retraining.run import Run, build_first_version, execute
from services.retraining.training import train_here
from services.rollout.policy import Policy
from services.settings import Settings
from services.storage import data_store
from services.telemetry import metrics

DIGITS = load_package("services.models.digits")
FAMILY = DIGITS.family
SPLIT = DIGITS.base_data()


@pytest.fixture(scope="module")
def first_build(tmp_path_factory):
    """The var dir after version 1 of digits was built (once per module)."""
    var = tmp_path_factory.mktemp("first-build")
    record = build_first_version(DIGITS, Settings(var_dir=var))
    assert record["outcome"] == "published" and record["version"] == 1, record.get("reason")
    return var


@pytest.fixture
def settings(first_build, tmp_path) -> Settings:
    """A private copy of the version-1 state: each test's run starts from the same place."""
    shutil.copytree(first_build, tmp_path / "var")
    return Settings(var_dir=tmp_path / "var")


def execute_run(settings: Settings, run_id: str, force: bool = False, policy: str = "progressive",
                events: list[dict] | None = None) -> dict:
    registry = Registry.open(settings)
    run = Run(run_id, DIGITS, settings, data_store(settings), registry, events or [{"id": "e1"}], force,
              Policy(strategy=policy))
    run.train = lambda x, y, params: train_here(DIGITS, x, y, params)
    return execute(run, with_triton=False)


def repository_versions(settings: Settings) -> dict[str, list[int]]:
    repository = Registry.open(settings).repository
    return {model: repository.versions(model) for model in FAMILY.models}


def npz(images, labels) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    return buf.getvalue()


def assert_nothing_published(settings: Settings) -> None:
    registry = Registry.open(settings)
    assert repository_versions(settings) == {model: [1] for model in FAMILY.models}
    assert registry.production("digits") == 1 and registry.stages("digits").versions == {1: "production"}
    assert registry.records.version("digits", 2) is None and registry.records.reference("digits", 2) is None


def test_no_new_data_skips_with_a_reason_and_publishes_nothing(settings):
    record = execute_run(settings, "run-a")
    assert record["outcome"] == "skipped"
    assert record["reason"].startswith("no new accepted data since version 1")
    assert "train" not in record["stages"] and record["stages"]["validate"]["new_files"] == []
    assert Registry.open(settings).records.run("run-a")["outcome"] == "skipped"  # stored, as returned
    assert_nothing_published(settings)


def test_force_publishes_version_2_as_a_candidate_with_lineage_and_a_drift_reference(settings):
    record = execute_run(settings, "run-b", force=True)
    assert record["outcome"] == "published", record.get("reason")
    assert record["version"] == 2 and all(g["passed"] for g in record["gates"])
    assert "load_and_verify" not in record["stages"]  # no Triton here
    assert record["stage"] == record["stages"]["go_live"]["stage"] == "candidate"
    registry = Registry.open(settings)
    assert repository_versions(settings) == {model: [1, 2] for model in FAMILY.models}
    book = registry.stages("digits")
    assert book.production == 1 and book.versions[2] == "candidate"  # the policy takes it live, not the run
    (transition,) = book.history(2)
    assert transition["by"] == "retraining run run-b" and transition["to"] == "candidate"
    assert transition["numbers"]["holdout"] == record["stages"]["evaluate_and_gate"]["metrics"]["candidate"]["accuracy"]
    lineage = registry.records.version("digits", 2)
    assert lineage["run_id"] == "run-b" and lineage["version"] == 2 and lineage["events"] == [{"id": "e1"}]
    assert lineage["data"]["files"] == [] and lineage["data"]["base_rows"] == len(SPLIT.train)
    assert lineage["params"]["epochs"] == DIGITS.TrainParams().epochs
    assert lineage["metrics"]["candidate"]["accuracy"] > 0.95
    reference = json.loads(registry.records.reference("digits", 2))
    assert reference["meta"]["version"] == 2


def test_a_bad_incoming_file_only_is_rejected_and_the_run_skipped(settings):
    store = data_store(settings)
    images = SPLIT.train.x[:10].copy()
    images[0, 0, 0] = 40.0
    store.put_bytes("datasets/digits/incoming/bad.npz", npz(images, SPLIT.train.y[:10]))
    record = execute_run(settings, "run-c")
    assert record["outcome"] == "skipped"
    validate = record["stages"]["validate"]
    assert validate["rejected_files"] == ["datasets/digits/rejected/bad.npz"] and validate["accepted_files"] == []
    assert not store.exists("datasets/digits/incoming/bad.npz")
    assert store.exists("datasets/digits/rejected/bad.npz")
    report = json.loads(store.get_bytes("datasets/digits/rejected/bad.npz.report.json"))
    assert any("pixel values must be in 0..16" in r for r in report["reasons"])
    assert_nothing_published(settings)


def test_mislabelled_data_fails_the_gates_and_is_quarantined(settings):
    store = data_store(settings)
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(SPLIT.train), 1000, replace=False)
    images = shift_one_pixel(SPLIT.train.x[chosen])  # new rows, so not refused as contradicting known ones
    store.put_bytes("datasets/digits/incoming/noisy.npz", npz(images, rng.integers(0, 10, 1000)))
    record = execute_run(settings, "run-d")
    assert record["outcome"] == "gates_failed", record.get("reason")
    assert record["stages"]["validate"]["accepted_files"] == ["datasets/digits/accepted/noisy.npz"]
    failed = [g["name"] for g in record["gates"] if not g["passed"]]
    assert failed and record["reason"] == f"failed gates: {failed}"
    assert record["stages"]["evaluate_and_gate"]["quarantined_files"] == ["datasets/digits/quarantined/noisy.npz"]
    assert store.exists("datasets/digits/quarantined/noisy.npz")
    assert not store.exists("datasets/digits/accepted/noisy.npz")
    assert json.loads(store.get_bytes("datasets/digits/quarantined/noisy.npz.report.json"))["run_id"] == "run-d"
    assert "publish" not in record["stages"]
    assert_nothing_published(settings)


def test_a_failed_gate_quarantines_every_new_file_it_trained_on(settings):
    store = data_store(settings)
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(SPLIT.train), 1000, replace=False)
    # Accepted by an earlier run that then failed (Triton did not load, the job died): not in any lineage.
    store.put_bytes("datasets/digits/accepted/noisy.npz",
                    npz(shift_one_pixel(SPLIT.train.x[chosen]), rng.integers(0, 10, 1000)))
    good = np.setdiff1d(np.arange(len(SPLIT.train)), chosen)[:100]
    store.put_bytes("datasets/digits/incoming/good.npz",
                    npz(shift_one_pixel(SPLIT.train.x[good]), SPLIT.train.y[good]))
    record = execute_run(settings, "run-e")
    assert record["outcome"] == "gates_failed", record.get("reason")
    assert sorted(record["stages"]["validate"]["new_files"]) == ["datasets/digits/accepted/good.npz",
                                                                 "datasets/digits/accepted/noisy.npz"]
    assert not store.exists("datasets/digits/accepted/noisy.npz")  # the bad file must not poison the next run


def test_a_direct_policy_makes_the_new_version_production_at_once(settings):
    record = execute_run(settings, "run-f", force=True, policy="direct")
    assert record["outcome"] == "published" and record["stage"] == "production"
    book = Registry.open(settings).stages("digits")
    assert book.production == 2 and book.versions == {1: "archived", 2: "production"}
    assert book.previous_production == 1 and book.in_play() == [1, 2]  # rollback stays instant
    assert Registry.open(settings).repository.served_version(FAMILY) == 2


def test_a_candidate_on_its_way_is_what_the_next_run_compares_with(settings):
    """New data after a candidate was published is judged against the candidate's data, not production's."""
    assert execute_run(settings, "run-g", force=True)["version"] == 2
    record = execute_run(settings, "run-h")
    assert record["outcome"] == "skipped" and record["reason"].startswith("no new accepted data since version 2")
    assert record["stages"]["validate"]["compared_with"] == 2 and record["stages"]["validate"]["serving_version"] == 1


def test_drift_without_new_labelled_data_is_an_alert_not_a_version(settings):
    metrics.reset_metrics("prometheus")
    drift = {"id": "d1", "type": "rts.retrain.requested", "data": {"model": "digits", "reason": "drift"}}
    record = execute_run(settings, "run-i", events=[drift])
    assert record["outcome"] == "skipped" and record["reason"].endswith("drift alert raised")
    assert metrics.sample_value("rts_drift_alerts_total", {"model": "digits"}) == 1
    assert_nothing_published(settings)
    assert execute_run(settings, "run-j")["reason"].endswith("nothing to publish")  # no drift: no alert
    assert metrics.sample_value("rts_drift_alerts_total", {"model": "digits"}) == 1


def test_data_of_a_version_rolled_back_live_is_quarantined_by_the_next_run(settings):
    store = data_store(settings)
    good = np.arange(100)
    store.put_bytes("datasets/digits/incoming/batch.npz", npz(shift_one_pixel(SPLIT.train.x[good]),
                                                               SPLIT.train.y[good]))
    assert execute_run(settings, "run-k")["version"] == 2
    registry = Registry.open(settings)
    registry.retire("digits", FAMILY, 2, by="rollout-controller", reason="live accuracy worse than production")
    record = execute_run(settings, "run-l")
    assert record["stages"]["validate"]["quarantined_files"] == ["datasets/digits/quarantined/batch.npz"]
    assert not store.exists("datasets/digits/accepted/batch.npz")
    report = json.loads(store.get_bytes("datasets/digits/quarantined/batch.npz.report.json"))
    assert "rolled back by its live signals" in json.dumps(report)
    assert record["outcome"] == "skipped"  # nothing new is left to train on


def test_feedback_files_are_new_labelled_data_and_drift_with_them_makes_a_candidate(settings):
    """Labelled feedback the rollout controller wrote is trained on like accepted files (in the lineage,
    with its hash), except rows of the holdout, which never enter training however they come back."""
    from services.rollout.labelled import write_file

    metrics.reset_metrics("prometheus")
    store = data_store(settings)
    features = DIGITS.features(SPLIT.train.x[:200])
    holdout = DIGITS.holdout_features()[:50]
    x = np.concatenate([features, holdout]).reshape(-1, 8, 8)
    y = np.concatenate([SPLIT.train.y[:200], DIGITS.base_data().holdout.y[:50]])
    key = write_file(store, "digits", x, y)
    drift = {"id": "d2", "type": "rts.retrain.requested", "data": {"model": "digits", "reason": "drift"}}
    record = execute_run(settings, "run-m", events=[drift])
    assert record["outcome"] == "published", record.get("reason")
    assert record["stages"]["validate"]["new_files"] == [key]
    assert metrics.sample_value("rts_drift_alerts_total", {"model": "digits"}) in (None, 0)  # data: no alert
    lineage = Registry.open(settings).records.version("digits", record["version"])
    assert [f["key"] for f in lineage["data"]["files"]] == [key]
    assert record["stages"]["train"]["rows"] == len(SPLIT.train) + 200  # the 50 holdout rows were kept out
