"""The shipped Prometheus config, run by a real Prometheus against the running stack.

infra/prometheus/prometheus.yml is rendered with this stack's Ray temp dir and Triton metrics port
(nothing else changes: the relabelling under test is the file's own), a real ``prometheus`` scrapes
for a while, and its query API must show the gateway's requests as ``rts_requests_total`` (recorded
with ray.util.metrics, exported by Ray's metrics agent as ``ray_rts_*``, renamed by the config),
the stage histograms, and Triton's ``nv_inference_*``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from services.settings import REPO_ROOT
from services.runtime.processes import ManagedProcess, free_port

pytestmark = pytest.mark.integration

CONFIG = REPO_ROOT / "infra" / "prometheus" / "prometheus.yml"


def render(stack, path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(CONFIG.parent / name) for name in config["rule_files"]]  # relative to the file
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [f.replace("/tmp/rts-ray", str(stack.settings.ray.temp_dir)) for f in sd["files"]]
            sd["refresh_interval"] = "1s"
        for static in job.get("static_configs", []):
            static["targets"] = [t.replace(":8102", f":{stack.settings.triton.metrics_port}")
                                 .replace(":8103", f":{stack.settings.launcher.metrics_port}")
                                 for t in static["targets"]]
    path.write_text(yaml.safe_dump(config, sort_keys=False))


class Prometheus(ManagedProcess):
    what = "prometheus"

    def __init__(self, binary: str, work: Path) -> None:
        super().__init__(work / "prometheus.log")
        self.binary, self.work, self.port = binary, work, free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [self.binary, f"--config.file={self.work / 'prometheus.yml'}", f"--storage.tsdb.path={self.work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; `make test` does it as root)")
    work = tmp_path_factory.mktemp("prometheus")
    render(stack, work / "prometheus.yml")
    with Prometheus(binary, work) as server:
        yield server.url


def query(url: str, promql: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def wait_for_series(url: str, promql: str, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(url, promql)
        if result:
            return result
        time.sleep(1)
    targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    raise AssertionError(f"no series for {promql} after {timeout_s:.0f}s; targets: "
                         f"{[(t['scrapePool'], t['scrapeUrl'], t['health'], t['lastError']) for t in targets]}")


def test_shipped_config_scrapes_gateway_metrics_through_ray_and_triton(stack, gateway, prometheus):
    for _ in range(5):
        assert gateway.post("/v1/predict", json={"instances": [{"pixels": [[0] * 8] * 8}]}).status_code == 200

    series = wait_for_series(prometheus, 'rts_requests_total{route="/v1/predict",status="200"}')
    assert sum(float(s["value"][1]) for s in series) >= 5
    assert {s["metric"]["job"] for s in series} == {"ray"}
    assert not query(prometheus, "ray_rts_requests_total")  # renamed, not duplicated
    stages = {s["metric"]["stage"] for s in wait_for_series(prometheus, "rts_stage_seconds_count")}
    assert {"preprocess", "triton", "postprocess", "total"} <= stages
    # Requests reach Triton through each version's own ensemble (digits__v<N>) once the rollout routes them.
    triton = wait_for_series(prometheus, 'nv_inference_request_success{job="triton",model=~"digits(__v[0-9]+)?"}')
    assert sum(float(s["value"][1]) for s in triton) >= 5
    # The launcher's own endpoint: the processes it supervises.
    supervised = wait_for_series(prometheus, 'rts_process_up{job="launcher"}')
    assert {s["metric"]["process"] for s in supervised} >= {"triton"}
    assert all(s["value"][1] == "1" for s in query(prometheus, "up"))


def test_shipped_alert_rules_are_loaded_and_evaluated(prometheus):
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert {"ModelDriftWithoutNewData", "ModelVersionRolledBack", "RolloutStalled", "ProcessCrashLooping"} <= set(loaded)
    deadline = time.monotonic() + 30
    while any(r["health"] == "unknown" for r in loaded.values()) and time.monotonic() < deadline:
        time.sleep(1)
        rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}
