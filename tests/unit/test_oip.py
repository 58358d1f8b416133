"""The OIP codec against request bodies made by the stock tritonclient (binary and JSON)."""

import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from services.common.errors import InvalidInput
from services.gateway import oip
from services.models.digits.spec import DIGITS


def client_body(inputs, outputs=None, binary_output=True):
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="r1")
    return body, (str(json_size) if json_size is not None else None)


def test_binary_pixels_request_round_trips_through_the_stock_client():
    x = np.random.default_rng(0).uniform(0, 16, size=(3, 8, 8)).astype(np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary by default
    body, header_len = client_body([inp])
    req = oip.parse_request(body, header_len, DIGITS, max_items=64)
    assert req.id == "r1" and len(req.items) == 3
    np.testing.assert_array_equal(req.items[1].value, x[1])

    preds = [{"label": i, "confidence": 0.5} for i in range(3)]
    probs = np.full((3, 10), 0.1, dtype=np.float32)
    content, headers = oip.encode_response(DIGITS, "4", req, preds, probs)
    result = httpclient.InferenceServerClient.parse_response_body(
        content, header_length=int(headers.get("inference-header-content-length", 0)) or None)
    np.testing.assert_array_equal(result.as_numpy("label"), [0, 1, 2])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs)
    assert result.get_response()["model_version"] == "4"


def test_json_images_travel_base64_and_outputs_can_be_json():
    import base64

    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(b"\x89PNG-bytes").decode()]}],
                       "outputs": [{"name": "label", "parameters": {"binary_data": False}}]}).encode()
    req = oip.parse_request(body, None, DIGITS, max_items=64)
    assert req.items[0].value == b"\x89PNG-bytes" and req.outputs == {"label": False}
    content, headers = oip.encode_response(DIGITS, "1", req, [{"label": 4, "confidence": 1.0}],
                                           np.eye(10, dtype=np.float32)[4:5])
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
    assert [i.value for i in req.items] == [b"first-file", b"second"]
    assert all(req.outputs.values())  # the client asks for binary outputs by default


@pytest.mark.parametrize(
    "tensor, code",
    [
        ({"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["x"]}, "wrong_datatype"),
        ({"name": "pixels", "datatype": "FP32", "shape": [1, 3, 3], "data": [0] * 9}, "wrong_shape"),
        ({"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0] * 10}, "wrong_shape"),
        ({"name": "pixels", "datatype": "FP99", "shape": [1, 64], "data": [0] * 64}, "wrong_datatype"),
        ({"name": "pixels", "datatype": "FP32", "shape": [0, 64], "data": []}, "empty_batch"),
        ({"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}, "wrong_datatype"),
        ({"name": "weights", "datatype": "FP32", "shape": [1, 64], "data": [0] * 64}, "unknown_input"),
        ({"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ["a"] * 64}, "wrong_datatype"),
    ],
)
def test_bad_tensors_are_named_in_the_error(tensor, code):
    with pytest.raises(InvalidInput) as err:
        oip.parse_request(json.dumps({"inputs": [tensor]}).encode(), None, DIGITS, max_items=64)
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
