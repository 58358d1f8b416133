"""What a task implies: classification and regression postprocessing, metrics and the holdout comparison."""

import numpy as np
import pytest

from services.modelkit import Classification, Regression

DIGITS = Classification(range(10))
TOP = DIGITS.options()


def test_label_confidence_and_top_k_are_ordered():
    scores = np.zeros((2, 10), dtype=np.float32)
    scores[0, [3, 7, 1]] = [0.6, 0.3, 0.1]
    scores[1, 9] = 1.0
    out = DIGITS.postprocess(scores, TOP(top_k=3))
    assert out[0]["label"] == 3 and out[0]["confidence"] == pytest.approx(0.6)
    assert [t["label"] for t in out[0]["top_k"]] == [3, 7, 1]
    assert out[1]["label"] == 9 and out[1]["top_k"][0]["score"] == pytest.approx(1.0)


def test_scores_are_renormalized():
    out = DIGITS.postprocess(np.full((1, 10), 2.0), TOP(top_k=10))
    assert sum(t["score"] for t in out[0]["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_top_k_option_is_bounded_by_the_number_of_classes():
    with pytest.raises(ValueError):
        TOP(top_k=11)
    with pytest.raises(ValueError):
        TOP(top_k=0)
    assert TOP().top_k == 3


def test_wrong_score_shape_is_refused():
    with pytest.raises(ValueError):
        DIGITS.postprocess(np.ones((1, 3)), TOP())


def test_classification_metrics_and_oip_tensors():
    scores = np.eye(10)[[1, 2, 3, 3]]
    metrics = DIGITS.metrics(scores, np.array([1, 2, 3, 4]))
    assert metrics["accuracy"] == 0.75 and metrics["class_recall"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.0}
    tensors = DIGITS.to_tensors(DIGITS.postprocess(scores, TOP()), scores)
    assert tensors["label"].tolist() == [1, 2, 3, 3] and tensors["probabilities"].shape == (4, 10)


def test_regression_postprocess_metrics_and_direction():
    task = Regression()
    out = task.postprocess(np.array([[151.34567], [80.0]]), None)
    assert out == [{"value": 151.3457}, {"value": 80.0}]
    metrics = task.metrics(np.array([[1.0], [3.0]]), np.array([2.0, 2.0]))
    assert metrics["rmse"] == pytest.approx(1.0) and metrics["mae"] == pytest.approx(1.0)
    # Lower RMSE is better: within 1% of production passes, 2% worse fails.
    assert task.better(50.4, 50.0, 0.01) == (True, pytest.approx(50.5))
    assert task.better(51.0, 50.0, 0.01)[0] is False
    assert DIGITS.better(0.985, 0.99, 0.01)[0] is True and DIGITS.better(0.97, 0.99, 0.01)[0] is False
