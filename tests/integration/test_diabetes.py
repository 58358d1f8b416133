"""The second reference model, a tabular regressor, through the real stack: /v1 with named fields,
the 400s that name the field, the stock tritonclient on /v2, and a new CSV becoming a live version
(through the listener, as a user drops it) with no failed request, while digits serve on untouched."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from services.models.diabetes.data import FEATURES, TARGET, load_split
from services.models.digits.data import load_split as digits_split
from services.runtime.stack import Listener
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.integration

SPLIT = load_split()


def patients(rows: np.ndarray) -> list[dict]:
    return [dict(zip(FEATURES, map(float, row))) for row in rows]


def test_named_fields_in_any_order_give_values(gateway):
    one = patients(SPLIT.holdout.x[:1])[0]
    shuffled = dict(reversed(list(one.items())))
    r = gateway.post("/v1/models/diabetes/predict", json={"instances": [one, shuffled]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == "diabetes" and body["model"]["version"].isdigit() and body["request_id"]
    values = [p["value"] for p in body["predictions"]]
    assert values[0] == values[1] and 25 < values[0] < 346  # the range of progression scores in the data


def test_holdout_error_through_the_api_is_the_models(gateway):
    predictions = []
    for start in range(0, len(SPLIT.holdout), 32):
        r = gateway.post("/v1/models/diabetes/predict", json={"instances": patients(SPLIT.holdout.x[start:start + 32])})
        assert r.status_code == 200, r.text
        predictions += [p["value"] for p in r.json()["predictions"]]
    rmse = float(np.sqrt(((np.array(predictions) - SPLIT.holdout.y) ** 2).mean()))
    assert rmse < 65, rmse  # the target's own spread is about 80; version 1 has about 57


@pytest.mark.parametrize("change, code, field", [
    (lambda p: p.pop("bmi"), "missing_field", "bmi"),
    (lambda p: p.update(weight=80.0), "unknown_field", "weight"),
    (lambda p: p.update(bmi="0.06"), "wrong_type", "bmi"),
    (lambda p: p.update(age=True), "wrong_type", "age"),
    (lambda p: p.update(s5=None), "wrong_type", "s5"),
    (lambda p: p.update(bp=3.0), "out_of_range", "bp"),
])
def test_bad_fields_are_400s_that_name_the_field(gateway, change, code, field):
    good, bad = patients(SPLIT.holdout.x[:2])
    change(bad)
    r = gateway.post("/v1/models/diabetes/predict", json={"instances": [good, bad]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == code and "instance 1" in error["message"] and repr(field) in error["message"]


def test_files_are_refused_for_a_tabular_model(gateway):
    r = gateway.post("/v1/models/diabetes/predict", files=[("file", ("a.csv", b"1,2", "text/csv"))])
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_the_stock_tritonclient_works_with_named_columns(stack):
    client = httpclient.InferenceServerClient(stack.gateway_url.removeprefix("http://"))
    try:
        meta = client.get_model_metadata("diabetes")
        assert [i["name"] for i in meta["inputs"]] == list(FEATURES)
        assert [o["name"] for o in meta["outputs"]] == ["value"]
        rows = SPLIT.holdout.x[:8].astype(np.float32)
        inputs = []
        for j, name in enumerate(FEATURES):
            tensor = httpclient.InferInput(name, [len(rows)], "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(rows[:, j]))
            inputs.append(tensor)
        values = client.infer("diabetes", inputs).as_numpy("value")
        assert values.shape == (8,) and np.isfinite(values).all()
        inputs[2].set_data_from_numpy(np.full(len(rows), 5.0, dtype=np.float32))  # bmi far out of range
        with pytest.raises(InferenceServerException, match="bmi"):
            client.infer("diabetes", inputs)
    finally:
        client.close()


def test_a_new_csv_becomes_a_live_version_with_no_failed_requests(stack, gateway, tmp_path):
    admin = {"Authorization": f"Bearer {stack.settings.admin.token.get_secret_value()}"}
    before = gateway.get("/admin/models/diabetes", headers=admin).json()["serving"]
    digits_before = gateway.get("/admin/models/digits", headers=admin).json()["serving"]
    # New measurements: training patients measured again (a little noise), with their outcomes.
    rng = np.random.default_rng(7)
    idx = rng.choice(len(SPLIT.train), 150, replace=False)
    rows = SPLIT.train.x[idx] + rng.normal(0, 0.003, (150, len(FEATURES)))
    csv = io.StringIO()
    columns = [TARGET, *reversed(FEATURES)]  # any column order
    csv.write(",".join(columns) + "\n")
    for row, target in zip(rows, SPLIT.train.y[idx]):
        values = dict(zip(FEATURES, row), **{TARGET: target})
        csv.write(",".join(f"{values[c]:.6f}" for c in columns) + "\n")
    incoming = Path(stack.settings.data_uri.removeprefix("file://")) / "datasets/diabetes/incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / ".clinic-7.csv.partial").write_text(csv.getvalue())
    (incoming / ".clinic-7.csv.partial").rename(incoming / "clinic-7.csv")  # appears whole, as an upload would

    # Every held-out row in turn, not one row again and again: that would be drifted traffic, whose
    # retrain request would (rightly) join this test's runs and spend the drift cooldown of later tests.
    digits = digits_split().holdout.x
    requests = [("/v1/models/diabetes/predict", {"instances": patients(SPLIT.holdout.x[i:i + 8])})
                for i in range(0, len(SPLIT.holdout), 8)]
    requests += [("/v1/models/digits/predict", {"instances": [{"pixels": d.tolist()} for d in digits[i:i + 32]]})
                 for i in range(0, len(digits), 32)]
    with Listener(stack.job_env(), tmp_path / "listener.log", ("--debounce", "1")) as listener, \
            Traffic(stack.gateway_url, requests) as traffic:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert listener.running, (tmp_path / "listener.log").read_text()[-2000:]
            serving = gateway.get("/admin/models/diabetes", headers=admin).json()["serving"]
            if serving != before:
                break
            time.sleep(2)
        else:
            raise AssertionError((tmp_path / "listener.log").read_text()[-3000:])
        time.sleep(1.0)  # traffic on the new version
    assert traffic.failed == 0, traffic.errors[:5]
    assert str(serving) in traffic.versions["diabetes"] and traffic.ok > 10
    record = next(v for v in gateway.get("/admin/models/diabetes", headers=admin).json()["versions"]
                  if v["version"] == serving)
    assert [f["key"] for f in record["lineage"]["data"]["files"]] == ["datasets/diabetes/accepted/clinic-7.csv"]
    assert all(g["passed"] for g in record["lineage"]["gates"])
    assert {g["name"] for g in record["lineage"]["gates"]} >= {"holdout_rmse_vs_production", "directional_bmi"}
    # Digits were not retrained, and answered throughout from the same version.
    assert gateway.get("/admin/models/digits", headers=admin).json()["serving"] == digits_before
    assert traffic.versions["digits"] == {str(digits_before)}
