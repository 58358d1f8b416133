"""Every malformed request gets a 4xx JSON error that says what was wrong; never a 500."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from services.models.digits.samples import holdout_images

pytestmark = pytest.mark.integration

GOOD_PNG = holdout_images(1)[0].data


def png_bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (6000, 6000), 1).save(buf, "PNG")  # 36 Mpx in a few KB
    return buf.getvalue()


CASES = {
    "not an image": dict(files=[("file", ("a.png", b"hello, world", "image/png"))], status=400, code="not_an_image"),
    "truncated png": dict(files=[("file", ("a.png", GOOD_PNG[: len(GOOD_PNG) // 2], "image/png"))], status=400,
                          code="undecodable_image"),
    "empty file": dict(files=[("file", ("a.png", b"", "image/png"))], status=400, code="empty_file"),
    "decompression bomb": dict(files=[("file", ("bomb.png", png_bomb(), "image/png"))], status=413,
                               code="image_too_large"),
    "too many files": dict(files=[("file", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(65)], status=413,
                           code="too_many_items"),
    "multipart without file field": dict(files=[("image", ("a.png", GOOD_PNG, "image/png"))], status=400,
                                         code="empty_batch"),
    "wrong pixel shape": dict(json={"instances": [{"pixels": [[1, 2, 3]] * 8}]}, status=400, code="wrong_shape"),
    "ragged pixels": dict(json={"instances": [{"pixels": [[1, 2], [3]]}]}, status=400, code="wrong_shape"),
    "pixels out of range": dict(json={"instances": [{"pixels": [[255] * 8] * 8}]}, status=400, code="wrong_value"),
    "empty batch": dict(json={"instances": []}, status=400, code="empty_batch"),
    "too many instances": dict(json={"instances": [{"pixels": [[0] * 8] * 8}] * 65}, status=413,
                               code="too_many_items"),
    "both image and pixels": dict(json={"instances": [{"pixels": [[0] * 8] * 8, "image_b64": "AA=="}]},
                                  status=400, code="bad_instance"),
    "bad base64": dict(json={"instances": [{"image_b64": "%%% not base64"}]}, status=400, code="bad_base64"),
    "no instances key": dict(json={"images": []}, status=422, code="invalid_request"),
    "invalid json": dict(content=b"{not json", headers={"content-type": "application/json"}, status=422,
                         code="invalid_request"),
    "unsupported content type": dict(content=b"abc", headers={"content-type": "text/plain"}, status=415,
                                     code="unsupported_media_type"),
    "empty body": dict(content=b"", headers={"content-type": "application/json"}, status=400, code="empty_batch"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_predict_requests(gateway, case):
    spec = dict(CASES[case])
    status, code = spec.pop("status"), spec.pop("code")
    r = gateway.post("/v1/predict", **spec)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and len(error["message"]) > 10
    assert "Traceback" not in r.text


def test_error_names_the_bad_item_in_a_batch(gateway):
    files = [("file", ("ok.png", GOOD_PNG, "image/png")), ("file", ("bad.png", b"nope", "image/png"))]
    r = gateway.post("/v1/predict", files=files)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("item 1:")


def test_body_over_the_limit_is_413(gateway, stack):
    too_big = b"\0" * (stack.settings.limits.max_body_bytes + 1)
    r = gateway.post("/v1/predict", files=[("file", ("big.png", too_big, "image/png"))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_chunked_body_over_the_limit_is_413(gateway, stack):
    def chunks():
        for _ in range(stack.settings.limits.max_body_bytes // 65536 + 2):
            yield b"\0" * 65536

    r = gateway.post("/v2/models/digits/infer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_model(gateway):
    r = gateway.post("/v1/models/cats/predict", json={"instances": [{"pixels": [[0] * 8] * 8}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
    assert gateway.get("/v2/models/cats").status_code == 404
    assert gateway.post("/v1/predict?model=cats", json={"instances": []}).status_code == 404


def test_bad_top_k(gateway):
    r = gateway.post("/v1/predict?top_k=11", json={"instances": [{"pixels": [[0] * 8] * 8}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_top_k"


@pytest.mark.parametrize(
    "body, code",
    [
        ({"inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "wrong_datatype"),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}, "wrong_shape"),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": [0] * 64}]}, "wrong_shape"),
        ({"inputs": []}, "empty_batch"),
        ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [0, 64], "data": []}]}, "empty_batch"),
    ],
)
def test_bad_oip_requests(gateway, body, code):
    r = gateway.post("/v2/models/digits/infer", content=json.dumps(body))
    # OIP error shape: {"error": "<message>"} (what tritonclient parses), plus our code
    assert r.status_code == 400 and r.json()["code"] == code and isinstance(r.json()["error"], str)


def test_binary_header_length_larger_than_body(gateway):
    r = gateway.post("/v2/models/digits/infer", content=b"{}",
                     headers={"Inference-Header-Content-Length": "500"})
    assert r.status_code == 400 and r.json()["code"] == "bad_header"


def test_many_random_bodies_never_give_5xx(gateway):
    """A small fuzz: random bytes and mangled valid bodies, multipart and JSON, never a 5xx."""
    rng = np.random.default_rng(0)
    valid = json.dumps({"instances": [{"image_b64": base64.b64encode(GOOD_PNG).decode()}]}).encode()
    for i in range(40):
        if i % 2:
            body = bytearray(valid)
            for j in rng.integers(0, len(body), size=5):
                body[j] = int(rng.integers(0, 256))
            r = gateway.post("/v1/predict", content=bytes(body), headers={"content-type": "application/json"})
        else:
            blob = rng.integers(0, 256, size=int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
            r = gateway.post("/v1/predict", files=[("file", ("x", GOOD_PNG[:40] + blob, "image/png"))])
        assert r.status_code < 500, r.text
