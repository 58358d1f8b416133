"""The diabetes model package in-process (no Ray, no Triton): schema, data files, training and export,
gates, the OIP inputs, and a whole first-version build."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from pydantic import ValidationError

from services.errors import InvalidInput
from services.modelkit import DataRejected, GateContext, Worker, invalid_instance, row_hashes, validate_instances
from services.modelkit.discovery import load_package
from services.models.diabetes import training
from services.models.diabetes.data import FEATURES, FIELDS
from services.models.diabetes.gates import GATES
from services.retraining.run import build_first_version
from services.serving import oip
from services.settings import Settings
from services.triton.onnx_ensemble import OnnxEnsemble

DIABETES = load_package("services.models.diabetes")
SPLIT = DIABETES.base_data()
BMI = FEATURES.index("bmi")


def instance(row=None) -> dict:
    """One holdout row as a /v1 instance (fields in reverse order: order must not matter)."""
    row = SPLIT.holdout.x[0] if row is None else row
    return {name: float(row[j]) for j, name in reversed(list(enumerate(FEATURES)))}


def refused(value: dict) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        validate_instances(DIABETES.Instance, [instance(), value])
    assert err.value.status == 400 and err.value.message.startswith("instance 1: ")
    return err.value


@pytest.fixture(scope="module")
def trained():
    return DIABETES.fit(DIABETES.features(SPLIT.train.x), SPLIT.train.y, DIABETES.TrainParams(), Worker())


@pytest.fixture(scope="module")
def files(trained):
    return DIABETES.export(trained)


@pytest.fixture(scope="module")
def ensemble(files):
    return OnnxEnsemble(DIABETES.family, files)


def gate_context(candidate) -> GateContext:
    """What the platform's run_gates hands a package's gates, for any candidate predictor."""
    features = DIABETES.features(SPLIT.holdout.x)
    return GateContext(candidate=candidate, production=None, holdout=SPLIT.holdout, holdout_features=features,
                       features=DIABETES.features, predicted=DIABETES.task.predicted,
                       metrics=DIABETES.task.metrics(candidate(features), SPLIT.holdout.y))


# ---- the instance schema ----------------------------------------------------------------------------

def test_instances_in_any_field_order_become_rows_in_feature_order():
    rows = SPLIT.holdout.x[:3]
    instances = validate_instances(DIABETES.Instance, [instance(r) for r in rows])
    matrix = DIABETES.preprocess(instances)
    assert matrix.dtype == np.float32 and matrix.shape == (3, 10)
    np.testing.assert_array_equal(matrix, rows.astype(np.float32))
    assert set(DIABETES.describe()["instance_schema"]["required"]) == set(FEATURES)


@pytest.mark.parametrize("change, code, field", [
    ({"drop": "bmi"}, "missing_field", "bmi"),
    ({"set": ("cholesterol", 0.01)}, "unknown_field", "cholesterol"),
    ({"set": ("age", "0.01")}, "wrong_type", "age"),
    ({"set": ("sex", True)}, "wrong_type", "sex"),
    ({"set": ("s1", None)}, "wrong_type", "s1"),
    ({"set": ("s5", float("nan"))}, "wrong_value", "s5"),
    ({"set": ("bmi", FIELDS["bmi"][1] + 0.01)}, "out_of_range", "bmi"),
    ({"set": ("s6", FIELDS["s6"][0] - 0.01)}, "out_of_range", "s6"),
    ({"set": ("age", 59)}, "out_of_range", "age"),  # age in years, not scaled
])
def test_bad_instances_are_refused_naming_the_field(change, code, field):
    value = instance()
    if "drop" in change:
        del value[change["drop"]]
    else:
        value[change["set"][0]] = change["set"][1]
    error = refused(value)
    assert error.code == code and f"field {field!r}" in error.message


def test_json_instances_are_strict_too():
    # /v1 validates JSON bodies: a number sent as a string is refused there as well.
    body = json.dumps({**instance(), "bmi": "0.05"})
    with pytest.raises(ValidationError) as exc:
        DIABETES.Instance.model_validate_json(body)
    error = invalid_instance(exc.value.errors(), 0)
    assert error.code == "wrong_type" and "'bmi'" in error.message
    assert DIABETES.Instance.model_validate_json(json.dumps({**instance(), "sex": 0})).sex == 0.0  # ints are numbers


# ---- data files -------------------------------------------------------------------------------------

def csv_bytes(x, y, columns=(*FEATURES, "target")) -> bytes:
    table = {**{name: x[:, j] for j, name in enumerate(FEATURES)}, "target": y}
    lines = [",".join(columns)] + [",".join(repr(float(table[c][i])) for c in columns) for i in range(len(y))]
    return ("\n".join(lines) + "\n").encode()


def test_csv_round_trip_in_any_column_order():
    columns = ("target", *reversed(FEATURES))
    parsed = DIABETES.parse_data("new.csv", csv_bytes(SPLIT.holdout.x, SPLIT.holdout.y, columns))
    np.testing.assert_array_equal(parsed.x, SPLIT.holdout.x)
    np.testing.assert_array_equal(parsed.y, SPLIT.holdout.y)
    # Uploaded holdout rows hash as the holdout does, so the platform keeps them out of training.
    assert (row_hashes(parsed.x) == row_hashes(SPLIT.holdout.x)).all()
    np.testing.assert_array_equal(DIABETES.features(parsed.x), SPLIT.holdout.x.astype(np.float32))


def test_bad_csvs_are_rejected_with_every_reason():
    x, y = SPLIT.train.x[:5].copy(), SPLIT.train.y[:5].copy()
    x[2, BMI] = 0.5
    y[4] = -3
    with pytest.raises(DataRejected) as err:
        DIABETES.parse_data("bad.csv", csv_bytes(x, y))
    reasons = err.value.reasons
    assert len(reasons) == 2
    assert "'bmi'" in reasons[0] and "data row 3" in reasons[0] and "0.5" in reasons[0]
    assert "'target'" in reasons[1] and "-3" in reasons[1]

    raw = np.tile([[59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.86, 87]], (3, 1)).astype(float)  # unscaled measurements
    with pytest.raises(DataRejected) as err:
        DIABETES.parse_data("raw.csv", csv_bytes(raw, np.full(3, 151.0)))
    assert any("unscaled" in r for r in err.value.reasons)

    with pytest.raises(DataRejected) as err:  # the CSV checks of read_numeric_csv
        DIABETES.parse_data("cols.csv", b"age,sex,bmi,target\n0.01,0.05,0.02,151\n")
    assert "lacks columns" in err.value.reasons[0]
    header, row = csv_bytes(x[:1], y[:1]).decode().splitlines()
    with pytest.raises(DataRejected) as err:
        DIABETES.parse_data("text.csv", f"{header}\nabc,{row.split(',', 1)[1]}\n".encode())
    assert "'age' is not a number" in err.value.reasons[0]
    with pytest.raises(DataRejected) as err:
        DIABETES.parse_data("data.npz", b"")
    assert ".csv" in err.value.reasons[0]


# ---- training and export ----------------------------------------------------------------------------

def test_export_gives_every_member_named_as_its_config(files):
    family = DIABETES.family
    assert set(files) == set(family.members)
    for name, data in files.items():
        graph = onnx.load_from_string(data).graph
        config = family.member_configs[name]
        assert [i.name for i in graph.input] == [t.name for t in config.inputs]
        assert [o.name for o in graph.output] == [t.name for t in config.outputs]


def test_output_names_come_from_the_config_not_the_code(trained):
    config = DIABETES.family.member_configs[training.LINEAR]
    renamed = dataclasses.replace(config, outputs=(dataclasses.replace(config.outputs[0], name="progression"),))
    graph = onnx.load_from_string(training.member_onnx(trained[training.LINEAR], renamed)).graph
    assert [o.name for o in graph.output] == ["progression"]


def test_the_ensemble_averages_the_two_regressors(trained, ensemble):
    assert type(trained[training.LINEAR][-1]).__name__ != type(trained[training.TREES]).__name__
    x = DIABETES.holdout_features()
    expected = (trained[training.LINEAR].predict(x) + trained[training.TREES].predict(x)) / 2
    out = ensemble.primary(x)
    assert out.shape == (len(x), 1) and out.dtype == np.float32
    assert np.allclose(out[:, 0], expected, rtol=1e-5, atol=1e-3)


def test_holdout_error_is_well_below_the_spread_of_the_target(ensemble):
    metrics = DIABETES.task.metrics(ensemble.primary(DIABETES.holdout_features()), SPLIT.holdout.y)
    assert metrics["rmse"] < 60 < SPLIT.holdout.y.std()
    assert metrics["r2"] > 0.4


def test_every_worker_trains_the_same_models():
    x, y = DIABETES.features(SPLIT.train.x), SPLIT.train.y
    models = [DIABETES.fit(x, y, DIABETES.TrainParams(), Worker(rank=r, world_size=2)) for r in (0, 1)]
    for name in models[0]:
        np.testing.assert_array_equal(models[0][name].predict(x), models[1][name].predict(x))


# ---- gates ------------------------------------------------------------------------------------------

def test_directional_gates_pass_for_the_trained_model(ensemble):
    ctx = gate_context(ensemble.primary)
    results = [gate(ctx) for gate in GATES]
    assert [r.name for r in results] == ["directional_bmi", "directional_s5"]
    assert all(r.passed and r.value >= r.threshold for r in results), results


def test_directional_bmi_gate_fails_when_bmi_lowers_the_prediction(ensemble):
    def reversed_bmi(features):  # the trained model, shown the mirror image of bmi
        flipped = np.array(features, copy=True)
        flipped[:, BMI] = -flipped[:, BMI]
        return ensemble.primary(flipped)

    ctx = gate_context(reversed_bmi)
    bmi, s5 = (gate(ctx) for gate in GATES)
    assert not bmi.passed and bmi.value < 0.5
    assert s5.passed


# ---- the Open Inference Protocol --------------------------------------------------------------------

def columns(rows: np.ndarray, dtype=np.float32) -> dict[str, np.ndarray]:
    return {name: rows[:, j].astype(dtype) for j, name in enumerate(FEATURES)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_tensors_accepts_good_columns(dtype):
    rows = SPLIT.holdout.x[:4]
    matrix = DIABETES.preprocess(DIABETES.from_tensors(columns(rows, dtype)))
    np.testing.assert_array_equal(matrix, rows.astype(dtype).astype(np.float32))


@pytest.mark.parametrize("value, code", [(0.9, "out_of_range"), (float("nan"), "wrong_value")])
def test_from_tensors_refuses_a_bad_value_as_v1_does(value, code):
    tensors = columns(SPLIT.holdout.x[:3])
    tensors["bmi"][2] = value
    with pytest.raises(InvalidInput) as err:
        DIABETES.from_tensors(tensors)
    assert err.value.status == 400 and err.value.code == code
    assert err.value.message.startswith("instance 2: field 'bmi'")


def test_stock_tritonclient_requests_decode_to_instances():
    rows = SPLIT.holdout.x[:3]
    inputs = []
    for name, column in columns(rows).items():
        tensor = httpclient.InferInput(name, [len(column)], "FP32")
        tensor.set_data_from_numpy(column)  # binary by default
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    request = oip.parse_request(body, str(json_size), DIABETES, max_items=64)
    np.testing.assert_array_equal(DIABETES.preprocess(request.inputs), rows.astype(np.float32))

    bad = [{"name": name, "datatype": "FP64", "shape": [1, 1], "data": [float(v)]}
           for name, v in zip(FEATURES, rows[0])]
    bad[BMI]["data"] = [1.5]
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(json.dumps({"inputs": bad}).encode(), None, DIABETES, max_items=64)
    assert err.value.code == "out_of_range" and "'bmi'" in err.value.message


def test_drift_is_watched_on_the_ten_features():
    x = DIABETES.holdout_features()
    assert DIABETES.drift_features == FEATURES
    np.testing.assert_array_equal(DIABETES.drift_values(x), x)


# ---- a whole first version --------------------------------------------------------------------------

def test_first_version_is_built_and_published(tmp_path):
    record = build_first_version(DIABETES, Settings(var_dir=tmp_path))
    assert record["outcome"] == "published", record.get("reason")
    assert record["version"] == 1
    gates = {g["name"]: g for g in record["gates"]}
    assert set(gates) == {"holdout_rmse_vs_production", "directional_bmi", "directional_s5", "latency_p50_ms"}
    assert all(g["passed"] for g in gates.values()), gates
    assert gates["holdout_rmse_vs_production"]["value"] < 60
    for member in DIABETES.family.members:
        assert (tmp_path / "model_repository" / member / "1" / "model.onnx").is_file()
