"""A model the platform has never seen, brought as a user brings one: served and retrained with no edit.

The package (``tests/third_model/iris_pkg``) was copied into a temporary folder as ``acme_iris``
and listed in ``RTS_MODELS`` when the session's stack started (conftest.py): its code and its
Triton folders live outside this repository's platform code, and nothing in the platform names it.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from sklearn.datasets import load_iris

from tests.integration.traffic import Traffic

pytestmark = pytest.mark.integration

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS = load_iris()


def flowers(rows) -> list[dict]:
    return [dict(zip(FEATURES, map(float, row))) for row in rows]


def test_it_is_listed_with_its_schema(gateway):
    models = {m["name"]: m for m in gateway.get("/v1/models").json()["models"]}
    assert set(models) == {"digits", "diabetes", "iris"}
    iris = models["iris"]
    assert iris["serving_version"] == 1 and iris["versions"] == [1] and iris["task"] == "classification"
    assert set(iris["instance_schema"]["properties"]) == set(FEATURES)
    assert iris["labels"] == ["setosa", "versicolor", "virginica"]


def test_it_predicts_species_over_v1_and_v2(gateway, stack):
    r = gateway.post("/v1/models/iris/predict?top_k=3", json={"instances": flowers(IRIS.data[::10])})
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["predictions"]]
    truth = [IRIS.target_names[t] for t in IRIS.target[::10]]
    assert np.mean(np.array(labels) == np.array(truth)) >= 0.9
    assert all(len(p["top_k"]) == 3 for p in r.json()["predictions"])

    client = httpclient.InferenceServerClient(stack.gateway_url.removeprefix("http://"))
    try:
        inputs = []
        for j, name in enumerate(FEATURES):
            tensor = httpclient.InferInput(name, [3], "FP32")
            tensor.set_data_from_numpy(IRIS.data[[0, 60, 120], j].astype(np.float32))
            inputs.append(tensor)
        result = client.infer("iris", inputs)
        assert [v.decode() for v in result.as_numpy("label")] == ["setosa", "versicolor", "virginica"]
        assert result.as_numpy("probabilities").shape == (3, 3)
    finally:
        client.close()

    bad = flowers(IRIS.data[:1])[0] | {"petal_width": -1.0}
    r = gateway.post("/v1/models/iris/predict", json={"instances": [bad]})
    assert r.status_code == 400 and "petal_width" in r.json()["error"]["message"]


def test_it_retrains_from_a_dropped_csv_with_no_failed_requests(stack, gateway):
    admin = {"Authorization": f"Bearer {stack.settings.admin.token.get_secret_value()}"}
    rng = np.random.default_rng(3)
    rows = IRIS.data + rng.normal(0, 0.05, IRIS.data.shape)  # remeasured flowers
    csv = io.StringIO()
    csv.write(",".join([*FEATURES, "species"]) + "\n")
    for row, species in zip(rows, IRIS.target):
        csv.write(",".join(f"{v:.3f}" for v in row) + f",{species}\n")
    incoming = Path(stack.settings.data_uri.removeprefix("file://")) / "datasets/iris/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "garden.csv").write_text(csv.getvalue())

    with Traffic(stack.gateway_url, [("/v1/models/iris/predict", {"instances": flowers(IRIS.data[:5])})]) as traffic:
        run_id = gateway.post("/admin/models/iris/retrain", headers=admin, json={"reason": "new flowers"}).json()["run_id"]
        deadline = time.monotonic() + 240
        while (record := gateway.get(f"/admin/runs/{run_id}", headers=admin).json()).get("outcome") in (None, "running"):
            assert time.monotonic() < deadline, record
            time.sleep(1)
        time.sleep(1.0)
    assert record["outcome"] == "published", (record.get("reason"), record.get("traceback"))
    assert record["model"] == "iris" and record["version"] == 2
    assert {g["name"] for g in record["gates"]} >= {"holdout_accuracy_vs_production", "setosa_recall"}
    assert traffic.failed == 0, traffic.errors[:5]
    assert "2" in traffic.versions["iris"]
    assert gateway.get("/v1/models/iris").json()["serving_version"] == 2
