"""Autoscaling follows the load: Preprocess starts at zero replicas, scales up under load, and back
to zero after it. The cold start from zero is measured and reported (printed, and written to
autoscaling.json in the test's temp folder). Runs near the end of the session (file order), then
puts the default config back."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from services.settings import REPO_ROOT
from services.models.digits.samples import holdout_images
from services.runtime.stack import render_serve_config

pytestmark = pytest.mark.integration
CONFIG = REPO_ROOT / "ray_apps" / "configs" / "inference-autoscale.yaml"


def running(stack, deployment: str) -> int:
    d = stack.ray.serve_status()["applications"]["inference"]["deployments"][deployment]
    return sum(1 for r in d.get("replicas", []) if r.get("state") == "RUNNING")


def wait_for(predicate, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def autoscaling(stack):
    rendered = render_serve_config(CONFIG, stack.work_dir / "serve-autoscale.yaml",
                                   http_port=stack.settings.serve.http_port)
    stack.ray.serve_deploy(rendered)
    try:
        yield stack
    finally:
        default = render_serve_config(stack.serve_config, stack.work_dir / "serve-default.yaml",
                                      http_port=stack.settings.serve.http_port)
        stack.ray.serve_deploy(default)


def test_preprocess_scales_from_zero_up_with_load_and_back_down(autoscaling, tmp_path):
    stack = autoscaling
    url = f"{stack.gateway_url}/v1/predict"
    image = holdout_images(1)[0].data
    files = [("file", ("d.png", image, "image/png"))]
    wait_for(lambda: running(stack, "Preprocess") == 0, 60, "Preprocess did not rest at zero replicas")

    t0 = time.monotonic()
    r = httpx.post(url, files=files, timeout=60)
    cold_start_s = time.monotonic() - t0
    assert r.status_code == 200, r.text

    stop, seen, failures = threading.Event(), [], []

    def user() -> None:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 40
            while not stop.is_set() and time.monotonic() < deadline:
                resp = client.post(url, files=files)
                if resp.status_code != 200:
                    failures.append(resp.status_code)

    with ThreadPoolExecutor(12) as pool:
        for _ in range(12):
            pool.submit(user)
        try:
            scale_up_s = wait_for(lambda: seen.append(running(stack, "Preprocess")) or seen[-1] >= 2, 35,
                                  "Preprocess did not scale above one replica under load")
        finally:
            stop.set()
    assert not failures, failures[:5]
    scale_down_s = wait_for(lambda: running(stack, "Preprocess") == 0, 90,
                            "Preprocess did not scale back to zero after the load")
    report = {"cold_start_from_zero_s": round(cold_start_s, 2), "scale_up_s": round(scale_up_s, 1),
              "max_replicas_seen": max(seen), "scale_down_to_zero_s": round(scale_down_s, 1)}
    (tmp_path / "autoscaling.json").write_text(json.dumps(report, indent=2))
    print(f"\nautoscaling: {report}")
