"""The stock tritonclient.http client, with its defaults, against the gateway (not Triton)."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from services.models.digits.data import load_split
from services.models.digits.samples import holdout_images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack):
    c = httpclient.InferenceServerClient(stack.gateway_url.removeprefix("http://"))
    yield c
    c.close()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert {i["name"] for i in meta["inputs"]} == {"image", "pixels"}
    assert {o["name"] for o in meta["outputs"]} == {"label", "confidence", "probabilities"}


def test_infer_pixels_with_binary_tensors(client):
    split = load_split()
    x = split.holdout.x[:16].astype(np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("digits", [inp])
    labels = result.as_numpy("label")
    probs = result.as_numpy("probabilities")
    assert labels.shape == (16,) and probs.shape == (16, 10)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    assert (labels == split.holdout.y[:16]).mean() >= 0.9
    assert result.get_response()["model_version"].isdigit()


def test_infer_image_files_as_bytes_tensor(client):
    images = holdout_images(10, seed=3)
    inp = httpclient.InferInput("image", [len(images)], "BYTES")
    inp.set_data_from_numpy(np.array([d.data for d in images], dtype=object))
    out = httpclient.InferRequestedOutput("label")
    served = client.infer("digits", [inp]).get_response()["model_version"]
    result = client.infer("digits", [inp], outputs=[out], model_version=served)
    assert (result.as_numpy("label") == [d.label for d in images]).mean() >= 0.9
    assert result.as_numpy("probabilities") is None  # only what was asked for


def test_errors_surface_as_client_exceptions(client):
    x = np.zeros((1, 3, 3), dtype=np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("digits", [inp])
    with pytest.raises(InferenceServerException, match="no model named"):
        client.get_model_metadata("cats")
    y = np.zeros((1, 8, 8), dtype=np.float32)
    inp = httpclient.InferInput("pixels", list(y.shape), "FP32")
    inp.set_data_from_numpy(y)
    with pytest.raises(InferenceServerException, match="version 99 is not served") as err:
        client.infer("digits", [inp], model_version="99")
    assert err.value.status() == "404"
