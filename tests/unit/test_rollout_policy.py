"""The delivery policy (``services.rollout.policy``): YAML in, validated, clear errors out.

Covered:

- the defaults, the module docstring's example, and ``to_yaml`` -> ``parse`` round trips;
- errors name what is wrong: an unknown key (top level and nested, with its dotted path), a strategy
  that is not one, canary steps that are not rising shares in (0, 1), an empty step list, SLO bounds,
  an A/B cohort sent to something that is neither ``challenger``, ``production`` nor a version;
- a document that is not a mapping (a list, a scalar, ``[]``, ``false``) or not YAML at all;
  an empty document is the default policy;
- the packages' shipped ``policy.yaml`` files are valid and in force when nothing was set at run time;
- ``load_policy``: the policy set at run time (``save_policy``) wins over the package's ``policy.yaml``
  beside its code, which wins over the default; an invalid stored policy raises ValueError.
"""

from __future__ import annotations

import pytest

from services.modelkit.discovery import load_package
from services.registry.records import Records
from services.rollout import policy as policy_module
from services.rollout.policy import Policy, load_policy, package_policy_file, policy_key, save_policy
from services.storage import open_store

PACKAGE = load_package("services.models.digits")

EXAMPLE = """
strategy: progressive
shadow: {share: 1.0}
canary: {steps: [0.1, 0.5], sticky_header: x-user-id}
slo: {min_requests: 200, max_error_rate: 0.01, p99_ratio: 1.5, max_disagreement: 0.15,
      min_feedback: 100, accuracy_margin: 0.02, confidence: 0.95, max_drift_psi: 0.3}
"""


@pytest.fixture
def records(tmp_path) -> Records:
    return Records(open_store(f"file://{tmp_path}/bucket"))


def problem(text: str) -> str:
    with pytest.raises(ValueError) as info:
        Policy.parse(text)
    return str(info.value)


# ---- parsing ------------------------------------------------------------------------------------

def test_defaults_are_a_progressive_rollout_with_every_slo():
    policy = Policy()
    assert policy.strategy == "progressive"
    assert policy.shadow.share == 1.0 and policy.canary.steps == [0.1, 0.5]
    assert policy.canary.sticky_header == "x-user-id"
    assert policy.slo.min_requests == 200 and policy.slo.min_feedback == 100
    assert policy.ab.cohorts == {"b": "challenger"} and policy.bandit.promote_confidence == 0.95
    assert policy.blue_green.auto_switch is True


@pytest.mark.parametrize("text", ["", "  \n", "# only a comment\n", "{}"])
def test_an_empty_document_is_the_default_policy(text):
    assert Policy.parse(text) == Policy()


def test_the_documented_example_parses():
    policy = Policy.parse(EXAMPLE)
    assert policy.strategy == "progressive"
    assert policy.canary.steps == [0.1, 0.5]
    assert policy.slo.min_feedback == 100 and policy.slo.max_drift_psi == 0.3
    assert policy.slo.min_duration_s == 10.0  # not given: the default


@pytest.mark.parametrize("strategy", ["direct", "progressive", "blue_green", "ab", "bandit", "manual"])
def test_every_strategy_parses_and_round_trips_through_yaml(strategy):
    policy = Policy.parse(f"strategy: {strategy}\nslo: {{min_requests: 7, max_disagreement: null}}\n"
                          "ab: {header: X-Group, cohorts: {b: challenger, a: production, old: '3'}}\n"
                          "bandit: {promote_confidence: null}\n")
    assert policy.strategy == strategy and policy.slo.min_requests == 7 and policy.slo.max_disagreement is None
    assert policy.ab.cohorts == {"b": "challenger", "a": "production", "old": "3"}
    again = Policy.parse(policy.to_yaml())
    assert again == policy
    assert again.bandit.promote_confidence is None


# ---- what is wrong, said clearly ----------------------------------------------------------------

def test_an_unknown_top_level_key_is_named():
    message = problem("stratgy: direct\n")
    assert message.startswith("invalid policy:") and "stratgy: Extra inputs are not permitted" in message


def test_an_unknown_nested_key_is_named_with_its_path():
    assert "slo.min_request: Extra inputs are not permitted" in problem("slo: {min_request: 5}\n")
    assert "canary.sticky: Extra inputs" in problem("canary: {sticky: x-user}\n")


def test_a_strategy_that_is_not_one():
    message = problem("strategy: canary\n")
    assert "strategy:" in message and "'progressive'" in message and "'bandit'" in message


@pytest.mark.parametrize("steps", ["[0.5, 0.1]", "[0.1, 1.0]", "[0, 0.5]", "[0.2, -0.1]", "[1.5]"])
def test_canary_steps_are_rising_shares_between_0_and_1(steps):
    message = problem(f"canary: {{steps: {steps}}}\n")
    assert "canary" in message and "rising shares between 0 and 1" in message


def test_canary_needs_at_least_one_step():
    assert "canary.steps" in problem("canary: {steps: []}\n")


def test_slo_bounds_are_checked_all_at_once():
    message = problem("slo: {confidence: 0.4, max_error_rate: 2, min_requests: 0}\n")
    for path in ("slo.confidence", "slo.max_error_rate", "slo.min_requests"):
        assert path in message


def test_an_ab_cohort_must_go_to_a_challenger_production_or_a_version():
    message = problem("strategy: ab\nab: {cohorts: {b: challengr}}\n")
    assert "ab" in message and "challengr" in message and "'challenger', 'production' or a version" in message


@pytest.mark.parametrize("text", ["- strategy: direct\n", "direct\n", "42\n", "[]\n", "false\n"])
def test_a_document_that_is_not_a_mapping(text):
    assert "a policy is a YAML mapping" in problem(text)


def test_text_that_is_not_yaml():
    assert problem("strategy: [direct\n").startswith("the policy is not YAML")


# ---- the policy in force -------------------------------------------------------------------------

def test_the_package_policy_file_is_beside_its_code():
    path = package_policy_file(PACKAGE)
    assert path.name == "policy.yaml" and path.parent.name == "digits"
    assert (path.parent / "model.py").exists()


def test_load_policy_run_time_wins_over_the_package_file_which_wins_over_the_default(records, tmp_path,
                                                                                     monkeypatch):
    missing = tmp_path / "nowhere" / "policy.yaml"
    monkeypatch.setattr(policy_module, "package_policy_file", lambda package: missing)
    assert load_policy(PACKAGE, records) == Policy()

    beside = tmp_path / "policy.yaml"
    beside.write_text("strategy: blue_green\n")
    monkeypatch.setattr(policy_module, "package_policy_file", lambda package: beside)
    assert load_policy(PACKAGE, records).strategy == "blue_green"

    save_policy(PACKAGE.name, Policy.parse("strategy: manual\n"), records)
    assert records.get_text(policy_key(PACKAGE.name)) is not None
    assert load_policy(PACKAGE, records).strategy == "manual"


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_the_shipped_package_policies_are_valid_and_in_force_by_default(name, records):
    package = load_package(f"services.models.{name}")
    shipped = Policy.parse(package_policy_file(package).read_text())
    assert load_policy(package, records) == shipped


def test_load_policy_raises_on_an_invalid_stored_policy(records):
    records.put_text(policy_key(PACKAGE.name), "strategy: sometimes\n")
    with pytest.raises(ValueError, match="strategy"):
        load_policy(PACKAGE, records)
