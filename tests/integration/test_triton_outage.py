"""Triton goes away: 503 with Retry-After; Triton comes back: the gateway recovers by itself.

Runs last in the session (file order) because it restarts the session's Triton.
"""

import time

import pytest


pytestmark = pytest.mark.integration

BODY = {"instances": [{"pixels": [[0, 0, 5, 13, 9, 1, 0, 0]] * 8}]}


def test_triton_down_is_503_and_recovery_is_automatic(stack, gateway):
    assert gateway.post("/v1/predict", json=BODY).status_code == 200
    stack.triton.stop()
    try:
        r = gateway.post("/v1/predict", json=BODY)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit()
        assert r.json()["error"]["code"] == "upstream_unavailable"
        health = gateway.get("/healthz")
        assert health.status_code == 503 and "Triton" in health.json()["reason"]
        assert gateway.get("/v2/health/ready").status_code == 503
        assert gateway.get("/v2/health/live").status_code == 200
    finally:
        stack.triton = stack.new_triton().start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = gateway.post("/v1/predict", json=BODY)
        if r.status_code == 200:
            break
        time.sleep(0.5)
    assert r.status_code == 200, f"gateway did not recover after Triton restarted: {r.text}"
    # Health uses the gRPC channel, which retries the connection at most 1 s apart (traced predictions
    # may have gone over HTTP meanwhile): it follows within a few seconds.
    deadline = time.monotonic() + 10
    while (health := gateway.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health.status_code == 200, health.text
