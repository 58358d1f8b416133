"""The OIP codec against request bodies made by the stock tritonclient (binary and JSON)."""

import base64
import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from services.errors import InvalidInput
from services.modelkit.discovery import load_package
from services.serving import oip

DIGITS = load_package("services.models.digits")


def client_body(inputs, outputs=None):
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, request_id="r1")
    return body, (str(json_size) if json_size is not None else None)


def test_binary_pixels_request_round_trips_through_the_stock_client():
    x = np.random.default_rng(0).uniform(0, 16, size=(3, 8, 8)).astype(np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default
    body, header_len = client_body([inp])
    req = oip.parse_request(body, header_len, DIGITS, max_items=64)
    assert req.id == "r1" and len(req.inputs) == 3
    np.testing.assert_array_equal(req.inputs[1].pixels, x[1])

    probs = np.full((3, 10), 0.1, dtype=np.float32)
    probs[:, [0, 1, 2]] = np.eye(3) * 0.5 + 0.1
    preds = DIGITS.postprocess({"probabilities": probs}, DIGITS.Options())
    content, headers = oip.encode_response(DIGITS, "4", req, DIGITS.to_tensors(preds, {"probabilities": probs}))
    result = httpclient.InferenceServerClient.parse_response_body(
        content, header_length=int(headers.get("inference-header-content-length", 0)) or None)
    np.testing.assert_array_equal(result.as_numpy("label"), [0, 1, 2])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs / probs.sum(axis=1, keepdims=True), rtol=1e-5)
    assert result.get_response()["model_version"] == "4"


def test_json_images_travel_base64_and_outputs_can_be_json():
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(b"\x89PNG-bytes").decode()]}],
                       "outputs": [{"name": "label", "parameters": {"binary_data": False}}]}).encode()
    req = oip.parse_request(body, None, DIGITS, max_items=64)
    assert req.inputs[0] == b"\x89PNG-bytes" and req.outputs == {"label": False}
    probs = np.eye(10, dtype=np.float32)[4:5]
    tensors = DIGITS.to_tensors(DIGITS.postprocess({"probabilities": probs}, DIGITS.Options()), {"probabilities": probs})
    content, headers = oip.encode_response(DIGITS, "1", req, tensors)
    assert headers["content-type"] == "application/json"
    assert json.loads(content)["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [1], "data": [4]}]

    bad = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]})
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(bad.encode(), None, DIGITS, max_items=64)
    assert err.value.code == "bad_base64"


def test_binary_bytes_images_are_split_per_element():
    inp = httpclient.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array([b"first-file", b"second"], dtype=object))
    body, header_len = client_body([inp])
    req = oip.parse_request(body, header_len, DIGITS, max_items=64)
    assert req.inputs == [b"first-file", b"second"]
    assert all(req.outputs.values())  # the client asks for binary outputs by default


def test_metadata_comes_from_the_package():
    meta = oip.model_metadata(DIGITS, [])
    assert {i["name"]: i["shape"] for i in meta["inputs"]} == {"image": [-1], "pixels": [-1, 8, 8]}
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "confidence": "FP32",
                                                                   "probabilities": "FP32"}


@pytest.mark.parametrize(
    "inputs, code",
    [
        ([{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "wrong_datatype"),
        ([{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 3], "data": [0] * 9}], "wrong_shape"),
        ([{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0] * 10}], "wrong_shape"),
        ([{"name": "pixels", "datatype": "FP99", "shape": [1, 64], "data": [0] * 64}], "wrong_datatype"),
        ([{"name": "pixels", "datatype": "FP32", "shape": [0, 64], "data": []}], "empty_batch"),
        ([{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}], "wrong_datatype"),
        ([{"name": "weights", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}], "unknown_input"),
        ([{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ["a"] * 64}], "wrong_datatype"),
        ([{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64},
          {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}], "wrong_inputs"),
    ],
)
def test_bad_tensors_are_named_in_the_error(inputs, code):
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(json.dumps({"inputs": inputs}).encode(), None, DIGITS, max_items=64)
    assert err.value.code == code


def test_too_many_items_is_413():
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [65, 64], "data": [0] * 65 * 64}
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(json.dumps({"inputs": [tensor]}).encode(), None, DIGITS, max_items=64)
    assert err.value.status == 413


def test_binary_size_past_the_end_is_refused():
    header = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(header + b"\0" * 10, str(len(header)), DIGITS, max_items=64)
    assert err.value.code == "bad_binary"


def test_unknown_output_is_refused():
    body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}],
                       "outputs": [{"name": "logits"}]}).encode()
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(body, None, DIGITS, max_items=64)
    assert "logits" in err.value.message
