"""The rollout controller's loop (``services.rollout.controller.Controller``), with no Ray and no Triton.

A real ``Registry`` over local stores (``triton=None``: promoting only pins files) holds real digits
versions (the conftest's ONNX files). A simulated gateway replica (``Gateway``) routes each request
by the routing table the controller wrote (the real ``Router``), answers it as the version is told
to behave (latency, failures, accuracy; an injected fault from the route), records what it saw in a
real ``LiveStats`` and hands ``take()`` to ``Controller.report``; the truth comes back through
``Controller.feedback``. Policies are set with ``set_policy`` and small SLOs, so a stage needs tens
of requests and no waiting.

Covered:

- progressive: candidate -> shadow -> canary step 1 -> canary step 2 -> production by itself, each
  step in the stages, the decisions and the routing table (shares seen by the gateway close to the
  steps); holding with too little evidence or feedback, and for ``min_duration_s``; a restarted
  controller resumes at its canary step;
- rollbacks (archived, routed to no more, never production): worse live accuracy from feedback,
  an injected latency fault, a slower shadow, errors, shadow disagreement, drift;
- direct (at once), manual (waits for an operator), blue-green (switch after the shadow; the
  operator's rollback goes back to the previous production; ``auto_switch: false`` waits), A/B
  (cohorts routed per policy; waits for the operator; safety SLOs still roll back), bandit
  (posteriors move with feedback; the better version is promoted with confidence, or the
  candidate rolled back when production is better);
- a newer candidate supersedes an older one; the routing table's revision moves only on change;
  faults set and cleared; an invalid stored policy falls back to the default; ``status``;
- feedback: classification labels and regression values joined to the logged prediction (batch
  and single row), the replica's own record, pending feedback joined when the prediction arrives,
  ``expire_pending``, a batch length mismatch; bandit rewards; ``flush_logs`` bounded segments.

The last section pins controller bugs found while writing these tests, now fixed.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from services.modelkit.discovery import load_package
from services.registry.publish import Registry
from services.registry.records import Records
from services.registry.repository import ModelRepository
from services.rollout import controller as controller_module
from services.rollout.controller import Controller, state_key
from services.rollout.live import LiveStats
from services.rollout.policy import Policy, package_policy_file, policy_key
from services.rollout.routing import ABRoute, Fault, Router, read_table, routing_key
from services.storage import open_store
from services.telemetry import metrics

PACKAGE = load_package("services.models.digits")
DIABETES = load_package("services.models.diabetes")
MODEL, FAMILY = PACKAGE.name, PACKAGE.family

# Small SLOs: a stage passes on 40 samples, at once; feedback only where a test asks for it. The
# margins are wide enough that no test depends on its random draws (checked over many gateway seeds).
FAST_SLO = dict(min_requests=40, min_duration_s=0, min_feedback=0, max_error_rate=0.05, p99_ratio=1.5,
                p99_slack_ms=10, max_disagreement=0.25, max_drift_psi=0.3)


def policy(strategy: str = "progressive", slo: dict | None = None, **sections) -> str:
    return yaml.safe_dump({"strategy": strategy, "slo": {**FAST_SLO, **(slo or {})}, **sections})


# ---- a simulated gateway replica --------------------------------------------------------------------

@dataclass
class Behaviour:
    latency_ms: float = 5.0
    error_rate: float = 0.0
    accuracy: float = 0.97


class Gateway:
    """One gateway replica: routes by the controller's table, records what it saw, reports it."""

    def __init__(self, controller: Controller, seed: int = 0) -> None:
        self.controller = controller
        self.live = LiveStats(replica="gateway-test")
        self.router = Router(controller.records, [MODEL])
        self.router._rng = random.Random(seed)
        np.random.seed(seed)  # the router's Thompson draws
        self.rng = random.Random(seed + 1)
        self.behaviour: dict[str, Behaviour] = {}
        self.count = 0
        self.answered: Counter = Counter()  # version -> requests it answered in the last serve()
        self.mirrored: Counter = Counter()

    def answer(self, version: str, truth: int, fault: Fault | None) -> tuple[bool, float, int]:
        b = self.behaviour.get(version, Behaviour())
        latency_ms = b.latency_ms * self.rng.uniform(0.8, 1.2) + (fault.latency_ms if fault else 0.0)
        failed = self.rng.random() < b.error_rate or (fault is not None and self.rng.random() < fault.error_rate)
        predicted = truth if self.rng.random() < b.accuracy else (truth + 1) % 10
        return not failed, latency_ms / 1000, predicted

    def serve(self, n: int, feedback: bool = True, headers=lambda i: {}) -> None:
        """`n` requests, reported to the controller; then the truth of every answered one."""
        self.router.refresh()
        self.answered, self.mirrored = Counter(), Counter()
        truths = {}
        for _ in range(n):
            self.count += 1
            request_id = f"req-{self.count}"
            truth = self.rng.randrange(10)
            route = self.router.choose(MODEL, headers(self.count), request_id)
            assert route.version, "the controller wrote no routing table"
            ok, latency_s, predicted = self.answer(route.version, truth, route.fault)
            self.live.request(MODEL, route.version, ok=ok, latency_s=latency_s)
            if not ok:
                continue
            self.answered[route.version] += 1
            self.live.prediction(request_id, MODEL, route.version, [predicted])
            truths[request_id] = truth
            if route.shadow is not None:
                self.mirrored[route.shadow] += 1
                s_ok, s_latency_s, s_predicted = self.answer(route.shadow, truth, None)
                self.live.shadow(MODEL, route.shadow, ok=s_ok, latency_s=s_latency_s,
                                 disagree=(s_predicted != predicted) if s_ok else None)
        self.controller.report(self.live.take())
        if feedback:
            for request_id, truth in truths.items():
                assert self.controller.feedback(request_id, truth)["status"] == "joined"


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.reset_metrics("prometheus")


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(ModelRepository(open_store(f"file://{tmp_path}/repo")),
                    Records(open_store(f"file://{tmp_path}/bucket")), triton=None)


@pytest.fixture
def controller(registry) -> Controller:
    return Controller(registry, {MODEL: PACKAGE})


@pytest.fixture
def gateway(controller) -> Gateway:
    return Gateway(controller)


@pytest.fixture
def publish(registry, digits):
    """Publish a version and make it a candidate (what a retraining run does after its gates)."""
    def publish(version: int) -> None:
        registry.publish(FAMILY, version, digits.onnx_files)
        registry.add_candidate(MODEL, FAMILY, version, by="test run")
    return publish


@pytest.fixture
def live_v1(controller, publish, gateway) -> Controller:
    """Version 1 in production (the first candidate of a model becomes production by itself), and the
    quick progressive policy (tests set another one to change it)."""
    controller.set_policy(MODEL, policy(), by="test")
    publish(1)
    table = controller.tick(MODEL)
    assert table.production == 1 and controller.registry.stages(MODEL).stage(1) == "production"
    return controller


def stage(controller: Controller, version: int) -> str | None:
    return controller.registry.stages(MODEL).stage(version)


def decisions(controller: Controller, version: int | None = None) -> list[str]:
    return [d["decision"] for d in controller.decisions[MODEL] if version is None or d["version"] == version]


def last_decision(controller: Controller, version: int) -> dict:
    return [d for d in controller.decisions[MODEL] if d["version"] == version][-1]


def to_canary(controller: Controller, gateway: Gateway, publish, version: int = 2) -> None:
    """A candidate taken through a clean shadow stage into canary step 1."""
    publish(version)
    controller.tick(MODEL)
    assert stage(controller, version) == "shadow"
    gateway.serve(100, feedback=False)
    controller.tick(MODEL)
    assert stage(controller, version) == "canary", controller.state[MODEL]


# ---- progressive: the whole way by itself -------------------------------------------------------

def test_a_good_candidate_goes_from_candidate_through_shadow_and_every_canary_step_to_production(
        live_v1, gateway, publish, registry):
    controller = live_v1
    controller.set_policy(MODEL, policy(slo={"min_feedback": 30}, canary={"steps": [0.1, 0.5]}), by="test")
    gateway.behaviour["1"] = Behaviour(accuracy=0.90)
    gateway.behaviour["2"] = Behaviour(accuracy=0.99)
    publish(2)
    assert stage(controller, 2) == "candidate"

    table = controller.tick(MODEL)  # candidate -> shadow
    assert stage(controller, 2) == "shadow"
    assert table.production == 1 and table.shadow.version == 2 and table.shadow.share == 1.0 and table.canary is None

    table = controller.tick(MODEL)  # no evidence yet: holds
    assert stage(controller, 2) == "shadow"
    assert "0 of 40 samples" in controller.state[MODEL]["holding"]["reasons"]

    gateway.serve(100)
    assert gateway.mirrored["2"] == 100 and gateway.answered == {"1": 100}  # mirrored, never answering
    table = controller.tick(MODEL)  # shadow -> canary step 1
    assert stage(controller, 2) == "canary"
    assert table.shadow is None and table.canary.version == 2 and table.canary.weight == 0.1

    gateway.serve(1000)
    assert gateway.answered["2"] / 1000 == pytest.approx(0.1, abs=0.03)
    table = controller.tick(MODEL)  # canary step 1 -> step 2
    assert stage(controller, 2) == "canary" and controller.state[MODEL]["step"] == 1
    assert table.canary.weight == 0.5

    gateway.serve(400)
    assert gateway.answered["2"] / 400 == pytest.approx(0.5, abs=0.07)
    table = controller.tick(MODEL)  # step 2 -> production
    assert stage(controller, 2) == "production" and stage(controller, 1) == "archived"
    assert table.production == 2 and table.canary is None and table.shadow is None
    assert registry.repository.served_version(FAMILY) == 2

    assert decisions(controller, 2) == ["to_shadow", "to_canary", "canary_step", "promote"]
    path = [(t["from"], t["to"]) for t in registry.stages(MODEL).history(2)]
    assert path == [(None, "candidate"), ("candidate", "shadow"), ("shadow", "canary"), ("canary", "canary"),
                    ("canary", "production")]
    promoted = registry.stages(MODEL).history(2)[-1]
    assert promoted["by"] == "rollout-controller" and promoted["numbers"]["accuracy_candidate"] > 0.9
    # the gateway follows: everything goes to version 2 now
    gateway.serve(50, feedback=False)
    assert gateway.answered == {"2": 50}


def test_a_canary_holds_until_the_feedback_the_policy_requires_arrives(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy(slo={"min_feedback": 30}), by="test")
    gateway.behaviour["2"] = Behaviour(accuracy=0.99)
    to_canary(controller, gateway, publish)
    gateway.serve(1000, feedback=False)
    controller.tick(MODEL)
    assert stage(controller, 2) == "canary" and controller.state[MODEL]["step"] == 0
    assert any("of 30 needed" in r for r in controller.state[MODEL]["holding"]["reasons"])


def test_a_stage_lasts_at_least_min_duration(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy(slo={"min_duration_s": 60}), by="test")
    publish(2)
    controller.tick(MODEL)
    gateway.serve(100, feedback=False)
    controller.tick(MODEL)
    assert stage(controller, 2) == "shadow"
    assert any(r.endswith("of 60 s") for r in controller.state[MODEL]["holding"]["reasons"])
    controller.window(MODEL, "2").started_at -= 61  # a minute later
    controller.tick(MODEL)
    assert stage(controller, 2) == "canary"


def test_a_restarted_controller_resumes_at_its_canary_step(live_v1, gateway, publish, registry):
    controller = live_v1
    to_canary(controller, gateway, publish)
    gateway.serve(1000, feedback=False)
    assert controller.tick(MODEL).canary.weight == 0.5

    restarted = Controller(registry, {MODEL: PACKAGE})
    assert restarted.state[MODEL]["step"] == 1 and registry.records.get_json(state_key(MODEL))["stage"] == "canary"
    assert restarted.tick(MODEL).canary.weight == 0.5  # no evidence in the new process yet: holds where it was
    gateway.controller = restarted
    gateway.serve(200, feedback=False)
    assert restarted.tick(MODEL).production == 2


# ---- rollbacks ----------------------------------------------------------------------------------

def assert_rolled_back(controller: Controller, gateway: Gateway, version: int, reason: str) -> None:
    assert stage(controller, version) == "archived" and stage(controller, 1) == "production"
    entry = last_decision(controller, version)
    assert entry["decision"] == "rollback" and entry["to"] == "archived"
    assert any(reason in r for r in entry["reasons"]), entry["reasons"]
    assert "production" not in [t["to"] for t in controller.registry.stages(MODEL).history(version)]
    table = read_table(controller.records, MODEL)
    assert table.production == 1 and table.canary is None and table.shadow is None
    gateway.serve(100, feedback=False)
    assert gateway.answered == {"1": 100} and not gateway.mirrored  # routed to no more


def test_a_candidate_with_worse_live_accuracy_is_rolled_back_before_production(live_v1, gateway, publish):
    controller = live_v1
    # the shadow stage cannot see accuracy (and disagreement is not checked here): it reaches canary
    controller.set_policy(MODEL, policy(slo={"min_feedback": 50, "max_disagreement": None}), by="test")
    gateway.behaviour["1"] = Behaviour(accuracy=0.97)
    gateway.behaviour["2"] = Behaviour(accuracy=0.7)
    to_canary(controller, gateway, publish)
    gateway.serve(1000)
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "live accuracy")
    numbers = last_decision(controller, 2)["numbers"]
    assert numbers["accuracy_candidate"] < 0.8 < numbers["accuracy_production"]


def test_an_injected_latency_fault_rolls_the_canary_back(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish)
    controller.set_fault(MODEL, 2, {"latency_ms": 80}, by="test")
    assert read_table(controller.records, MODEL).faults == {2: Fault(latency_ms=80)}
    gateway.serve(600, feedback=False)
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "p99 latency")


def test_a_slower_shadow_is_rolled_back(live_v1, gateway, publish):
    controller = live_v1
    gateway.behaviour["2"] = Behaviour(latency_ms=60)
    publish(2)
    controller.tick(MODEL)
    gateway.serve(100, feedback=False)
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "p99 latency")


def test_a_canary_that_fails_requests_is_rolled_back(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish)
    gateway.behaviour["2"] = Behaviour(error_rate=0.3)
    gateway.serve(600, feedback=False)
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "error rate")


def test_a_shadow_that_disagrees_with_production_is_rolled_back(live_v1, gateway, publish):
    controller = live_v1
    gateway.behaviour["2"] = Behaviour(accuracy=0.5)
    publish(2)
    controller.tick(MODEL)
    gateway.serve(100, feedback=False)
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "disagrees with production")
    assert last_decision(controller, 2)["numbers"]["disagreement"] > 0.3


def test_drift_rolls_a_canary_back(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish)
    gateway.serve(600, feedback=False)
    controller.report({"replica": "gateway-test", "at": time.time(), "versions": {}, "predictions": [],
                       "drift": {MODEL: {"2": 0.8}, "unknown-model": {"1": 9.9}}})
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "drift PSI 0.800")


# ---- the other strategies ------------------------------------------------------------------------

def test_direct_promotes_a_candidate_at_once(live_v1, publish, registry):
    controller = live_v1
    controller.set_policy(MODEL, policy("direct"), by="test")
    publish(2)
    table = controller.tick(MODEL)
    assert table.production == 2 and stage(controller, 1) == "archived"
    assert [t["to"] for t in registry.stages(MODEL).history(2)] == ["candidate", "production"]
    assert last_decision(controller, 2)["reasons"] == ["the policy is direct"]


def test_manual_waits_for_an_operator(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy("manual"), by="test")
    publish(2)
    for _ in range(3):
        table = controller.tick(MODEL)
        gateway.serve(50, feedback=False)
    assert stage(controller, 2) == "candidate" and table.production == 1
    assert table.shadow is None and table.canary is None and gateway.answered == {"1": 50}

    result = controller.promote(MODEL, None, by="alice")
    assert result["production"] == 2 and stage(controller, 2) == "production"
    assert last_decision(controller, 2)["reasons"] == ["by alice"]
    assert read_table(controller.records, MODEL).production == 2


def test_blue_green_switches_after_the_shadow_and_the_operator_goes_back_at_once(live_v1, gateway, publish,
                                                                                    registry):
    controller = live_v1
    controller.set_policy(MODEL, policy("blue_green", shadow={"share": 0.5}), by="test")
    publish(2)
    table = controller.tick(MODEL)
    assert stage(controller, 2) == "shadow" and table.shadow.share == 0.5

    gateway.serve(400, feedback=False)
    assert gateway.mirrored["2"] / 400 == pytest.approx(0.5, abs=0.1)
    table = controller.tick(MODEL)  # all traffic at once, no canary
    assert table.production == 2 and table.canary is None and table.shadow is None
    assert [t["to"] for t in registry.stages(MODEL).history(2)] == ["candidate", "shadow", "production"]
    assert registry.stages(MODEL).in_play() == [1, 2]  # the replaced production stays loaded

    result = controller.rollback(MODEL, None, by="alice")
    assert result["production"] == 1
    assert stage(controller, 1) == "production" and stage(controller, 2) == "archived"
    assert registry.repository.served_version(FAMILY) == 1
    assert read_table(controller.records, MODEL).production == 1
    gateway.serve(20, feedback=False)
    assert gateway.answered == {"1": 20}
    assert last_decision(controller, 1)["decision"] == "rollback"


def test_blue_green_without_auto_switch_waits_for_an_operator(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy("blue_green", blue_green={"auto_switch": False}), by="test")
    publish(2)
    controller.tick(MODEL)
    gateway.serve(100, feedback=False)
    controller.tick(MODEL)
    assert stage(controller, 2) == "shadow"
    assert controller.state[MODEL]["holding"]["reasons"] == ["shadow SLOs hold; waiting for an operator to switch"]
    controller.promote(MODEL, 2, by="alice")
    assert stage(controller, 2) == "production"


def test_ab_routes_cohorts_per_policy_and_waits_for_the_operator(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy("ab", ab={"header": "X-Cohort",
                                                  "cohorts": {"b": "challenger", "a": "production", "old": "1"}}),
                          by="test")
    publish(2)
    table = controller.tick(MODEL)
    assert stage(controller, 2) == "canary"  # no shadow for an experiment
    assert table.ab == ABRoute(header="x-cohort", cohorts={"b": 2, "a": 1, "old": 1})
    assert table.canary is None and table.shares() == {1: 1.0}

    cohorts = ["a", "b", "old", "none"]
    gateway.serve(400, feedback=False,
                  headers=lambda i: {} if cohorts[i % 4] == "none" else {"x-cohort": cohorts[i % 4]})
    assert gateway.answered == {"1": 300, "2": 100}
    for _ in range(3):
        gateway.serve(400, feedback=False, headers=lambda i: {"x-cohort": "b"})
        controller.tick(MODEL)
    assert stage(controller, 2) == "canary"  # every SLO holds, still the operator ends it

    controller.promote(MODEL, None, by="alice")
    assert stage(controller, 2) == "production" and read_table(controller.records, MODEL).ab is None


def test_ab_still_rolls_back_on_a_safety_slo(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy("ab"), by="test")
    publish(2)
    controller.tick(MODEL)
    gateway.behaviour["2"] = Behaviour(error_rate=0.5)
    gateway.serve(200, feedback=False, headers=lambda i: {"x-cohort": "b"})
    controller.tick(MODEL)
    assert_rolled_back(controller, gateway, 2, "error rate")


BANDIT = dict(bandit={"explore_floor": 0.05, "promote_confidence": 0.95}, slo={"min_feedback": 20})


def test_bandit_posteriors_move_with_feedback_and_the_better_version_is_promoted(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy("bandit", **BANDIT), by="test")
    gateway.behaviour["1"] = Behaviour(accuracy=0.6)
    gateway.behaviour["2"] = Behaviour(accuracy=0.95)
    publish(2)
    table = controller.tick(MODEL)
    assert stage(controller, 2) == "canary"
    assert table.bandit.posteriors == {1: (1.0, 1.0), 2: (1.0, 1.0)}

    gateway.serve(16)  # too little feedback to decide (20 per version needed)
    rewards = controller.bandit[MODEL]
    assert sum(rewards["1"]) + sum(rewards["2"]) == 16
    table = controller.tick(MODEL)
    assert stage(controller, 2) == "canary"
    assert table.bandit.posteriors == {1: (1.0 + rewards["1"][0], 1.0 + rewards["1"][1]),
                                       2: (1.0 + rewards["2"][0], 1.0 + rewards["2"][1])}
    assert all(sum(rewards[v]) > 0 for v in ("1", "2"))  # both versions answered and were judged

    for _ in range(5):
        gateway.serve(100)
        table = controller.tick(MODEL)
        if stage(controller, 2) == "production":
            break
    assert stage(controller, 2) == "production" and stage(controller, 1) == "archived"
    entry = last_decision(controller, 2)
    assert entry["decision"] == "promote" and entry["reasons"][0].startswith("the bandit's best with P=")
    assert entry["numbers"]["p_best"]["2"] >= 0.95
    assert table.bandit is None and table.production == 2


def test_bandit_rolls_the_candidate_back_when_production_is_better(live_v1, gateway, publish):
    controller = live_v1
    controller.set_policy(MODEL, policy("bandit", **BANDIT), by="test")
    gateway.behaviour["1"] = Behaviour(accuracy=0.95)
    gateway.behaviour["2"] = Behaviour(accuracy=0.3)
    publish(2)
    controller.tick(MODEL)
    for _ in range(5):
        gateway.serve(100)
        controller.tick(MODEL)
        if stage(controller, 2) != "canary":
            break
    assert_rolled_back(controller, gateway, 2, "production is the bandit's best")


# ---- supersession, the table, operators ----------------------------------------------------------

def test_a_newer_candidate_supersedes_an_older_one(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish, 2)
    publish(3)
    table = controller.tick(MODEL)
    assert stage(controller, 2) == "archived" and stage(controller, 3) == "shadow"
    entry = last_decision(controller, 2)
    assert entry["decision"] == "superseded" and entry["reasons"] == ["superseded by version 3"]
    assert table.canary is None and table.shadow.version == 3


def test_the_routing_table_revision_moves_only_on_change(live_v1, publish):
    controller = live_v1
    records = controller.records
    first = controller.tick(MODEL).revision
    written = records.store.head(routing_key(MODEL)).version
    for _ in range(3):
        assert controller.tick(MODEL).revision == first
    assert records.store.head(routing_key(MODEL)).version == written  # not even rewritten

    controller.set_fault(MODEL, 1, {"error_rate": 0.5}, by="test")
    assert read_table(records, MODEL).revision == first + 1
    assert controller.tick(MODEL).revision == first + 1
    controller.set_fault(MODEL, 1, {"latency_ms": 0, "error_rate": 0}, by="test")  # cleared
    table = read_table(records, MODEL)
    assert table.revision == first + 2 and table.faults == {}

    publish(2)
    assert controller.tick(MODEL).revision == first + 3  # 2 went into shadow


def test_set_policy_is_stored_and_a_bad_one_is_refused(live_v1):
    controller = live_v1
    result = controller.set_policy(MODEL, policy("manual"), by="alice")
    assert result["strategy"] == "manual"
    assert Policy.parse(controller.records.get_text(policy_key(MODEL))).strategy == "manual"
    assert read_table(controller.records, MODEL).strategy == "manual"
    with pytest.raises(ValueError, match="strategy"):
        controller.set_policy(MODEL, "strategy: sometimes\n", by="alice")
    assert controller.policy(MODEL).strategy == "manual"


def test_an_invalid_stored_policy_falls_back_to_the_packages_own(live_v1):
    """A policy written into the bucket around the API (which validates) is refused; the package's
    ``policy.yaml`` is what holds then, not the built-in default."""
    controller = live_v1
    controller.records.put_text(policy_key(MODEL), "strategy: [\n")
    shipped = Policy.parse(package_policy_file(controller.models[MODEL]).read_text())
    assert shipped != Policy()  # the check below checks something
    assert controller.policy(MODEL) == shipped
    controller.tick(MODEL)  # the loop carries on


def test_operator_rollback_of_a_challenger_archives_it(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish)
    result = controller.rollback(MODEL, None, by="alice")
    assert result["retired"] == [2] and result["production"] == 1
    assert stage(controller, 2) == "archived"
    assert read_table(controller.records, MODEL).canary is None


def test_status_reports_stages_routing_windows_and_decisions(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish)
    status = controller.status(MODEL, timeline=5)
    assert status["production"] == 1 and status["challengers"] == [2]
    assert status["stages"] == {"1": "production", "2": "canary"}
    assert status["routing"]["canary"]["version"] == 2 and status["state"]["stage"] == "canary"
    assert {"1", "2"} <= set(status["windows"])
    assert [d["decision"] for d in status["decisions"]][-2:] == ["to_shadow", "to_canary"]
    assert 0 < len(status["timeline"]) <= 5 and status["timeline"][-1]["production"] == 1


# ---- feedback -----------------------------------------------------------------------------------

def prediction(request_id: str, version: str, predicted: list, model: str = MODEL) -> dict:
    return {"replica": "r", "at": time.time(), "versions": {}, "predictions": [(request_id, model, version,
                                                                                  predicted, time.time())]}


def feedback_count(model: str, status: str) -> float | None:
    return metrics.get_metrics().registry.get_sample_value("rts_feedback_total", {"model": model, "status": status})


def test_classification_feedback_joins_labels_to_the_logged_prediction(controller):
    controller.report(prediction("req-1", "2", [3, 5, 7]))
    result = controller.feedback("req-1", [3, 4, 7])
    assert result == {"status": "joined", "request_id": "req-1", "model": MODEL, "version": "2", "rows": 3,
                      "correct": 2, "abs_error": None}
    window = controller.window(MODEL, "2")
    assert (window.feedback, window.correct) == (3, 2)
    assert controller.bandit[MODEL]["2"] == [2, 1]
    # one row, the truth given as a scalar (and as a string: labels compare as text)
    controller.report(prediction("req-2", "2", [9]))
    assert controller.feedback("req-2", "9", model=MODEL)["correct"] == 1
    assert (window.feedback, window.correct) == (4, 3)
    assert feedback_count(MODEL, "joined") == 2


def test_regression_feedback_joins_values(registry):
    controller = Controller(registry, {"diabetes": DIABETES})
    controller.report(prediction("req-1", "4", [100.0, 200.0], model="diabetes"))
    result = controller.feedback("req-1", [110.0, 200.0])
    assert result["rows"] == 2 and result["correct"] is None and result["abs_error"] == pytest.approx(5.0)
    window = controller.window("diabetes", "4")
    assert window.feedback == 2 and window.abs_error_sum == pytest.approx(10.0) and window.correct == 0
    # bandit reward: within reward_tolerance (10 %) of the truth
    assert controller.bandit["diabetes"]["4"] == [2, 0]
    controller.report(prediction("req-2", "4", [150.0], model="diabetes"))
    controller.feedback("req-2", 100.0)
    assert controller.bandit["diabetes"]["4"] == [2, 1]


def test_feedback_with_the_replicas_own_record_needs_no_log(controller):
    live = LiveStats(replica="r")
    live.prediction("req-9", MODEL, "3", [1])
    result = controller.feedback("req-9", 1, record=live.recent("req-9"))
    assert result["status"] == "joined" and result["version"] == "3" and result["correct"] == 1


def test_feedback_before_its_prediction_waits_and_joins_when_the_prediction_arrives(controller):
    result = controller.feedback("req-early", [4], model=MODEL)
    assert result["status"] == "pending" and "req-early" in controller.pending
    assert controller.window(MODEL, "2").feedback == 0
    controller.report(prediction("req-early", "2", [4]))
    assert "req-early" not in controller.pending
    window = controller.window(MODEL, "2")
    assert (window.feedback, window.correct) == (1, 1)
    assert feedback_count(MODEL, "pending") == 1 and feedback_count(MODEL, "joined") == 1


def test_expire_pending_drops_feedback_whose_prediction_never_came(controller):
    controller.feedback("req-old", 1, model=MODEL)
    truth, model, _ = controller.pending["req-old"]
    controller.pending["req-old"] = (truth, model, time.time() - controller_module.PENDING_FEEDBACK_S - 1)
    controller.feedback("req-new", 2, model=MODEL)
    controller.expire_pending()
    assert list(controller.pending) == ["req-new"]
    assert feedback_count(MODEL, "expired") == 1
    controller.report(prediction("req-old", "2", [1]))  # too late: nothing joins
    assert controller.window(MODEL, "2").feedback == 0


def test_a_batch_length_mismatch_raises_and_counts_nothing(controller):
    controller.report(prediction("req-1", "2", [3, 5]))
    with pytest.raises(ValueError, match="predicted 2 rows; the feedback has 3"):
        controller.feedback("req-1", [3, 5, 7])
    with pytest.raises(ValueError, match="predicted 2 rows; the feedback has 1"):
        controller.feedback("req-1", 3)
    assert controller.window(MODEL, "2").feedback == 0 and "2" not in controller.bandit[MODEL]


def test_reports_of_unknown_models_are_ignored(controller):
    controller.report({"replica": "r", "at": time.time(),
                       "versions": {"other": {"1": {"requests": 5}}, MODEL: {"1": {"requests": 3}}},
                       "predictions": [("req-x", "other", "1", [1], time.time())]})
    assert controller.window(MODEL, "1").requests == 3
    assert not any(m == "other" for m, _ in controller.windows)


# ---- the prediction log ---------------------------------------------------------------------------

def segments(controller: Controller, kind: str) -> list[str]:
    return sorted(o.key for o in controller.records.store.list(f"models/{MODEL}/{kind}/"))


def test_flush_logs_writes_predictions_and_joined_feedback(controller):
    controller.report(prediction("req-1", "2", [3]))
    controller.report(prediction("req-2", "2", [4]))
    controller.feedback("req-1", 3)
    controller.flush_logs()
    [predictions] = segments(controller, "predictions")
    rows = [json.loads(line) for line in controller.records.store.get_bytes(predictions).decode().splitlines()]
    assert [(r["request_id"], r["version"], r["predicted"]) for r in rows] == [("req-1", "2", [3]), ("req-2", "2", [4])]
    [joined] = segments(controller, "feedback")
    row = json.loads(controller.records.store.get_bytes(joined))
    assert (row["request_id"], row["predicted"], row["truth"]) == ("req-1", [3], [3])
    controller.flush_logs()  # nothing new: no new segment
    assert len(segments(controller, "predictions")) == 1 and len(segments(controller, "feedback")) == 1


def test_flush_logs_keeps_a_bounded_number_of_segments(controller, monkeypatch):
    monkeypatch.setattr(controller_module, "SEGMENTS_KEPT", 3)
    for n in range(1, 7):  # a different row count each time: distinct segment names within one second
        for i in range(n):
            controller.report(prediction(f"req-{n}-{i}", "2", [i]))
        controller.flush_logs()
    kept = segments(controller, "predictions")
    assert len(kept) == 3
    rows = [json.loads(line)["request_id"] for key in kept
            for line in controller.records.store.get_bytes(key).decode().splitlines()]
    assert {r.split("-")[1] for r in rows} == {"4", "5", "6"}  # the newest segments


# ---- bugs found in controller.py, fixed ------------------------------------------------------------

def test_a_bad_pending_feedback_does_not_drop_the_rest_of_a_report(controller):
    controller.feedback("req-bad", [1, 2, 3], model=MODEL)  # pending; the prediction will have one row
    snapshot = prediction("req-bad", "2", [1])
    snapshot["predictions"].append(("req-good", MODEL, "2", [5], time.time()))
    try:
        controller.report(snapshot)
    except ValueError:
        pass
    assert "req-good" in controller.predictions[MODEL]


def test_with_no_production_the_newest_candidate_wins_and_the_older_is_superseded(controller, publish):
    publish(1)
    publish(2)
    controller.tick(MODEL)
    assert stage(controller, 2) == "production"
    controller.tick(MODEL)
    assert stage(controller, 1) == "archived"


def test_an_older_challenger_is_superseded_when_a_newer_version_becomes_production(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish, 2)
    publish(3)
    controller.promote(MODEL, None, by="alice")  # the newest challenger, before the loop looked at it
    assert stage(controller, 3) == "production"
    controller.tick(MODEL)
    assert stage(controller, 2) == "archived", "version 2 is still being rolled out over production 3"


def test_a_rolled_back_version_shows_archived_in_the_stage_metric(live_v1, gateway, publish):
    controller = live_v1
    to_canary(controller, gateway, publish)
    gateway.behaviour["2"] = Behaviour(error_rate=0.5)
    gateway.serve(200, feedback=False)
    controller.tick(MODEL)
    assert stage(controller, 2) == "archived"
    sample = metrics.get_metrics().registry.get_sample_value
    assert sample("rts_version_stage", {"model": MODEL, "version": "2", "stage": "canary"}) == 0.0
    assert sample("rts_version_stage", {"model": MODEL, "version": "2", "stage": "archived"}) == 1.0


def test_feedback_sent_twice_counts_once(controller):
    controller.report(prediction("req-1", "2", [3]))
    controller.feedback("req-1", 3)
    controller.feedback("req-1", 3)
    assert controller.window(MODEL, "2").feedback == 1 and controller.bandit[MODEL]["2"] == [1, 0]


def test_a_version_in_shadow_moves_on_after_the_policy_changes_to_direct(live_v1, gateway, publish):
    controller = live_v1
    publish(2)
    controller.tick(MODEL)
    assert stage(controller, 2) == "shadow"
    controller.set_policy(MODEL, policy("direct"), by="test")
    for _ in range(3):
        gateway.serve(100, feedback=False)
        controller.tick(MODEL)
    assert stage(controller, 2) == "production"


def test_feedback_counts_only_for_predictions_made_in_the_current_window(controller):
    """When a stage begins, both versions' evidence starts again: the truth about an answer given before
    (production's head start, feedback arriving late) does not count toward the new comparison."""
    controller.report(prediction("before", "1", [3]))
    time.sleep(0.01)
    controller._restart_windows(MODEL, 1, 2)
    controller.report(prediction("after", "1", [3]))
    assert controller.feedback("before", 3)["status"] == "joined"  # joined, logged ...
    assert controller.window(MODEL, "1").feedback == 0 and controller.bandit[MODEL]["1"] == [0, 0]  # ... not counted
    controller.feedback("after", 4)
    assert controller.window(MODEL, "1").feedback == 1 and controller.bandit[MODEL]["1"] == [0, 1]
