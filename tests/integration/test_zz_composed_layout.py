"""The composed layout (one Serve deployment per stage) serves the same API as the default fused one.

Redeploys the session's app with ray_apps/configs/inference.yaml, checks predictions and that a
user error raised inside the Preprocess replica still reaches the client as the same 4xx; then
puts the default config back. Runs after the other integration modules (file order).
"""

import numpy as np
import pytest
import tritonclient.http as httpclient

from services.settings import REPO_ROOT
from services.models.digits.samples import holdout_images
from services.runtime.stack import render_serve_config

pytestmark = pytest.mark.integration


def deploy(stack, config_name: str) -> None:
    rendered = render_serve_config(REPO_ROOT / "ray_apps" / "configs" / config_name,
                                   stack.work_dir / f"serve-{config_name}", http_port=stack.settings.serve.http_port)
    stack.ray.serve_deploy(rendered)


@pytest.fixture(scope="module")
def composed(stack):
    deploy(stack, "inference.yaml")
    try:
        yield stack
    finally:
        deploy(stack, stack.serve_config.name)


def test_composed_layout_has_one_deployment_per_stage(composed):
    deployments = composed.ray.serve_status()["applications"]["inference"]["deployments"]
    assert set(deployments) == {"Ingress", "Preprocess", "TritonEnsemble", "Postprocess"}
    assert all(d["status"] == "HEALTHY" for d in deployments.values())


def test_composed_layout_predicts_and_reports_errors(composed, gateway):
    images = holdout_images(20, seed=11)
    files = [("file", (f"{i}.png", d.data, "image/png")) for i, d in enumerate(images)]
    r = gateway.post("/v1/predict", files=files)
    assert r.status_code == 200
    labels = [p["label"] for p in r.json()["predictions"]]
    assert np.mean(np.array(labels) == [d.label for d in images]) >= 0.9

    r = gateway.post("/v1/predict", files=[("file", ("x.png", b"not an image", "image/png"))])
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_an_image"

    client = httpclient.InferenceServerClient(composed.gateway_url.removeprefix("http://"))
    x = np.zeros((2, 8, 8), dtype=np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("digits", [inp]).as_numpy("label").shape == (2,)
    client.close()
