"""Feedback as training data (``services.rollout.labelled``), and the controller writing it.

Covered: which packages' input rows can be trained on (both bundled models: yes; a package whose
features are not idempotent: no); a truth becomes a class index or a value, and a label the model
does not have is refused; a data file round-trips; the controller writes joined feedback (the rows
the version was given, shaped as training rows, and the targets) in batches through the storage
port, writes nothing without rows, and refuses a wrong label without losing the rest of a report.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.modelkit.discovery import load_package
from services.registry.publish import Registry
from services.registry.records import Records
from services.registry.repository import ModelRepository
from services.rollout import controller as controller_module
from services.rollout.controller import Controller
from services.rollout.labelled import feedback_prefix, read_file, target_of, trainable_shape, write_file
from services.storage import open_store

DIGITS = load_package("services.models.digits")
DIABETES = load_package("services.models.diabetes")


class Tokenizer(type(DIABETES)):
    """A package whose features are not its raw rows: its feedback cannot be trained on as it is."""

    def features(self, x):
        return np.asarray(x, dtype=np.float32) * 2.0


def test_the_bundled_models_input_rows_are_training_rows():
    assert trainable_shape(DIGITS) == (8, 8)
    assert trainable_shape(DIABETES) == (10,)
    assert trainable_shape(Tokenizer()) is None


def test_a_truth_becomes_a_target():
    assert target_of(DIGITS, 7) == 7 and target_of(DIGITS, "7") == 7
    assert target_of(DIABETES, "151.5") == 151.5
    with pytest.raises(ValueError, match="not a label of digits"):
        target_of(DIGITS, "cat")
    with pytest.raises(ValueError, match="not a finite value"):
        target_of(DIABETES, float("nan"))


def test_a_feedback_file_round_trips(tmp_path):
    store = open_store(f"file://{tmp_path}")
    x, y = np.random.default_rng(0).uniform(0, 16, (5, 8, 8)).astype(np.float32), np.arange(5)
    key = write_file(store, "digits", x, y)
    assert key.startswith(feedback_prefix("digits")) and key.endswith("-5.npz")
    got_x, got_y = read_file(store.get_bytes(key))
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y)


@pytest.fixture
def controller(tmp_path) -> Controller:
    registry = Registry(ModelRepository(open_store(f"file://{tmp_path}/repo")),
                        Records(open_store(f"file://{tmp_path}/bucket")))
    return Controller(registry, {"digits": DIGITS, "diabetes": DIABETES})


def predicted(request_id: str, model: str, values: list, rows: np.ndarray | None) -> dict:
    return {"replica": "r", "at": time.time(), "versions": {},
            "predictions": [(request_id, model, "1", values, time.time(), rows)]}


def test_joined_feedback_becomes_training_data_in_batches(controller, monkeypatch):
    monkeypatch.setattr(controller_module, "FEEDBACK_FILE_ROWS", 6)
    rows = DIGITS.holdout_features()[:8]
    controller.report(predicted("a", "digits", [0, 1, 2], rows[:3]))
    controller.report(predicted("b", "digits", [3, 4], rows[3:5]))
    controller.report(predicted("c", "digits", [5], None))  # no rows (too large to keep): not data
    assert controller.feedback("a", [0, 1, 9])["status"] == "joined"
    controller.feedback("c", 5)
    controller.flush_logs()
    store = controller.records.store
    assert list(store.list(feedback_prefix("digits"))) == []  # 3 rows wait for a batch of 6
    controller.feedback("b", ["3", "4"])
    controller.report(predicted("d", "digits", [6], rows[5:6]))
    controller.feedback("d", 6)
    controller.flush_logs()
    (written,) = [o.key for o in store.list(feedback_prefix("digits"))]
    x, y = read_file(store.get_bytes(written))
    assert x.shape == (6, 8, 8) and np.allclose(x.reshape(6, 64), rows[[0, 1, 2, 3, 4, 5]])
    assert y.tolist() == [0, 1, 9, 3, 4, 6]  # the truth, as class indices: what users said, not what was predicted


def test_a_late_batch_is_written_after_its_maximum_age(controller, monkeypatch):
    monkeypatch.setattr(controller_module, "FEEDBACK_FILE_MAX_AGE_S", 0.0)
    rows = DIABETES.holdout_features()[:2]
    controller.report(predicted("p", "diabetes", [150.0, 90.0], rows))
    controller.feedback("p", [151.0, 80.5])
    controller.flush_logs()
    (written,) = [o.key for o in controller.records.store.list(feedback_prefix("diabetes"))]
    x, y = read_file(controller.records.store.get_bytes(written))
    assert x.shape == (2, 10) and y.tolist() == [151.0, 80.5]


def test_a_label_the_model_does_not_have_is_refused_and_the_report_goes_on(controller):
    controller.report(predicted("x", "digits", [1], None))
    with pytest.raises(ValueError, match="not a label of digits"):
        controller.feedback("x", "dog")
    assert controller.window("digits", "1").feedback == 0
    controller.feedback("y", "dog")  # pending: its prediction arrives with a good one in one report
    snapshot = predicted("y", "digits", [1], None)
    snapshot["predictions"].append(("z", "digits", "1", [2], time.time(), None))
    controller.report(snapshot)
    assert "z" in controller.predictions["digits"]
