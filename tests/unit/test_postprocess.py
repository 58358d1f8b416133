import numpy as np
import pytest

from services.models.classification import ClassificationPostprocess

POST = ClassificationPostprocess(list(range(10)))


def test_label_confidence_and_top_k_are_ordered():
    scores = np.zeros((2, 10), dtype=np.float32)
    scores[0, [3, 7, 1]] = [0.6, 0.3, 0.1]
    scores[1, 9] = 1.0
    out = POST(scores, top_k=3)
    assert out[0]["label"] == 3 and out[0]["confidence"] == pytest.approx(0.6)
    assert [t["label"] for t in out[0]["top_k"]] == [3, 7, 1]
    assert out[1]["label"] == 9 and out[1]["top_k"][0]["score"] == pytest.approx(1.0)


def test_scores_are_renormalized():
    out = POST(np.full((1, 10), 2.0), top_k=10)
    assert sum(t["score"] for t in out[0]["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_top_k_is_clamped_to_number_of_classes():
    assert len(POST(np.eye(10)[:1], top_k=50)[0]["top_k"]) == 10


def test_wrong_score_shape_is_refused():
    with pytest.raises(ValueError):
        POST(np.ones((1, 3)), top_k=1)
