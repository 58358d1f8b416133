"""Drift through the real gateway: undrifted traffic stays quiet; drifted traffic is detected and
writes a retrain request into the data bucket (the same event path as new data)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from services.models.digits.data import load_split

pytestmark = pytest.mark.integration


def send(gateway, images: np.ndarray) -> None:
    for start in range(0, len(images), 32):
        batch = images[start : start + 32]
        r = gateway.post("/v1/predict", json={"instances": [{"pixels": img.tolist()} for img in batch]})
        assert r.status_code == 200, r.text


def requests_dir(stack) -> Path:
    return Path(stack.settings.data_uri.removeprefix("file://")) / "datasets/digits/requests"


def request_files(stack) -> set[Path]:
    folder = requests_dir(stack)
    return {p for p in folder.glob("*.json") if not p.name.startswith(".")} if folder.exists() else set()


def wait_for_report(gateway, predicate, timeout_s=30) -> dict:
    deadline = time.monotonic() + timeout_s
    report = {}
    while time.monotonic() < deadline:
        report = gateway.get("/drift").json()
        if predicate(report):
            return report
        time.sleep(0.5)
    raise AssertionError(f"drift report never matched: {report}")


def test_undrifted_traffic_does_not_trigger_and_drifted_traffic_does(stack, gateway):
    holdout = load_split().holdout.x
    send(gateway, holdout[:32])  # the first request of a version loads its reference
    wait_for_report(gateway, lambda r: "drifted" in r)
    before = request_files(stack)

    # Held-out digits, enough to fill the whole window (earlier tests' traffic leaves the window with them).
    seen = wait_for_report(gateway, lambda r: "seen" in r)["seen"]
    send(gateway, np.concatenate([holdout, holdout[:200]]))
    report = wait_for_report(gateway, lambda r: r.get("seen", 0) >= seen + 560)
    assert report["drifted"] is False, report
    assert (request_files(stack)) == before

    # Scanner noise: blotchy pages the model never saw. Survives preprocessing (unlike inversion).
    rng = np.random.default_rng(0)
    noisy = np.clip(rng.uniform(0, 16, size=(400, 8, 8)) * (rng.random((400, 8, 8)) < 0.6), 0, 16)
    send(gateway, noisy)
    report = wait_for_report(gateway, lambda r: r.get("drifted") is True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (request_files(stack) - before):
        time.sleep(0.5)
    new = request_files(stack) - before
    assert len(new) == 1, new
    import json

    event = json.loads(next(iter(new)).read_text())
    assert event["type"] == "rts.retrain.requested" and event["data"]["reason"] == "drift"
