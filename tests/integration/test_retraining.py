"""The retraining loop on the session's real stack: new data -> Ray Job -> gates -> new Triton version.

Runs start through the admin HTTP API (the same path as `rts models retrain`); the event-driven
path (files landing in incoming/, storage notifications) is covered by tests/events and
test_retraining_events. Requests keep flowing while a new version is switched in, and none fails.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.models.digits.data import load_split
from services.models.digits.gates import shift_one_pixel
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.integration

SPLIT = load_split()


@pytest.fixture(scope="module")
def admin(stack):
    token = stack.settings.admin.token.get_secret_value()
    with httpx.Client(base_url=stack.gateway_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def incoming_dir(stack) -> Path:
    path = Path(stack.settings.data_uri.removeprefix("file://")) / "datasets/digits/incoming"
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop_npz(stack, name: str, images: np.ndarray, labels: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    tmp = incoming_dir(stack) / f".{name}.partial"
    tmp.write_bytes(buf.getvalue())
    tmp.rename(incoming_dir(stack) / name)  # appear whole, as an upload would


def run_and_wait(admin, reason: str, timeout_s: float = 240, model: str = "digits", force: bool = False) -> dict:
    r = admin.post(f"/admin/models/{model}/retrain", json={"reason": reason, "force": force})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = admin.get(f"/admin/runs/{run_id}")
        if r.status_code == 200 and r.json()["outcome"] not in ("running",):
            return r.json()
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s}s")


def served_version(gateway, admin, timeout_s: float = 15) -> str:
    """The version answering /v1/predict once it is the registry's production version: a decision
    reaches every replica with its next routing refresh (about a second), or what answers at the deadline."""
    body = {"instances": [{"pixels": SPLIT.holdout.x[0].tolist()}]}
    deadline = time.monotonic() + timeout_s
    while True:
        answered = gateway.post("/v1/predict", json=body).json()["model"]["version"]
        production = admin.get("/admin/models/digits/status").json()["production"]
        if answered == str(production) or time.monotonic() > deadline:
            return answered
        time.sleep(0.5)


def test_admin_api_needs_the_token(gateway):
    assert gateway.get("/admin/models").status_code == 401
    assert gateway.get("/admin/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert gateway.post("/admin/models/digits/retrain", json={}).status_code == 401


def test_a_run_without_new_data_publishes_nothing(gateway, admin):
    before = served_version(gateway, admin)
    run = run_and_wait(admin, "nothing new")
    assert run["outcome"] == "skipped", run.get("reason")
    assert "no new accepted data" in run["reason"] and "train" not in run["stages"]
    assert served_version(gateway, admin) == before


def test_new_data_makes_a_new_version_serve_with_no_failed_requests(stack, gateway, admin):
    before = served_version(gateway, admin)
    # New labelled data: training digits moved by a pixel (new images, right labels).
    drop_npz(stack, "shifted.npz", shift_one_pixel(SPLIT.train.x[:400]), SPLIT.train.y[:400])
    body = {"instances": [{"pixels": SPLIT.holdout.x[i].tolist()} for i in range(4)]}
    with Traffic(stack.gateway_url, [("/v1/predict", body)]) as traffic:
        run = run_and_wait(admin, "new shifted digits")
        time.sleep(1.0)
    assert run["outcome"] == "published", run.get("reason")
    assert all(g["passed"] for g in run["gates"])
    new = str(run["version"])
    assert new != before and served_version(gateway, admin) == new
    assert traffic.failed == 0, traffic.errors[:5]
    assert traffic.ok > 10 and new in traffic.versions["digits"]

    models = admin.get("/admin/models/digits").json()
    record = next(v for v in models["versions"] if v["version"] == run["version"])
    assert record["serving"] and models["serving"] == run["version"]
    lineage = record["lineage"]
    assert [f["key"] for f in lineage["data"]["files"]] == ["datasets/digits/accepted/shifted.npz"]
    assert len(lineage["data"]["files"][0]["sha256"]) == 64
    assert lineage["code_version"] and lineage["params"]["workers"] >= 1
    assert {"train", "evaluate_and_gate", "load_and_verify", "go_live"} <= set(lineage["timings"])
    assert lineage["events"][0]["type"] == "rts.retrain.requested"
    assert lineage["data"]["training_rows"] > lineage["data"]["base_rows"]


def test_bad_data_is_rejected_with_a_report_and_nothing_changes(stack, gateway, admin):
    before = served_version(gateway, admin)
    (incoming_dir(stack) / "broken.csv").write_text("p1,p2,label\n1,2,3\n")
    images = SPLIT.train.x[:5].copy()
    images[0, 0, 0] = 99  # out of the 0..16 range
    drop_npz(stack, "out_of_range.npz", images, SPLIT.train.y[:5])
    run = run_and_wait(admin, "bad files")
    rejected = {Path(k).name for k in run["stages"]["validate"]["rejected_files"]}
    assert rejected == {"broken.csv", "out_of_range.npz"}
    root = Path(stack.settings.data_uri.removeprefix("file://")) / "datasets/digits/rejected"
    report = (root / "out_of_range.npz.report.json").read_text()
    assert "0..16" in report and (root / "out_of_range.npz").exists()
    assert not (incoming_dir(stack) / "broken.csv").exists()
    # Nothing usable arrived: the run publishes nothing, and says so.
    assert run["outcome"] == "skipped", run.get("reason")
    assert served_version(gateway, admin) == before


def test_a_model_that_fails_a_gate_never_serves(stack, gateway, admin):
    before = served_version(gateway, admin)
    rng = np.random.default_rng(0)
    poisoned = shift_one_pixel(SPLIT.train.x[400:1400])
    drop_npz(stack, "mislabelled.npz", poisoned, rng.integers(0, 10, size=len(poisoned)))
    run = run_and_wait(admin, "mislabelled data")
    assert run["outcome"] == "gates_failed", run.get("reason")
    assert any(not g["passed"] for g in run["gates"])
    assert served_version(gateway, admin) == before
    assert run["stages"]["evaluate_and_gate"]["quarantined_files"] == ["datasets/digits/quarantined/mislabelled.npz"]


def test_rollback_in_seconds_and_forward_again(gateway, admin):
    models = admin.get("/admin/models/digits").json()
    current = models["serving"]
    assert current > 1
    started = time.monotonic()
    r = admin.post("/admin/models/digits/rollback", json={"version": 1})
    assert r.status_code == 200, r.text
    assert time.monotonic() - started < 30
    assert served_version(gateway, admin) == "1"
    assert admin.post("/admin/models/digits/rollback", json={"version": current}).status_code == 200
    assert served_version(gateway, admin) == str(current)
    r = admin.post("/admin/models/digits/rollback", json={"version": 999})
    assert r.status_code == 409 and "999" in r.json()["error"]["message"]
    assert admin.post("/admin/models/cats/rollback", json={"version": 1}).status_code == 404


def test_a_run_of_two_workers_trains_on_a_ray_train_worker_group(stack):
    """One worker (the default) is one Ray task; more are a Ray Train worker group: that path, end to end."""
    from services.retraining.jobs import RayJobs, submit_run, wait_for_run
    from services.retraining.requests import retrain_request
    from services.retraining.run import FINISHED
    from services.settings import Settings

    values = stack.settings.model_dump(exclude_unset=True)
    two = Settings(**{**values, "retrain": {**values.get("retrain", {}), "workers": 2}})
    event = retrain_request("diabetes", "two workers", source="tests/integration", force=True)
    run_id = submit_run(two, "diabetes", [event])
    record = wait_for_run(two, run_id, timeout_s=300)
    logs = RayJobs(two.ray.jobs_url).get_job_logs(run_id)
    assert record["outcome"] in FINISHED, (record.get("reason"), logs[-3000:])
    assert record["stages"]["train"]["workers"] == 2
    assert "training worker 0/2" in logs and "training worker 1/2" in logs, logs[-3000:]
