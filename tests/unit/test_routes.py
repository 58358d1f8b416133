"""Every route of the gateway app, in-process through httpx's ASGI transport (no Ray, no Triton).

The app is the real one (``create_app``) over the real pipeline stages; only Triton is replaced by
``FakeTriton``, which runs the real ONNX ensembles in this process (digits: the conftest's trained
ensemble; diabetes: one trained here), so every answer is a real model answer. Version 1 of both
models is built into a temporary ``var_dir`` (``build_first_version``), so the routes that read the
registry (``/v1/models``, ``/admin``) see real versions, lineage and run records.

Covered:

- ``/v1/models/<name>/predict`` and ``/v1/predict``: multipart files, JSON pixels, JSON base64
  images, named tabular fields in any order; the 4xx contract (missing / extra / wrongly typed /
  out-of-range fields naming the instance and field, 415, 404, 413, 422, bad and unknown options,
  empty batches) and X-Request-ID;
- ``/v2`` (Open Inference Protocol): server and model metadata, liveness, readiness, JSON and
  binary inference, its error shape;
- ``/v1/models``, ``/v1/models/<name>``, ``/healthz``, ``/drift``, ``/metrics``, ``/openapi.json``,
  ``/docs``;
- ``/admin``: the bearer token, versions with lineage, runs, rollback and promote refusals, the rollout
  status and policy without a controller, retrain submission; ``/v1/feedback`` validation.

Each request runs in its own event loop (``asyncio.run``): pytest-asyncio is not installed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from services.errors import ServingError
from services.events.base import RETRAIN_REQUESTED, CloudEvent
from services.modelkit import Worker
from services.modelkit.discovery import load_models
from services.models.diabetes.data import FEATURES, FIELDS, load_split
from services.models.digits import data as digits_data
from services.models.digits.samples import holdout_images
from services.retraining.run import build_first_version
from services.serving.app import create_app
from services.serving.deps import Gateway
from services.serving.pipeline import InferencePipeline
from services.serving.stages import LocalPostprocess, LocalPreprocess, PostprocessStage, PreprocessStage
from services.settings import Settings
from services.triton.client import InferResult
from services.triton.onnx_ensemble import OnnxEnsemble, as_inputs

TOKEN = "routes-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIABETES_HOLDOUT = load_split().holdout.x


# ---- helpers ------------------------------------------------------------------------------------

class FakeTriton:
    """The ``Inference`` stage client, answered by real ONNX ensembles in this process.

    ``version`` is what Triton says answered when no version is asked for; ``ready`` is what
    ``health()`` says. ``calls`` records (model, rows, version) of every inference.
    """

    def __init__(self, ensembles: dict[str, OnnxEnsemble], version: str = "1") -> None:
        self.ensembles, self.version = ensembles, version
        self.ready: tuple[bool, str] = (True, "ok")
        self.calls: list[tuple[str, np.ndarray, str]] = []

    async def infer(self, model: str, rows: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> InferResult:
        self.calls.append((model, rows, version))
        ensemble = self.ensembles[model]
        return InferResult(ensemble.run(as_inputs(ensemble.family, rows)), version or self.version)

    async def health(self) -> tuple[bool, str]:
        return self.ready


class Api:
    """Requests to an ASGI app through ``httpx.ASGITransport``, one ``asyncio.run`` per request."""

    def __init__(self, app) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)


def make_app(settings: Settings, models: dict, triton: FakeTriton):
    pipeline = InferencePipeline(LocalPreprocess(PreprocessStage(models)), triton,
                                 LocalPostprocess(PostprocessStage(models)), models=models)
    return create_app(Gateway(settings, models, pipeline))


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """The /v1 error body's message, after checking its status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def oip_error_of(response: httpx.Response, status: int, code: str) -> str:
    """The OIP error body {"error": "<message>", "code": ...}: a string, as tritonclient expects."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["code"] == code, body
    return body["error"]


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def var_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("routes")


@pytest.fixture(scope="module")
def settings(var_dir) -> Settings:
    return Settings(var_dir=var_dir, admin={"token": TOKEN})


@pytest.fixture(scope="module")
def models(settings):
    models = load_models(settings)
    assert list(models) == ["digits", "diabetes"]  # the bundled packages, digits first (the default)
    return models


@pytest.fixture(scope="module")
def first_runs(settings, models) -> dict[str, dict]:
    """Version 1 of both models in the registry, as `rts models init` builds it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("services.retraining.run.code_version", lambda: "test-code")  # no git subprocesses here
        runs = {name: build_first_version(package, settings) for name, package in models.items()}
    assert all(r["outcome"] == "published" and r["version"] == 1 for r in runs.values()), runs
    return runs


@pytest.fixture(scope="module")
def diabetes_ensemble(models) -> OnnxEnsemble:
    package = models["diabetes"]
    split = package.base_data()
    trained = package.fit(package.features(split.train.x), split.train.y, package.TrainParams(), Worker())
    return OnnxEnsemble(package.family, package.export(trained))


@pytest.fixture(scope="module")
def triton(digits, diabetes_ensemble) -> FakeTriton:
    return FakeTriton({"digits": digits.ensemble, "diabetes": diabetes_ensemble})


@pytest.fixture(scope="module")
def api(settings, models, triton, first_runs) -> Api:
    return Api(make_app(settings, models, triton))


@pytest.fixture
def triton_state(triton):
    """Restores the fake Triton's readiness after a test changes it."""
    yield triton
    triton.ready = (True, "ok")


def patient(i: int = 0) -> dict:
    """Holdout row i of the diabetes data as a /v1 instance, its fields in reverse order."""
    row = DIABETES_HOLDOUT[i]
    return {name: float(row[j]) for j, name in reversed(list(enumerate(FEATURES)))}


def digit_grid(i: int) -> tuple[list[list[float]], int]:
    """Holdout digit i as an 8x8 pixel grid on the 0..16 scale, and its true label."""
    holdout = digits_data.load_split().holdout
    return np.asarray(holdout.x[i], dtype=float).reshape(8, 8).tolist(), int(holdout.y[i])


def expected_values(ensemble: OnnxEnsemble, instances: list[dict]) -> list[float]:
    rows = np.asarray([[inst[name] for name in FEATURES] for inst in instances], dtype=np.float32)
    return [round(float(v), 4) for v in ensemble.primary(rows).reshape(len(rows), -1)[:, 0]]


# ---- /v1 predict: digits ------------------------------------------------------------------------

def test_digits_multipart_files_are_classified_by_the_real_ensemble(api, models, digits, triton):
    images = holdout_images(5)
    files = [("file", (f"d{i}.img", img.data, "application/octet-stream")) for i, img in enumerate(images)]
    r = api.post("/v1/models/digits/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    package = models["digits"]
    want = package.postprocess(digits.ensemble.run({"pixels": package.preprocess([i.data for i in images])}),
                               package.Options())
    assert body["predictions"] == want
    assert body["model"] == {"name": "digits", "version": "1"}
    assert sum(p["label"] == img.label for p, img in zip(body["predictions"], images)) >= 4
    assert all(len(p["top_k"]) == 3 for p in body["predictions"])  # the package's default top_k
    assert triton.calls[-1][0] == "digits" and triton.calls[-1][1].shape == (5, 64)


def test_digits_json_pixels_and_base64_images(api):
    grids = [digit_grid(i) for i in range(6)]
    r = api.post("/v1/models/digits/predict?top_k=1", json={"instances": [{"pixels": g} for g, _ in grids]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert sum(p["label"] == label for p, (_, label) in zip(predictions, grids)) >= 5
    assert all(len(p["top_k"]) == 1 and p["top_k"][0]["label"] == p["label"] for p in predictions)

    image = holdout_images(1, seed=3)[0]
    r = api.post("/v1/models/digits/predict?top_k=10",
                 json={"instances": [{"image_b64": base64.b64encode(image.data).decode()}]})
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    assert sorted(t["label"] for t in prediction["top_k"]) == list(range(10))
    assert sum(t["score"] for t in prediction["top_k"]) == pytest.approx(1.0, abs=1e-4)


def test_v1_predict_defaults_to_digits_and_takes_model_in_the_query(api, diabetes_ensemble):
    grid, label = digit_grid(0)
    r = api.post("/v1/predict", json={"instances": [{"pixels": grid}]})
    assert r.status_code == 200, r.text
    assert r.json()["model"]["name"] == "digits" and r.json()["predictions"][0]["label"] == label

    r = api.post("/v1/predict?model=diabetes", json={"instances": [patient(0)]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == {"name": "diabetes", "version": "1"}
    assert r.json()["predictions"] == [{"value": expected_values(diabetes_ensemble, [patient(0)])[0]}]


# ---- /v1 predict: diabetes ----------------------------------------------------------------------

def test_diabetes_named_fields_in_any_order(api, diabetes_ensemble):
    shuffled = [dict(sorted(patient(i).items())) for i in range(3)]  # alphabetical, not FEATURES order
    shuffled[1] = dict(reversed(list(patient(1).items())))  # FEATURES order again
    r = api.post("/v1/models/diabetes/predict", json={"instances": shuffled})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "model", "request_id"}
    assert body["model"] == {"name": "diabetes", "version": "1"}
    assert [set(p) for p in body["predictions"]] == [{"value"}] * 3
    assert all(isinstance(p["value"], float) for p in body["predictions"])
    assert [p["value"] for p in body["predictions"]] == expected_values(diabetes_ensemble, shuffled)
    assert len({p["value"] for p in body["predictions"]}) == 3  # three patients, three answers


@pytest.mark.parametrize("change, code", [
    (lambda p: p.pop("bmi"), "missing_field"),
    (lambda p: p.update(bmi="0.01"), "wrong_type"),
    (lambda p: p.update(bmi=True), "wrong_type"),
    (lambda p: p.update(bmi=None), "wrong_type"),
    (lambda p: p.update(bmi=FIELDS["bmi"][1] + 0.01), "out_of_range"),
    (lambda p: p.update(bmi=FIELDS["bmi"][0] - 0.01), "out_of_range"),
], ids=["missing", "string", "bool", "null", "above_range", "below_range"])
def test_diabetes_bad_field_is_a_400_naming_instance_and_field(api, change, code):
    bad = patient(1)
    change(bad)
    message = error_of(api.post("/v1/models/diabetes/predict", json={"instances": [patient(0), bad]}), 400, code)
    assert message.startswith("instance 1: ") and "'bmi'" in message, message


def test_diabetes_extra_field_is_unknown_field(api):
    message = error_of(api.post("/v1/models/diabetes/predict",
                                json={"instances": [patient(0), patient(1), {**patient(2), "height": 0.1}]}),
                       400, "unknown_field")
    assert message.startswith("instance 2: ") and "'height'" in message, message


def test_diabetes_refuses_file_uploads_with_415(api):
    r = api.post("/v1/models/diabetes/predict", files=[("file", ("a.png", holdout_images(1)[0].data, "image/png"))])
    assert "JSON instances" in error_of(r, 415, "unsupported_media_type")
    r = api.post("/v1/predict?model=diabetes", content=b"age=1", headers={"Content-Type": "text/plain"})
    error_of(r, 415, "unsupported_media_type")


# ---- /v1 predict: the rest of the 4xx contract --------------------------------------------------

def test_unknown_model_is_404_everywhere(api):
    body = {"instances": [patient(0)]}
    assert "'x'" in error_of(api.post("/v1/models/x/predict", json=body), 404, "unknown_model")
    error_of(api.post("/v1/predict?model=x", json=body), 404, "unknown_model")
    error_of(api.get("/v1/models/x"), 404, "unknown_model")
    error_of(api.get("/drift?model=x"), 404, "unknown_model")
    oip_error_of(api.get("/v2/models/x"), 404, "unknown_model")
    oip_error_of(api.post("/v2/models/x/infer", json={"inputs": []}), 404, "unknown_model")


@pytest.mark.parametrize("value", ["0", "11", "three", ""])
def test_bad_top_k_is_400(api, value):
    grid, _ = digit_grid(0)
    r = api.post(f"/v1/models/digits/predict?top_k={value}", json={"instances": [{"pixels": grid}]})
    assert "top_k" in error_of(r, 400, "bad_top_k")


def test_unknown_query_option_is_400(api):
    grid, _ = digit_grid(0)
    r = api.post("/v1/models/digits/predict?topk=2", json={"instances": [{"pixels": grid}]})
    assert "'topk'" in error_of(r, 400, "unknown_option")
    # diabetes takes no options at all; ?model= of /v1/predict is not one of them
    error_of(api.post("/v1/predict?model=diabetes&top_k=2", json={"instances": [patient(0)]}), 400,
             "unknown_option")
    error_of(api.post("/v1/models/diabetes/predict?model=diabetes", json={"instances": [patient(0)]}), 400,
             "unknown_option")


def test_body_shape_errors(api):
    error_of(api.post("/v1/models/diabetes/predict", json={"rows": [patient(0)]}), 422, "invalid_request")
    error_of(api.post("/v1/models/diabetes/predict", json=[patient(0)]), 422, "invalid_request")
    error_of(api.post("/v1/models/diabetes/predict", content=b"{not json",
                      headers={"Content-Type": "application/json"}), 422, "invalid_request")
    error_of(api.post("/v1/models/diabetes/predict", json={"instances": []}), 400, "empty_batch")
    error_of(api.post("/v1/models/diabetes/predict", content=b"", headers={"Content-Type": "application/json"}),
             400, "empty_batch")
    error_of(api.post("/v1/models/digits/predict", files=[("other", ("a.png", b"x", "image/png"))]), 400,
             "empty_batch")
    # a digit instance needs exactly one of image_b64 / pixels
    message = error_of(api.post("/v1/models/digits/predict", json={"instances": [{}]}), 400, "bad_instance")
    assert message.startswith("instance 0: ")


def test_digits_input_errors_name_the_item(api):
    grid, _ = digit_grid(0)
    message = error_of(api.post("/v1/models/digits/predict", json={"instances": [{"pixels": grid}, {"pixels": [[0]]}]}),
                       400, "wrong_shape")
    assert message.startswith("item 1: ")
    error_of(api.post("/v1/models/digits/predict", json={"instances": [{"pixels": [[17] * 8] * 8}]}), 400,
             "wrong_value")
    error_of(api.post("/v1/models/digits/predict", json={"instances": [{"image_b64": "@@not base64"}]}), 400,
             "bad_base64")
    message = error_of(api.post("/v1/models/digits/predict",
                                files=[("file", ("a.png", holdout_images(1)[0].data, "image/png")),
                                       ("file", ("b.png", b"not an image", "image/png"))]), 400, "not_an_image")
    assert message.startswith("item 1: ")
    error_of(api.post("/v1/models/digits/predict", files=[("file", (None, "a text field"))]), 400, "not_a_file")


@pytest.mark.parametrize("value", [True, "1"], ids=["bool", "string"])
def test_digits_pixels_must_be_numbers(api, value):
    error_of(api.post("/v1/models/digits/predict", json={"instances": [{"pixels": [[value] * 8] * 8}]}), 400,
             "wrong_type")


def test_diabetes_non_finite_numbers_are_refused(api):
    for raw in (b'{"instances": [{"age": NaN}]}', b'{"instances": [{"age": 1e400}]}'):
        message = error_of(api.post("/v1/models/diabetes/predict", content=raw,
                                    headers={"Content-Type": "application/json"}), 400, "wrong_value")
        assert "'age'" in message


def test_too_many_instances_is_413(api, settings):
    limit = settings.limits.max_batch_items
    r = api.post("/v1/models/diabetes/predict", json={"instances": [patient(0)] * (limit + 1)})
    assert str(limit) in error_of(r, 413, "too_many_items")
    assert api.post("/v1/models/diabetes/predict", json={"instances": [patient(0)] * limit}).status_code == 200


def test_too_many_files_is_413(api, settings):
    image = holdout_images(1)[0].data
    limit = settings.limits.max_batch_items
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(limit + 1)]
    assert str(limit) in error_of(api.post("/v1/models/digits/predict", files=files), 413, "too_many_items")


def test_too_many_files_is_413_however_many(api, settings):
    image = holdout_images(1)[0].data
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(settings.limits.max_batch_items + 2)]
    error_of(api.post("/v1/models/digits/predict", files=files), 413, "too_many_items")


def test_body_over_the_limit_is_413(var_dir, models, triton, first_runs):
    small = Api(make_app(Settings(var_dir=var_dir, limits={"max_body_bytes": 2000}), models, triton))
    big = {"instances": [patient(i) for i in range(20)]}  # ~4 kB
    r = small.post("/v1/models/diabetes/predict", json=big)
    assert "2000-byte limit" in error_of(r, 413, "body_too_large")
    # a streamed body (no Content-Length) is cut off as it grows past the limit
    payload = json.dumps(big).encode()

    async def chunks():
        for i in range(0, len(payload), 500):
            yield payload[i:i + 500]

    r = small.post("/v1/models/diabetes/predict", content=chunks(), headers={"Content-Type": "application/json"})
    error_of(r, 413, "body_too_large")
    # on /v2 the same refusal has the OIP shape
    oip_error_of(small.post("/v2/models/diabetes/infer", content=payload), 413, "body_too_large")
    assert small.post("/v1/models/diabetes/predict", json={"instances": [patient(0)]}).status_code == 200


def test_request_id_is_echoed(api):
    r = api.post("/v1/models/diabetes/predict", json={"instances": [patient(0)]},
                 headers={"X-Request-ID": "req-123"})
    assert r.status_code == 200 and r.json()["request_id"] == "req-123"
    r = api.post("/v1/models/diabetes/predict", json={"instances": [patient(0)]})
    made = r.headers["x-request-id"]
    assert len(made) == 32 and r.json()["request_id"] == made
    r = api.post("/v1/models/diabetes/predict", json={"instances": []}, headers={"X-Request-ID": "req-456"})
    assert r.status_code == 400 and r.json()["request_id"] == "req-456"


# ---- /v2: the Open Inference Protocol -----------------------------------------------------------

def test_oip_server_metadata_live_ready(api, triton_state):
    r = api.get("/v2")
    assert r.status_code == 200 and r.json()["name"] == "raytriton-gateway"
    assert "binary_tensor_data" in r.json()["extensions"]
    assert api.get("/v2/health/live").json() == {"live": True}
    r = api.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True})
    r = api.get("/v2/models/diabetes/ready")
    assert (r.status_code, r.json()) == (200, {"name": "diabetes", "ready": True})

    triton_state.ready = (False, "Triton model 'digits' is not loaded")
    r = api.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"ready": False, "reason": "Triton model 'digits' is not loaded"}
    assert api.get("/v2/models/digits/versions/1/ready").status_code == 503
    assert api.get("/v2/health/live").status_code == 200  # alive, only not ready


def test_oip_model_metadata_comes_from_the_packages(api, models):
    digits_meta = api.get("/v2/models/digits").json()
    assert digits_meta["name"] == "digits"
    assert digits_meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                                     {"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert digits_meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]},
                                      {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                                      {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    diabetes_meta = api.get("/v2/models/diabetes").json()
    assert diabetes_meta["inputs"] == [{"name": f, "datatype": "FP32", "shape": [-1]} for f in FEATURES]
    assert diabetes_meta["outputs"] == [{"name": "value", "datatype": "FP32", "shape": [-1]}]
    assert api.get("/v2/models/diabetes/versions/1").json()["versions"] == ["1"]


def test_oip_infer_digits_pixels_json(api, triton):
    grids = [digit_grid(i) for i in range(3)]
    body = {"id": "abc", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [3, 8, 8],
                                     "data": [g for g, _ in grids]}]}
    r = api.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "abc" and out["model_name"] == "digits" and out["model_version"] == "1"
    tensors = {t["name"]: t for t in out["outputs"]}
    assert tensors["label"]["data"] == [label for _, label in grids]
    assert tensors["probabilities"]["shape"] == [3, 10]
    assert np.asarray(tensors["probabilities"]["data"]).reshape(3, 10).sum(axis=1) == pytest.approx([1, 1, 1],
                                                                                                    abs=1e-4)
    # a version in the path goes to Triton
    r = api.post("/v2/models/digits/versions/1/infer", json=body)
    assert r.status_code == 200 and triton.calls[-1][2] == "1"


def test_oip_infer_diabetes_json_and_binary(api, diabetes_ensemble):
    instances = [patient(i) for i in range(4)]
    want = expected_values(diabetes_ensemble, instances)
    columns = {name: [inst[name] for inst in instances] for name in FEATURES}
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [4], "data": values}
                       for name, values in reversed(list(columns.items()))]}
    r = api.post("/v2/models/diabetes/infer", json=body)
    assert r.status_code == 200, r.text
    (value,) = r.json()["outputs"]
    assert value["name"] == "value" and value["shape"] == [4]
    np.testing.assert_allclose(value["data"], want, atol=1e-3)

    inputs = []
    for name in FEATURES:
        tensor = httpclient.InferInput(name, [4], "FP32")
        tensor.set_data_from_numpy(np.asarray(columns[name], dtype=np.float32))  # binary by default
        inputs.append(tensor)
    content, header_length = httpclient.InferenceServerClient.generate_request_body(inputs, request_id="bin-1")
    r = api.post("/v2/models/diabetes/infer", content=content,
                 headers={"Inference-Header-Content-Length": str(header_length)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["inference-header-content-length"]))
    assert result.get_response()["id"] == "bin-1" and result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("value"), want, atol=1e-3)


def test_oip_infer_digits_image_files_binary(api, digits, models):
    images = holdout_images(3, seed=5)
    tensor = httpclient.InferInput("image", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([i.data for i in images], dtype=object))
    content, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
    r = api.post("/v2/models/digits/infer", content=content,
                 headers={"Inference-Header-Content-Length": str(header_length)})
    assert r.status_code == 200, r.text
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["inference-header-content-length"]))
    package = models["digits"]
    want = digits.ensemble.run({"pixels": package.preprocess([i.data for i in images])})["probabilities"]
    np.testing.assert_array_equal(result.as_numpy("label"), want.argmax(axis=1))
    np.testing.assert_allclose(result.as_numpy("probabilities"), want / want.sum(axis=1, keepdims=True), atol=1e-5)


def _diabetes_columns(n: int = 2) -> list[dict]:
    return [{"name": name, "datatype": "FP32", "shape": [n], "data": [patient(i)[name] for i in range(n)]}
            for name in FEATURES]


@pytest.mark.parametrize("mutate, code", [
    (lambda cols: cols.append({"name": "height", "datatype": "FP32", "shape": [2], "data": [0, 0]}),
     "unknown_input"),
    (lambda cols: cols.pop(), "wrong_inputs"),
    (lambda cols: cols[0].update(datatype="BYTES", data=["a", "b"]), "wrong_datatype"),
    (lambda cols: cols[0].update(shape=[2, 2], data=[0, 0, 0, 0]), "wrong_shape"),
    (lambda cols: cols[0].update(shape=[3]), "wrong_shape"),
    (lambda cols: cols[2].update(data=[0.0, 5.0]), "out_of_range"),
], ids=["unknown", "missing", "datatype", "row_shape", "count", "range"])
def test_oip_bad_tensors_are_400_in_the_oip_shape(api, mutate, code):
    columns = _diabetes_columns()
    mutate(columns)
    oip_error_of(api.post("/v2/models/diabetes/infer", json={"inputs": columns}), 400, code)


@pytest.mark.parametrize("data", [[False, False], ["0.01", "0.02"]], ids=["bool", "string"])
def test_oip_json_data_must_be_numbers_like_v1(api, data):
    columns = [dict(c, data=data) for c in _diabetes_columns()]
    assert api.post("/v2/models/diabetes/infer", json={"inputs": columns}).status_code == 400


def test_oip_bad_bodies(api):
    oip_error_of(api.post("/v2/models/digits/infer", content=b"{nope"), 400, "bad_json")
    oip_error_of(api.post("/v2/models/digits/infer", json={"inputs": []}), 400, "empty_batch")
    message = oip_error_of(api.post("/v2/models/diabetes/infer", json={"inputs": _diabetes_columns()},
                                    headers={"Inference-Header-Content-Length": "99999"}), 400, "bad_header")
    assert "99999" in message
    oip_error_of(api.post("/v2/models/diabetes/infer", json={"inputs": _diabetes_columns()},
                          headers={"Content-Encoding": "gzip"}), 415, "unsupported_encoding")


# ---- models, health, drift, metrics, docs -------------------------------------------------------

def test_v1_models_lists_both_models_with_versions(api, models):
    r = api.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["default"] == "digits"
    listed = {m["name"]: m for m in body["models"]}
    assert list(listed) == ["digits", "diabetes"]
    for name, entry in listed.items():
        assert entry["versions"] == [1] and entry["serving_version"] == 1
        assert entry["instance_schema"] == models[name].Instance.model_json_schema()
        assert entry["predict"] == f"/v1/models/{name}/predict" and entry["oip"] == f"/v2/models/{name}/infer"
    assert listed["digits"]["task"] == "classification" and listed["digits"]["accepts_files"] is True
    assert listed["digits"]["labels"] == list(range(10))
    assert set(listed["diabetes"]["instance_schema"]["properties"]) == set(FEATURES)
    assert sorted(listed["diabetes"]["instance_schema"]["required"]) == sorted(FEATURES)

    one = api.get("/v1/models/diabetes")
    assert one.status_code == 200 and one.json() == listed["diabetes"]
    assert one.json()["task"] == "regression" and one.json()["accepts_files"] is False


def test_healthz(api, triton_state):
    r = api.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok", "models": ["diabetes", "digits"]})
    triton_state.ready = (False, "Triton at 127.0.0.1:8101 is not ready")
    r = api.get("/healthz")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json() == {"status": "unavailable", "reason": "Triton at 127.0.0.1:8101 is not ready"}


def test_drift_is_not_watching_without_a_watcher(api):
    for url in ("/drift?model=digits", "/drift"):
        r = api.get(url)
        assert r.status_code == 200
        assert r.json()["model"] == "digits" and r.json()["status"].startswith("not watching yet")
    assert api.get("/drift?model=diabetes").json()["model"] == "diabetes"


def test_metrics_is_prometheus_text(api):
    api.post("/v1/models/diabetes/predict", json={"instances": [patient(0)]})
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE rts_requests_total counter" in r.text
    assert 'route="/v1/models/diabetes/predict"' in r.text


def test_unknown_model_names_never_become_metric_labels(api):
    """Each distinct name in a path would otherwise be a new time series: memory grows without bound."""
    for name in ("zz-made-up-1", "zz-made-up-2"):
        assert api.get(f"/v2/models/{name}").status_code == 404
        assert api.post(f"/v1/models/{name}/predict", json={"instances": [{}]}).status_code == 404
    text = api.get("/metrics").text
    assert "zz-made-up" not in text
    assert 'route="/v2/models/{model}"' in text  # the requests are counted, under the route template


def test_openapi_documents_each_model_with_its_own_schema(api):
    r = api.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    diabetes_body = paths["/v1/models/diabetes/predict"]["post"]["requestBody"]["content"]
    digits_body = paths["/v1/models/digits/predict"]["post"]["requestBody"]["content"]
    assert set(diabetes_body) == {"application/json"}
    assert set(digits_body) == {"application/json", "multipart/form-data"}
    diabetes_schema = diabetes_body["application/json"]["schema"]
    instance = diabetes_schema["$defs"]["DiabetesInstance"]
    assert set(instance["properties"]) == set(FEATURES)
    assert instance["properties"]["bmi"]["minimum"] == FIELDS["bmi"][0]
    assert "DigitInstance" in digits_body["application/json"]["schema"]["$defs"]
    assert "DiabetesInstance" not in digits_body["application/json"]["schema"].get("$defs", {})
    params = {p["name"] for p in paths["/v1/models/digits/predict"]["post"]["parameters"]}
    assert params == {"top_k"}
    assert paths["/v1/models/diabetes/predict"]["post"]["parameters"] == []
    docs = api.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]


# ---- /admin -------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
                         ids=["none", "wrong", "basic", "bare"])
def test_admin_needs_the_bearer_token(api, headers):
    for method, url in (("GET", "/admin/models"), ("GET", "/admin/models/digits"),
                        ("GET", "/admin/runs/anything"), ("POST", "/admin/models/digits/retrain")):
        error_of(api.request(method, url, headers=headers), 401, "unauthorized")


def test_admin_is_disabled_without_a_token(var_dir, models, triton):
    no_token = Api(make_app(Settings(var_dir=var_dir), models, triton))
    error_of(no_token.get("/admin/models", headers=AUTH), 503, "admin_disabled")
    error_of(no_token.get("/admin/models", headers={"Authorization": "Bearer "}), 503, "admin_disabled")


def test_admin_models_show_versions_with_lineage(api, first_runs):
    r = api.get("/admin/models", headers=AUTH)
    assert r.status_code == 200, r.text
    described = {m["model"]: m for m in r.json()["models"]}
    assert list(described) == ["digits", "diabetes"]
    for name, model in described.items():
        assert model["serving"] == 1
        (version,) = model["versions"]
        assert version["version"] == 1 and version["serving"] is True
        assert version["run_id"] == first_runs[name]["run_id"] and version["gates_passed"] is True
        assert version["lineage"]["model"] == name and version["lineage"]["version"] == 1
        assert version["lineage"]["code_version"] == "test-code"
        assert version["metrics"]  # the candidate's holdout metrics
    assert "accuracy" in described["digits"]["versions"][0]["metrics"]
    assert "rmse" in described["diabetes"]["versions"][0]["metrics"]
    one = api.get("/admin/models/digits", headers=AUTH)
    assert one.status_code == 200 and one.json() == described["digits"]
    error_of(api.get("/admin/models/x", headers=AUTH), 404, "unknown_model")


def test_admin_runs(api, first_runs):
    error_of(api.get("/admin/runs/no-such-run", headers=AUTH), 404, "unknown_run")
    run_id = first_runs["diabetes"]["run_id"]
    r = api.get(f"/admin/runs/{run_id}", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["run_id"] == run_id and r.json()["outcome"] == "published" and r.json()["version"] == 1


def test_admin_rollback_refuses_what_it_cannot_serve(api):
    message = error_of(api.post("/admin/models/digits/rollback", json={"version": 7}, headers=AUTH), 409,
                       "bad_version")
    assert "version 7" in message and "[1]" in message
    message = error_of(api.post("/admin/models/digits/rollback", json={}, headers=AUTH), 409, "bad_version")
    assert "no earlier production version" in message  # nothing on its way, nothing before version 1
    error_of(api.post("/admin/models/digits/rollback", json={"version": 0}, headers=AUTH), 422, "invalid_request")
    error_of(api.post("/admin/models/x/rollback", json={"version": 1}, headers=AUTH), 404, "unknown_model")
    message = error_of(api.post("/admin/models/digits/promote", headers=AUTH), 409, "conflict")
    assert "no candidate to promote" in message
    # nothing moved
    assert api.get("/v1/models/digits").json()["serving_version"] == 1


def test_admin_status_without_a_controller_shows_the_stages(api):
    r = api.get("/admin/models/digits/status", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "digits", "production": 1, "challengers": [], "stages": {"1": "production"},
                        "controller": "not running"}


def test_admin_policy_is_validated_and_changed_at_run_time(api, settings):
    r = api.get("/admin/models/diabetes/policy", headers=AUTH)
    assert r.status_code == 200, r.text
    shipped = r.json()["policy"]
    assert shipped["strategy"] in ("direct", "progressive", "blue_green", "ab", "bandit", "manual")
    message = error_of(api.request("PUT", "/admin/models/diabetes/policy", json={"yaml": "strategy: yolo"},
                                   headers=AUTH), 400, "invalid_policy")
    assert "strategy" in message and "progressive" in message
    message = error_of(api.request("PUT", "/admin/models/diabetes/policy",
                                   json={"yaml": "canary: {steps: [0.5, 0.1]}"}, headers=AUTH), 400, "invalid_policy")
    assert "rising" in message
    error_of(api.request("PUT", "/admin/models/diabetes/policy", json={"yaml": "slo: {min_requets: 5}"},
                         headers=AUTH), 400, "invalid_policy")
    assert api.get("/admin/models/diabetes/policy", headers=AUTH).json()["policy"] == shipped  # refusals change nothing

    r = api.request("PUT", "/admin/models/diabetes/policy", json={"yaml": "strategy: ab\nab: {header: X-Group}\n"},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    policy = api.get("/admin/models/diabetes/policy", headers=AUTH).json()
    assert policy["policy"]["strategy"] == "ab" and policy["policy"]["ab"]["header"] == "X-Group"
    assert "strategy: ab" in policy["yaml"]
    r = api.request("PUT", "/admin/models/diabetes/policy", json={"yaml": "strategy: " + shipped["strategy"]},
                    headers=AUTH)
    assert r.status_code == 200


def test_feedback_is_validated_and_needs_the_controller(api):
    error_of(api.post("/v1/feedback", json={"label": 3}), 422, "invalid_request")
    message = error_of(api.post("/v1/feedback", json={"request_id": "r1", "label": 3, "value": 2.0}), 422,
                       "invalid_request")
    assert "exactly one of" in message
    error_of(api.post("/v1/feedback", json={"request_id": "r1", "label": 3, "model": "cats"}), 404, "unknown_model")
    error_of(api.post("/v1/feedback", json={"request_id": "r1", "label": 3}), 503, "no_controller")
    error_of(api.post("/admin/models/digits/faults", json={"version": 1, "latency_ms": 5}, headers=AUTH), 503,
             "no_controller")


def test_admin_retrain_submits_a_run_with_a_cloudevent(api, settings, monkeypatch):
    submitted = []

    def fake_submit_run(settings_, model, events):
        submitted.append((settings_, model, events))
        return "run-1"

    monkeypatch.setattr("services.serving.routes.admin.submit_run", fake_submit_run)
    r = api.post("/admin/models/digits/retrain", json={"reason": "new data", "force": True}, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json() == {"run_id": "run-1", "model": "digits", "outcome": "submitted"}
    (got_settings, model, events), = submitted
    assert got_settings is settings and model == "digits"
    (event,) = events
    assert isinstance(event, CloudEvent) and event.type == RETRAIN_REQUESTED == "rts.retrain.requested"
    assert event.source == "rts/admin" and event.subject == "digits"
    assert event.data == {"model": "digits", "reason": "new data", "force": True}

    r = api.post("/admin/models/diabetes/retrain", headers=AUTH)  # no body: the defaults
    assert r.status_code == 202 and r.json()["model"] == "diabetes"
    event = submitted[-1][2][0]
    assert event.data["model"] == "diabetes" and event.data["reason"] == "requested over the admin API"
    assert not event.data.get("force")

    error_of(api.post("/admin/models/digits/retrain", json={"reason": "x", "priority": 1}, headers=AUTH), 422,
             "invalid_request")
    error_of(api.post("/admin/models/x/retrain", headers=AUTH), 404, "unknown_model")
    assert len(submitted) == 2


def test_triton_errors_reach_the_client_with_their_status(settings, models, digits, diabetes_ensemble):
    class DownTriton(FakeTriton):
        async def infer(self, model, rows, version="", headers=None):
            raise ServingError("Triton is unavailable (UNAVAILABLE): connection refused", status=503,
                               code="upstream_unavailable", retry_after_s=2)

    down = Api(make_app(settings, models, DownTriton({})))
    r = down.post("/v1/models/diabetes/predict", json={"instances": [patient(0)]})
    assert "unavailable" in error_of(r, 503, "upstream_unavailable") and r.headers["retry-after"] == "2"
    oip_error_of(down.post("/v2/models/diabetes/infer", json={"inputs": _diabetes_columns()}), 503,
                 "upstream_unavailable")



# ---- hostile input ------------------------------------------------------------------------------
# Path traversal, header injection, the admin token. Requests go through a raw ASGI call where httpx
# would clean them up first (it resolves "..", refuses CR/LF in headers): the app sees what a server
# would hand it. tests/unit/test_openapi_fuzz.py fuzzes every operation of the document; the
# over-the-wire variants (oversized headers, slow bodies, the real HTTP server) are in
# tests/integration/test_hostile_input.py.

def raw_request(app, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]] = (),
                body: bytes = b"") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request as an HTTP server hands it to the app: ``path`` percent-decoded, ``raw_path`` as sent."""
    from urllib.parse import unquote_to_bytes

    path, _, query = raw_path.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote_to_bytes(path).decode("utf-8", "surrogateescape"), "raw_path": path,
             "query_string": query, "root_path": "", "headers": [(b"host", b"test"), *headers],
             "client": ("127.0.0.1", 5000), "server": ("test", 80)}
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], list(start.get("headers", [])), b"".join(m.get("body", b"") for m in sent
                                                                     if m["type"] == "http.response.body")


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k.lower() == name]


TRAVERSALS = [
    ("POST", b"/v1/models/..%2F..%2Fetc/predict"),
    ("POST", b"/v1/models/../predict"),
    ("POST", b"/v1/models/%2e%2e/predict"),
    ("POST", b"/v1/predict?model=..%2F..%2Fetc%2Fpasswd"),
    ("GET", b"/v1/models/..%2Fdiabetes"),
    ("GET", b"/drift?model=../../etc/passwd"),
    ("GET", b"/v2/models/../x/versions/.."),
    ("GET", b"/v2/models/digits/versions/.."),
    ("GET", b"/v2/models/digits/versions/..%2F..%2F1"),
    ("GET", b"/v2/models/digits/versions/%00/ready"),
    ("POST", b"/v2/models/digits/versions/../infer"),
    ("POST", b"/v2/models/digits/versions/..%2F1/infer"),
    ("POST", b"/v2/models/digits/versions/1%00/infer"),
    ("GET", b"/admin/runs/.."),
    ("GET", b"/admin/runs/..%2F..%2Fetc%2Fpasswd"),
    ("GET", b"/admin/runs/..%2Foutside"),
    ("GET", b"/admin/runs/%00"),
    ("GET", b"/admin/runs/a%00b"),
    ("GET", b"/admin/runs/%2Fetc%2Fpasswd"),
    ("GET", b"/admin/runs/.hidden"),
    ("GET", b"/admin/models/..%2Fdigits/status"),
    ("POST", b"/admin/models/../rollback"),
    ("PUT", b"/admin/models/digits%2F..%2F..%2Fx/policy"),
]


@pytest.mark.parametrize("method, raw_path", TRAVERSALS, ids=[f"{m} {p.decode()}" for m, p in TRAVERSALS])
def test_path_traversal_is_a_clean_4xx(api, var_dir, method, raw_path):
    outside = var_dir / "bucket" / ".." / "outside.json"
    outside.write_text('{"secret": "outside the store"}')
    status, _, body = raw_request(api.app, method, raw_path, [(b"authorization", f"Bearer {TOKEN}".encode()),
                                                               (b"content-type", b"application/json")],
                                  b'{"instances": [], "inputs": [], "yaml": "strategy: direct"}')
    assert 400 <= status < 500, (status, body)
    error = json.loads(body)["error"]
    assert error["code"] if isinstance(error, dict) else error
    assert b"outside the store" not in body


def test_under_a_route_prefix_predict_takes_the_fast_path_with_the_same_answer(api, triton, monkeypatch):
    """Serve under a route_prefix hands the app root_path "/api" and path "/api/v1/...": the fast path must read
    the route as Starlette does, or every prefixed deployment pays FastAPI's routing on each request."""
    from services.serving.routes.predict import FastPredict

    fast = []
    original = FastPredict._predict

    async def counted(self, *args, **kwargs):
        fast.append(args[0]["path"])
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(FastPredict, "_predict", counted)
    body = json.dumps({"instances": [patient(0)]}).encode()
    headers = [(b"content-type", b"application/json")]
    answers = {}
    for root in ("", "/api"):
        def prefixed(request):
            return {**request, "root_path": root, "path": root + request["path"]}

        app = api.app
        status, _, answer = raw_request(lambda scope, r, s: app(prefixed(scope), r, s), "POST",
                                        b"/v1/models/diabetes/predict", headers, body)
        assert status == 200, answer
        answers[root] = json.loads(answer)["predictions"]
    assert fast == ["/v1/models/diabetes/predict", "/api/v1/models/diabetes/predict"]
    assert answers[""] == answers["/api"]
    # a path outside the prefix is not a predict route
    status, _, _ = raw_request(lambda scope, r, s: api.app({**scope, "root_path": "/api"}, r, s), "POST",
                               b"/other/v1/models/diabetes/predict", headers, body)
    assert status == 404 and len(fast) == 2


def test_storage_keys_never_leave_the_store(tmp_path):
    from services.storage import InvalidKey, check_key, open_store

    store = open_store(f"file://{tmp_path / 'store'}")
    (tmp_path / "secret.json").write_text("secret")
    for key in ("../secret.json", "runs/../../secret.json", "/etc/passwd", "runs//x.json", "runs/./x.json",
                "runs/a\x00b.json", "runs/a\nb.json", "", "x/" + "a" * 1100):
        with pytest.raises(InvalidKey):
            store.get_bytes(key)
        with pytest.raises(InvalidKey):
            store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        list(store.list("../"))
    # a symbolic link inside the store that leads out of it
    (tmp_path / "store" / "runs").mkdir()
    (tmp_path / "store" / "runs" / "link.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(InvalidKey):
        store.get_bytes("runs/link.json")
    # what the platform writes is fine
    assert check_key("runs/20250101-120000-ab12cd.json") and check_key("models/digits/versions/", prefix=True)
    store.put_bytes("runs/a b:c=d.json", b"ok")
    assert store.get_bytes("runs/a b:c=d.json") == b"ok"


BAD_REQUEST_IDS = {
    "crlf": b"abc\r\nSet-Cookie: injected=1",
    "lf": b"abc\nX-Injected: 1",
    "nul": b"abc\x00def",
    "long": b"a" * 10_000,
    "non-ascii": "r\u00e9quest".encode("latin-1"),
    "utf-8": "\u8bf7\u6c42".encode(),
    "space": b"two words",
    "empty": b"",
}


@pytest.mark.parametrize("value", list(BAD_REQUEST_IDS.values()), ids=list(BAD_REQUEST_IDS))
def test_a_bad_request_id_is_replaced_never_echoed(api, caplog, value):
    caplog.set_level("DEBUG")
    for method, path, body in (("POST", b"/v1/models/diabetes/predict", json.dumps({"instances": [patient(0)]})),
                               ("POST", b"/v1/models/diabetes/predict", '{"instances": []}'),
                               ("GET", b"/no/such/route", "")):
        status, headers, raw = raw_request(api.app, method, path, [(b"x-request-id", value),
                                                                  (b"content-type", b"application/json")],
                                           body.encode())
        assert status in (200, 400, 404), raw
        (given,) = header(headers, b"x-request-id")  # exactly one, made here
        assert re.fullmatch(rb"[0-9a-f]{32}", given), given
        assert json.loads(raw)["request_id"] == given.decode()
        assert all(b"\r" not in v and b"\n" not in v for _, v in headers)
        assert not header(headers, b"set-cookie") and not header(headers, b"x-injected")
    if value:
        logged = "\n".join(r.getMessage() for r in caplog.records).encode("utf-8", "replace")
        assert value[:40] not in logged


def test_a_good_request_id_is_kept_and_two_are_replaced(api):
    for value in (b"req-123", b"3f2c0d7e-1b2a-4c5d-8e9f-0a1b2c3d4e5f", b"Root=1-5e1b4151-5ac6c58f", b"a/b+c=="):
        status, headers, raw = raw_request(api.app, "GET", b"/v1/models/diabetes", [(b"x-request-id", value)])
        assert status == 200
        assert header(headers, b"x-request-id") == []  # Serve's proxy echoes a valid id; the app adds none
        r = api.post("/v1/models/diabetes/predict", json={"instances": []}, headers={"X-Request-ID": value.decode()})
        assert r.json()["request_id"] == value.decode()
    status, headers, raw = raw_request(api.app, "POST", b"/v1/models/diabetes/predict",
                                       [(b"x-request-id", b"one"), (b"x-request-id", b"two"),
                                        (b"content-type", b"application/json")], b'{"instances": []}')
    assert json.loads(raw)["request_id"] not in ("one", "two")
    assert header(headers, b"x-request-id") == [json.loads(raw)["request_id"].encode()]


def test_feedback_request_ids_are_request_ids(api):
    for request_id in ("abc\r\nINJECTED log line", "a" * 201, "two words", ""):
        error_of(api.post("/v1/feedback", json={"request_id": request_id, "label": 3}), 422, "invalid_request")


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
GOOD_TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
BAD_TRACEPARENTS = {
    "crlf": GOOD_TRACEPARENT + b"\r\nX-Injected: 1",
    "cr-later-version": b"01-" + GOOD_TRACEPARENT[3:] + b"-\rX-Injected: 1",
    "long": GOOD_TRACEPARENT + b"-" + b"a" * 10_000,
    "non-ascii": GOOD_TRACEPARENT[:-2] + "\u00e9\u00e9".encode("latin-1"),
    "upper-case": GOOD_TRACEPARENT.upper(),
    "version-ff": b"ff" + GOOD_TRACEPARENT[2:],
    "zero-trace-id": b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",
    "zero-span-id": f"00-{TRACE_ID}-{'0' * 16}-01".encode(),
    "short": GOOD_TRACEPARENT[:-1],
    "garbage": b"not a traceparent",
}


@pytest.mark.parametrize("value", list(BAD_TRACEPARENTS.values()), ids=list(BAD_TRACEPARENTS))
def test_an_invalid_traceparent_starts_a_trace_of_its_own(api, caplog, value):
    caplog.set_level("DEBUG")
    status, headers, raw = raw_request(api.app, "GET", b"/v1/models/diabetes",
                                       [(b"traceparent", value), (b"tracestate", b"vendor=\r\nX-Injected: 1")])
    assert status == 200, raw
    assert all(re.fullmatch(rb"[0-9a-f]{32}", v) and v != TRACE_ID.encode() for v in header(headers, b"x-trace-id"))
    assert not header(headers, b"x-injected") and all(b"\r" not in v and b"\n" not in v for _, v in headers)
    assert b"X-Injected" not in "\n".join(r.getMessage() for r in caplog.records).encode("utf-8", "replace")


def test_a_valid_traceparent_is_continued(api):
    status, headers, _ = raw_request(api.app, "GET", b"/v1/models/diabetes", [(b"traceparent", GOOD_TRACEPARENT)])
    assert status == 200 and header(headers, b"x-trace-id") == [TRACE_ID.encode()]


def test_trace_headers_that_cannot_be_trusted_are_dropped():
    from services.telemetry.propagation import clean_trace_headers

    other = (b"accept", b"*/*")
    assert clean_trace_headers([other]) is None
    assert clean_trace_headers([other, (b"traceparent", GOOD_TRACEPARENT), (b"tracestate", b"a=1,b=2")]) is None
    for bad in BAD_TRACEPARENTS.values():
        assert clean_trace_headers([other, (b"traceparent", bad), (b"tracestate", b"a=1")]) == [other]
    twice = [(b"traceparent", GOOD_TRACEPARENT), (b"traceparent", GOOD_TRACEPARENT)]
    assert clean_trace_headers([other, *twice]) == [other]
    for state in (b"a=" + b"x" * 600, b"a=\xe9", b"a=1\r\nb=2"):
        assert clean_trace_headers([other, (b"traceparent", GOOD_TRACEPARENT), (b"tracestate", state)]) == [
            other, (b"traceparent", GOOD_TRACEPARENT)]
    assert clean_trace_headers([other, (b"tracestate", b"a=1")]) == [other]  # no traceparent: nothing to go with


def admin_routes(app) -> list:
    """Every /admin APIRoute of the app, however its routers are nested."""
    from fastapi.routing import APIRoute

    found = []

    def walk(routes) -> None:
        for route in routes:
            if isinstance(route, APIRoute):
                if route.path.startswith("/admin"):
                    found.append(route)
                continue
            inner = getattr(route, "original_router", None) or getattr(route, "routes", None)
            if inner is not None:
                walk(getattr(inner, "routes", inner))

    walk(app.router.routes)
    return found


def test_every_admin_route_needs_the_bearer_token(api, monkeypatch):
    from services.serving.deps import require_admin_token

    routes = admin_routes(api.app)
    operations = sorted({(m, r.path) for r in routes for m in r.methods})
    documented = {(m.upper(), p) for p, item in api.app.openapi()["paths"].items() if p.startswith("/admin")
                  for m in item}
    assert len(operations) >= 10 and set(operations) == documented, (operations, documented)
    for route in routes:  # the check is a dependency of every route, not of the requests that happen to be sent
        assert require_admin_token in [d.call for d in route.dependant.dependencies], route.path
    submitted = []
    monkeypatch.setattr("services.serving.routes.admin.submit_run", lambda *a: submitted.append(a) or "run-x")
    for method, path in operations:
        url = path.replace("{model}", "digits").replace("{run_id}", "20250101-120000-ab12cd")
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": TOKEN}, {"Authorization": "Bearer "}, {"X-Admin-Token": TOKEN}):
            r = api.request(method, url, headers=headers, json={"version": 1, "yaml": "strategy: direct"})
            error_of(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
            assert TOKEN not in r.text and all(TOKEN not in v for v in r.headers.values())
    assert not submitted  # nothing ran without the token


def test_the_admin_token_is_compared_in_constant_time_and_never_logged(api, monkeypatch, caplog):
    import hmac

    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((type(a), type(b)))
        return real(a, b)

    monkeypatch.setattr("services.serving.deps.hmac.compare_digest", spy)
    caplog.set_level("DEBUG")
    assert api.get("/admin/models", headers=AUTH).status_code == 200
    error_of(api.get("/admin/models", headers={"Authorization": "Bearer " + "x" * len(TOKEN)}), 401, "unauthorized")
    error_of(api.get("/admin/runs/no-such-run", headers=AUTH), 404, "unknown_run")
    assert compared == [(bytes, bytes)] * 3
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert TOKEN not in logged


def test_405_lists_every_method_of_the_path(api):
    for method, url, allow in (("DELETE", "/admin/models/digits/policy", "GET, PUT"),
                               ("GET", "/v1/models/digits/predict", "POST"),
                               ("PUT", "/v2/models/digits/versions/1/infer", "POST"), ("POST", "/healthz", "GET")):
        r = api.request(method, url, headers=AUTH)
        assert r.status_code == 405 and r.headers["allow"] == allow, (url, r.headers)


@pytest.mark.parametrize("body", [{"version": True}, {"version": "1"}, {"version": 1.5}, {"version": 0}],
                         ids=["bool", "string", "fraction", "zero"])
def test_admin_versions_are_json_integers(api, body):
    error_of(api.post("/admin/models/digits/rollback", json=body, headers=AUTH), 422, "invalid_request")
    error_of(api.post("/admin/models/digits/faults", json=body, headers=AUTH), 422, "invalid_request")


def test_feedback_values_are_json_numbers(api):
    error_of(api.post("/v1/feedback", json={"request_id": "r1", "value": True}), 422, "invalid_request")
    error_of(api.post("/v1/feedback", json={"request_id": "r1", "values": [1.0, "2"]}), 422, "invalid_request")


@pytest.mark.parametrize("body", [
    b'{"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": [0], "parameters": "x"}]}',
    b'{"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": [0]}], "parameters": [1]}',
    b'{"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": [0]}], "outputs": [{"name": "value", '
    b'"parameters": true}]}',
    b'{"inputs": [{"name": "age", "datatype": "FP32", "shape": [4294967296, 4294967296], "data": []}]}',
    b'{"inputs": [{"name": "age", "datatype": "FP32", "shape": [true], "data": [0]}]}',
    b'{"inputs": [{"name": "age", "datatype": "FP32", "shape": [1], "data": ' + b"[" * 900 + b"]" * 900 + b"}]}",
    b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
], ids=["tensor-parameters", "request-parameters", "output-parameters", "huge-shape", "bool-shape", "deep-data",
        "deep-json"])
def test_oip_malformed_requests_are_400_not_500(api, body):
    r = api.post("/v2/models/diabetes/infer", content=body)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str)


def test_a_body_over_the_limit_names_its_request_id(var_dir, models, triton, first_runs):
    small = Api(make_app(Settings(var_dir=var_dir, limits={"max_body_bytes": 100}), models, triton))
    r = small.post("/v1/models/diabetes/predict", content=b"x" * 200, headers={"X-Request-ID": "req-big"})
    assert error_of(r, 413, "body_too_large") and r.json()["request_id"] == "req-big"


def test_a_body_that_stalls_or_trickles_is_408(settings, models, triton, first_runs, monkeypatch):
    monkeypatch.setattr("services.serving.middleware.BODY_TIMEOUT_S", 0.3)
    monkeypatch.setattr("services.serving.middleware.BODY_MIN_RATE", 1000)
    app = make_app(settings, models, triton)
    body = json.dumps({"instances": [patient(0)]}).encode()

    def send_slowly(path: str, chunks: list[bytes], gap_s: float, headers=()) -> tuple[int, dict, float]:
        async def run():
            sent, queue = [], list(chunks)

            async def receive():
                if not queue:
                    await asyncio.sleep(3600)  # stalled: no more bytes, no disconnect
                await asyncio.sleep(gap_s)
                chunk = queue.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": True}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                     "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
                     "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers]}
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(app(scope, receive, send), 10)
            took = asyncio.get_running_loop().time() - started
            start = next(m for m in sent if m["type"] == "http.response.start")
            return start["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:])), took

        return asyncio.run(run())

    # stalled after half the body, trickling a byte at a time, on /v1, /v2 and a pydantic body (/admin)
    for path, chunks, gap in (("/v1/models/diabetes/predict", [body[:20]], 0.0),
                              ("/v1/models/diabetes/predict", [bytes([b]) for b in body], 0.05),
                              ("/v2/models/diabetes/infer", [b'{"inputs": ['], 0.0),
                              ("/admin/models/digits/faults", [b'{"version": '], 0.0)):
        status, answer, took = send_slowly(path, chunks, gap, [(b"authorization", f"Bearer {TOKEN}".encode())])
        assert status == 408 and took < 2, (path, status, answer, took)
        assert (answer["code"] if path.startswith("/v2") else answer["error"]["code"]) == "body_timeout"
    # a streamed body over the limit on a pydantic body is a 413, not FastAPI's "error parsing the body"
    small = Api(make_app(Settings(var_dir=settings.var_dir, admin={"token": TOKEN},
                                  limits={"max_body_bytes": 100}), models, triton))

    async def chunks():
        for _ in range(10):
            yield b'{"yaml": "' + b"x" * 50

    r = small.request("PUT", "/admin/models/digits/policy", content=chunks(), headers=AUTH)
    error_of(r, 413, "body_too_large")


@pytest.mark.parametrize("headers", [[(b"x-big", b"a" * 20_000)], [(b"x-h%d" % i, b"v") for i in range(150)]],
                         ids=["one-20KB-header", "150-headers"])
def test_oversized_headers_are_431_whatever_the_server_in_front_let_through(api, headers):
    for path in (b"/v1/models", b"/v2/models/digits"):
        status, out, raw = raw_request(api.app, "GET", path, headers)
        assert status == 431, raw
        body = json.loads(raw)
        code = body["code"] if path.startswith(b"/v2") else body["error"]["code"]
        assert code == "headers_too_large" and header(out, b"x-request-id") == [body["request_id"].encode()]
    assert raw_request(api.app, "GET", b"/v1/models", [(b"x-request-id", b"a" * 200), (b"x-ok", b"b" * 8000)])[0] == 200
