"""Predictions through the HTTP API, as a user sends them."""

import base64

import numpy as np

from services.models.digits.data import load_split
from services.models.digits.samples import holdout_images

pytestmark = __import__("pytest").mark.integration


def test_healthz_is_ok_when_everything_is_up(gateway):
    r = gateway.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_held_out_digit_images_are_recognized(gateway):
    """Held-out digits as PNG/JPEG/BMP files of several sizes and polarities: >= 95% right."""
    images = holdout_images(150)
    correct, wrong = 0, []
    for start in range(0, len(images), 10):
        batch = images[start : start + 10]
        files = [("file", (f"d{i}.img", d.data, "application/octet-stream")) for i, d in enumerate(batch)]
        r = gateway.post("/v1/predict", files=files)
        assert r.status_code == 200, r.text
        for d, p in zip(batch, r.json()["predictions"]):
            if p["label"] == d.label:
                correct += 1
            else:
                wrong.append((d.description, d.label, p["label"]))
    accuracy = correct / len(images)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; misses: {wrong}"


def test_response_names_model_version_and_request(gateway):
    pixels = load_split().holdout.x[0]
    r = gateway.post("/v1/predict?top_k=4", json={"instances": [{"pixels": pixels.tolist()}]},
                     headers={"X-Request-ID": "req-123"})
    body = r.json()
    assert r.status_code == 200
    assert body["model"]["name"] == "digits" and body["model"]["version"].isdigit()
    assert body["request_id"] == "req-123" and r.headers["x-request-id"] == "req-123"
    pred = body["predictions"][0]
    scores = [t["score"] for t in pred["top_k"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert pred["label"] == pred["top_k"][0]["label"] and pred["confidence"] == scores[0]


def test_json_batch_mixes_base64_images_and_pixel_grids(gateway):
    split = load_split()
    image = holdout_images(1, seed=7)[0]
    instances = [{"image_b64": base64.b64encode(image.data).decode()}] + [
        {"pixels": split.holdout.x[i].tolist()} for i in range(5)]
    r = gateway.post("/v1/models/digits/predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels[0] == image.label
    assert np.mean(np.array(labels[1:]) == split.holdout.y[:5]) >= 0.8


def test_openapi_document_and_docs_page(gateway):
    spec = gateway.get("/openapi.json").json()
    for path in ("/v1/predict", "/healthz", "/v2/models/{model}/infer"):
        assert path in spec["paths"]
    assert gateway.get("/docs").status_code == 200
