"""Progressive delivery on the real stack, under Locust load on loopback, with feedback.

One Locust run covers the module (``loadtests/run.py``, profile ``rollout``): users with an
``X-User-ID`` and a cohort header, 60% of answers followed by ``POST /v1/feedback`` with the truth.
Each test changes the digits policy through the admin API, brings a candidate (a real retraining
run on new data, or ``publish_candidate``: a good one, or a bad one its gates would have refused),
and waits for the rollout controller to act by itself; then checks, from every request Locust
made in the test's time span, that none failed. The load report at the end plots the traffic share
of each version and the SLO signals, with every decision marked.

- a good candidate goes shadow -> canary steps -> production by itself (retraining on new data);
- a candidate whose live accuracy (from feedback) is worse is rolled back before production;
- injected latency on a canary rolls it back;
- A/B by header sends each cohort to its version; an operator ends it (CLI promote, rollback);
- the bandit moves traffic toward the better version, and drops the worse one;
- blue-green switches all traffic at once after the shadow, and rolls back instantly.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from loadtests.run import read_timings, run_profile
from services.models.digits.data import load_split
from services.models.digits.gates import shift_one_pixel
from services.settings import REPO_ROOT
from tests.integration.conftest import DIRECT, set_policies

pytestmark = pytest.mark.integration

SPLIT = load_split()
MODEL = "digits"
FAST_SLO = ("slo: {min_requests: 40, min_duration_s: 3, max_error_rate: 0.02, p99_ratio: 2.0, p99_slack_ms: 60, "
            "max_disagreement: 0.2, min_feedback: 30, accuracy_margin: 0.05, confidence: 0.9}")


@pytest.fixture(scope="module")
def admin(stack):
    token = stack.settings.admin.token.get_secret_value()
    with httpx.Client(base_url=stack.gateway_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


class Load:
    """The module's Locust run, in the background; `since(t)` is every request it made after t."""

    def __init__(self, stack, out: Path) -> None:
        self.stack, self.out = stack, out
        self.stop = threading.Event()
        self.result: dict | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = run_profile(
            "rollout", self.stack.gateway_url, self.stack.ray.dashboard_url, self.out, stop_early=self.stop,
            rollout=(MODEL,), admin_token=self.stack.settings.admin.token.get_secret_value(),
            env={"LOADTEST_FEEDBACK_SHARE": "0.6", "LOADTEST_COHORT_HEADER": "x-cohort"})

    def start(self) -> "Load":
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(self.since(0)[0]) < 20:
            time.sleep(0.5)
        assert len(self.since(0)[0]) >= 20, "Locust did not start sending requests"
        return self

    def since(self, t0: float, t1: float | None = None) -> tuple[np.ndarray, list[str]]:
        timings, answered = read_timings(self.out / "timings.csv")
        if not len(timings):
            return timings, answered
        keep = (timings[:, 0] >= t0) & (timings[:, 0] < (t1 or float("inf")))
        return timings[keep], [a for a, k in zip(answered, keep) if k]

    def assert_no_failures(self, t0: float) -> int:
        timings, _ = self.since(t0)
        failed = int((timings[:, 2] == 0).sum()) if len(timings) else 0
        failures = (self.out / "locust_failures.csv")
        assert failed == 0, f"{failed} of {len(timings)} requests failed since the test began " \
                            f"({failures.read_text() if failures.exists() else 'see locust.log'})"
        assert len(timings) > 50, "too little load to say anything"
        return len(timings)

    def answered(self, t0: float, t1: float | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for who in self.since(t0, t1)[1]:
            if who.startswith(MODEL + ":"):
                counts[who.split(":")[1]] = counts.get(who.split(":")[1], 0) + 1
        return counts


@pytest.fixture(scope="module")
def load(stack):
    # Kept where `python -m loadtests.run` puts its reports: a user of `make test` can look at the plots.
    out = REPO_ROOT / "loadtests" / "results" / time.strftime("test-rollout-%Y%m%d-%H%M%S")
    running = Load(stack, out).start()
    try:
        yield running
    finally:
        running.stop.set()
        running.thread.join(timeout=120)
        set_policies(stack, DIRECT, [MODEL])
    result = running.result
    assert result is not None and result["locust_exit"] in (0, 1), "the Locust run did not finish"
    status = result["rollouts"][MODEL]
    assert {d["decision"] for d in status["decisions"]} >= {"to_shadow", "to_canary", "promote", "rollback"}
    plot = out / f"rollout-{MODEL}.png"
    assert plot.exists() and plot.stat().st_size > 20_000, "the rollout plot is missing or empty"
    print(f"rollout load report: {out} (rollout-{MODEL}.png, load.png, report.html)")


def set_policy(admin, text: str) -> None:
    r = admin.put(f"/admin/models/{MODEL}/policy", json={"yaml": text})
    assert r.status_code == 200, r.text


def status(admin, timeline: int = 0) -> dict:
    r = admin.get(f"/admin/models/{MODEL}/status", params={"timeline": timeline})
    assert r.status_code == 200, r.text
    return r.json()


def publish(stack, quality: str, seed: int) -> int:
    """A candidate of known quality, published as a run would publish it (see publish_candidate)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **stack.job_env(), "RAY_ADDRESS": stack.ray.address, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-m", "tests.integration.publish_candidate", MODEL, quality,
                           "--seed", str(seed)], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["version"]


def wait_for(admin, version: int, decisions: set[str], timeout_s: float = 240) -> dict:
    """The first decision on `version` among `decisions`; fails with the controller's view if none comes."""
    deadline = time.monotonic() + timeout_s
    seen = {}
    while time.monotonic() < deadline:
        seen = status(admin)
        for d in seen["decisions"]:
            if d["version"] == version and d["decision"] in decisions:
                return d
        time.sleep(1)
    raise AssertionError(f"no {decisions} for version {version} in {timeout_s}s; state {seen.get('state')}, "
                         f"stages {seen.get('stages')}, decisions {seen.get('decisions', [])[-5:]}")


def path_of(admin, version: int) -> list[str]:
    """The stages a version went through, from the registry's transitions."""
    described = admin.get(f"/admin/models/{MODEL}").json()
    entry = next(v for v in described["versions"] if v["version"] == version)
    return [t["to"] for t in entry["transitions"]]


def answered_by(stack, headers: dict[str, str], wanted: str, timeout_s: float = 10) -> set[str]:
    """The versions answering these headers, once `wanted` alone answers them (a decision reaches every
    replica with the next routing refresh, about a second), or what answers at the deadline."""
    deadline = time.monotonic() + timeout_s
    while (got := ask(stack, headers)) != {wanted} and time.monotonic() < deadline:
        time.sleep(0.5)
    return got


def ask(stack, headers: dict[str, str], n: int = 12) -> set[str]:
    """The versions that answer `n` requests sent with these headers."""
    body = {"instances": [{"pixels": SPLIT.holdout.x[0].tolist()}]}
    versions = set()
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        for i in range(n):
            r = client.post(f"/v1/models/{MODEL}/predict", json=body, headers={"X-User-ID": f"probe-{i}", **headers})
            assert r.status_code == 200, r.text
            versions.add(r.json()["model"]["version"])
    return versions


def test_a_good_candidate_goes_shadow_canary_production_by_itself(stack, admin, load):
    """The whole loop: new labelled data -> a retraining run -> a candidate -> live evidence -> production."""
    t0 = time.time()
    set_policy(admin, "strategy: progressive\nshadow: {share: 1.0}\ncanary: {steps: [0.2, 0.5]}\n" + FAST_SLO)
    production = status(admin)["production"]
    incoming = Path(stack.settings.data_uri.removeprefix("file://")) / "datasets" / MODEL / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, images=shift_one_pixel(SPLIT.train.x[1400:1800]), labels=SPLIT.train.y[1400:1800])
    (incoming / ".rollout.npz.partial").write_bytes(buf.getvalue())
    (incoming / ".rollout.npz.partial").rename(incoming / "rollout.npz")
    r = admin.post(f"/admin/models/{MODEL}/retrain", json={"reason": "new labelled data (rollout test)"})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    deadline = time.monotonic() + 400
    while (r := admin.get(f"/admin/runs/{run_id}")).status_code == 404 or r.json()["outcome"] == "running":
        assert time.monotonic() < deadline, "the retraining run did not finish"
        time.sleep(2)
    run = r.json()
    assert run["outcome"] == "published" and run["stage"] == "candidate", run.get("reason")
    version = run["version"]
    assert status(admin)["production"] == production  # published, not serving: the policy decides

    decision = wait_for(admin, version, {"promote", "rollback"})
    assert decision["decision"] == "promote", (decision["reasons"], decision["numbers"])
    assert path_of(admin, version) == ["candidate", "shadow", "canary", "canary", "production"]
    decisions = [d for d in status(admin)["decisions"] if d["version"] == version]
    assert [d["decision"] for d in decisions] == ["to_shadow", "to_canary", "canary_step", "promote"]
    shadow_pass = decisions[1]["numbers"]
    assert shadow_pass["samples"] >= 40 and shadow_pass["disagreement"] <= 0.2
    final = decisions[-1]["numbers"]
    assert final["samples"] >= 40 and final["difference_low"] > -0.05  # non-inferior on live feedback
    assert status(admin)["stages"][str(production)] == "archived"
    assert answered_by(stack, {}, str(version)) == {str(version)}
    answered = load.answered(t0)
    assert answered.get(str(version), 0) > 50 and answered.get(str(production), 0) > 50
    load.assert_no_failures(t0)


def test_worse_live_accuracy_rolls_a_candidate_back_before_production(stack, admin, load):
    t0 = time.time()
    set_policy(admin, "strategy: progressive\nshadow: {share: 0}\ncanary: {steps: [0.2, 0.5]}\n"
               + FAST_SLO.replace("max_disagreement: 0.2", "max_disagreement: null")
               .replace("min_duration_s: 3", "min_duration_s: 30"))
    production = status(admin)["production"]
    version = publish(stack, "bad", seed=3)
    decision = wait_for(admin, version, {"promote", "rollback"})
    assert decision["decision"] == "rollback", decision
    assert any("live accuracy" in reason for reason in decision["reasons"]), decision
    numbers = decision["numbers"]
    assert numbers["accuracy_candidate"] < numbers["accuracy_production"] - 0.05
    assert path_of(admin, version) == ["candidate", "canary", "archived"]
    assert status(admin)["production"] == production
    assert answered_by(stack, {}, str(production)) == {str(production)}
    load.assert_no_failures(t0)


def test_injected_latency_rolls_a_canary_back(stack, admin, load):
    t0 = time.time()
    set_policy(admin, "strategy: progressive\nshadow: {share: 0}\ncanary: {steps: [0.3]}\n"
               + FAST_SLO.replace("min_duration_s: 3", "min_duration_s: 120"))
    production = status(admin)["production"]
    version = publish(stack, "good", seed=5)
    r = admin.post(f"/admin/models/{MODEL}/faults", json={"version": version, "latency_ms": 300})
    assert r.status_code == 200, r.text
    decision = wait_for(admin, version, {"promote", "rollback"})
    assert decision["decision"] == "rollback", decision
    assert any("p99 latency" in reason for reason in decision["reasons"]), decision
    assert decision["numbers"]["p99_ms"] > decision["numbers"]["p99_limit_ms"]
    assert status(admin)["production"] == production
    admin.post(f"/admin/models/{MODEL}/faults", json={"version": version, "latency_ms": 0})
    load.assert_no_failures(t0)  # slow, never failed


def test_ab_sends_each_cohort_to_its_version_until_an_operator_ends_it(stack, admin, load):
    t0 = time.time()
    set_policy(admin, "strategy: ab\nab: {header: x-cohort, cohorts: {a: production, b: challenger}}\n" + FAST_SLO)
    production = status(admin)["production"]
    version = publish(stack, "good", seed=7)
    wait_for(admin, version, {"to_canary"})
    assert answered_by(stack, {"X-Cohort": "b"}, str(version)) == {str(version)}
    assert ask(stack, {"X-Cohort": "a"}) == {str(production)}
    assert ask(stack, {}) == {str(production)}  # no cohort: production
    time.sleep(8)
    answered = load.answered(t0)  # Locust's users are half a, half b
    assert answered.get(str(version), 0) > 30 and answered.get(str(production), 0) > 30
    assert status(admin)["stages"][str(version)] == "canary"  # an A/B test never ends by itself

    env = {**os.environ, **stack.job_env()}
    cli = [sys.executable, "-m", "services.cli", "models"]
    shown = subprocess.run([*cli, "status", MODEL], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and f"{version}  canary" in shown.stdout, shown.stdout + shown.stderr
    promoted = subprocess.run([*cli, "promote", MODEL, str(version)], env=env, capture_output=True, text=True,
                              timeout=120)
    assert promoted.returncode == 0, promoted.stderr
    assert answered_by(stack, {"X-Cohort": "a"}, str(version), timeout_s=5) == {str(version)}
    back = subprocess.run([*cli, "rollback", MODEL], env=env, capture_output=True, text=True, timeout=120)
    assert back.returncode == 0 and json.loads(back.stdout)["production"] == production, back.stderr
    assert answered_by(stack, {"X-Cohort": "b"}, str(production), timeout_s=5) == {str(production)}
    load.assert_no_failures(t0)


def test_the_bandit_moves_traffic_to_the_better_version(stack, admin, load):
    set_policy(admin, "strategy: bandit\nbandit: {explore_floor: 0.05, promote_confidence: 0.995}\n" + FAST_SLO)
    production = status(admin)["production"]
    t_test = time.time()
    version = publish(stack, "bad", seed=9)
    t0 = wait_for(admin, version, {"to_canary"})["at"]  # both versions' rewards count from here
    decision = wait_for(admin, version, {"promote", "rollback"})
    t1 = decision["at"]
    assert decision["decision"] == "rollback" and "bandit's best" in decision["reasons"][0], decision
    assert decision["numbers"]["p_best"][str(production)] >= 0.995
    # The controller's plan, tick by tick: the candidate starts with an even chance (both arms' rewards
    # count from the same moment), and the share it is routed falls as feedback shows it is worse.
    routed = [p["shares"].get(str(version)) for p in status(admin, timeline=600)["timeline"] if t0 <= p["t"] <= t1]
    routed = [share for share in routed if share is not None]
    assert len(routed) >= 3 and routed[0] > 0.3 and routed[-1] < 0.2, routed
    answered = load.answered(t0, t1)  # and what Locust's requests got
    assert answered.get(str(version), 0) / max(sum(answered.values()), 1) < 0.35, answered
    load.assert_no_failures(t_test)


def test_blue_green_switches_all_at_once_and_rolls_back_instantly(stack, admin, load):
    t0 = time.time()
    set_policy(admin, "strategy: blue_green\nshadow: {share: 1.0}\nblue_green: {auto_switch: true}\n" + FAST_SLO)
    production = status(admin)["production"]
    version = publish(stack, "good", seed=13)
    decision = wait_for(admin, version, {"promote", "rollback"})
    assert decision["decision"] == "promote" and "blue-green" in decision["reasons"][0], decision
    assert path_of(admin, version) == ["candidate", "shadow", "production"]
    assert answered_by(stack, {}, str(version)) == {str(version)}  # all traffic at once: no canary in between
    switched = time.monotonic()
    r = admin.post(f"/admin/models/{MODEL}/rollback", json={})
    assert r.status_code == 200 and r.json()["production"] == production, r.text
    assert r.json()["seconds"] < 5  # the replaced production stayed loaded: nothing to load
    assert answered_by(stack, {}, str(production), timeout_s=5) == {str(production)}
    assert time.monotonic() - switched < 10
    load.assert_no_failures(t0)


def test_feedback_becomes_training_data_for_the_next_run(stack, admin, load):
    """The truth users sent back (with the rows the model was given) is written as training data; a run
    trains on it like new files: new labelled data, so it publishes a candidate."""
    set_policy(admin, "strategy: manual\n")
    feedback = Path(stack.settings.data_uri.removeprefix("file://")) / "datasets" / MODEL / "feedback"
    deadline = time.monotonic() + 120
    while not list(feedback.glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(2)
    files = sorted(feedback.glob("*.npz"))
    assert files, "the controller wrote no feedback data in 2 minutes of load"
    with np.load(files[0]) as data:
        assert data["x"].shape[1:] == (8, 8) and len(data["y"]) == len(data["x"]) > 0
        assert set(np.unique(data["y"])) <= set(range(10))
    r = admin.post(f"/admin/models/{MODEL}/retrain", json={"reason": "labelled feedback arrived"})
    assert r.status_code == 202, r.text
    run_id, deadline = r.json()["run_id"], time.monotonic() + 400
    while (r := admin.get(f"/admin/runs/{run_id}")).status_code == 404 or r.json()["outcome"] == "running":
        assert time.monotonic() < deadline, "the retraining run did not finish"
        time.sleep(2)
    run = r.json()
    assert run["outcome"] == "published" and run["stage"] == "candidate", run.get("reason")
    trained_on = run["stages"]["validate"]["new_files"]
    assert any(key.startswith(f"datasets/{MODEL}/feedback/") for key in trained_on), trained_on
    assert admin.post(f"/admin/models/{MODEL}/rollback", json={}).json()["retired"] == [run["version"]]
