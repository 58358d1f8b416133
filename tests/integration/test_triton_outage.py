"""Triton killed -9 under the session's stack: 503 with Retry-After while it is down, the launcher starts
it again with the versions in play, and the gateway recovers by itself; /healthz and the launcher's
metrics show the restart.

Runs late in the session (file order) because it restarts the session's Triton.
"""

import os
import signal
import time
import urllib.request

import pytest


pytestmark = pytest.mark.integration

BODY = {"instances": [{"pixels": [[0, 0, 5, 13, 9, 1, 0, 0]] * 8}]}


def restarts(stack) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.settings.launcher.metrics_port}/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('rts_process_restarts_total{process="triton"}'):
                return float(line.split()[-1])
    raise AssertionError("no rts_process_restarts_total for triton on the launcher's /metrics")


def test_triton_killed_is_503_then_restarted_by_the_launcher(stack, gateway):
    assert gateway.post("/v1/predict", json=BODY).status_code == 200
    before, killed = restarts(stack), stack.triton
    started = time.monotonic()
    os.kill(killed.pid, signal.SIGKILL)
    killed.proc.wait(timeout=10)

    r = gateway.post("/v1/predict", json=BODY)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "upstream_unavailable"
    health = gateway.get("/healthz")
    assert health.status_code == 503 and "Triton" in health.json()["reason"]
    deadline = time.monotonic() + 5  # the launcher looks twice a second
    while health.json()["processes"]["triton"]["state"] != "restarting" and time.monotonic() < deadline:
        time.sleep(0.2)
        health = gateway.get("/healthz")
    assert health.json()["processes"]["triton"]["state"] == "restarting", health.text
    assert gateway.get("/v2/health/ready").status_code == 503
    assert gateway.get("/v2/health/live").status_code == 200

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = gateway.post("/v1/predict", json=BODY)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text  # down is 503 with Retry-After, never anything else
        time.sleep(0.2)
    recovered = time.monotonic() - started
    print(f"\n[triton] killed -9: answered again {recovered:.1f}s later, restarted by the launcher")
    assert r.status_code == 200, f"the gateway did not recover after the launcher restarted Triton: {r.text}"
    assert stack.triton is not killed and stack.triton.running
    deadline = time.monotonic() + 10  # counted once the launcher's start() returns, just after Triton is ready
    while restarts(stack) != before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert restarts(stack) == before + 1
    # Health uses the gRPC channel, which retries the connection at most 1 s apart: it follows within seconds.
    deadline = time.monotonic() + 10
    while (health := gateway.get("/healthz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health.status_code == 200, health.text
    assert health.json()["processes"]["triton"]["restarts"] >= 1
