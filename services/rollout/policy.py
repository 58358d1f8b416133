"""A model's delivery policy: how a candidate earns its traffic, and the SLOs it must hold.

Declarative YAML, validated (unknown keys refused). The default is the model package's
``policy.yaml`` (beside its code); an operator changes it at run time, with no restart::

    rts models policy churn --file policy.yaml           # or PUT /admin/models/churn/policy
    rts models policy churn                              # prints the policy in force

which stores it as ``models/<model>/policy.yaml`` in the data bucket. Strategies:

- ``direct``: a candidate that passed its gates becomes production at once (offline gates only);
- ``progressive``: shadow (a mirror of live traffic, never answered) -> canary steps (a weighted,
  sticky share) -> production, each step only when every SLO holds over enough samples; rolled back
  the moment one breaks;
- ``blue_green``: shadow, then all traffic at once when the shadow SLOs hold (``auto_switch``) or an
  operator says so; the replaced production stays loaded, so going back is instant;
- ``ab``: requests whose ``ab.header`` names a cohort go to that cohort's version, the rest to
  production; an operator ends the experiment (promote or rollback); safety SLOs still roll back;
- ``bandit``: every live version answers a share chosen by Thompson sampling on the reward from
  feedback (correct answers, or errors within ``reward_tolerance``); the winner is promoted once it
  is the best with ``promote_confidence``;
- ``manual``: candidates wait for an operator.

Example (a package's ``policy.yaml``)::

    strategy: progressive
    shadow: {share: 1.0}
    canary: {steps: [0.1, 0.5], sticky_header: x-user-id}
    slo: {min_requests: 200, max_error_rate: 0.01, p99_ratio: 1.5, max_disagreement: 0.15,
          min_feedback: 100, accuracy_margin: 0.02, confidence: 0.95, max_drift_psi: 0.3}
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.errors import validation_problems
from services.modelkit import ModelPackage
from services.registry.records import Records

Strategy = Literal["direct", "progressive", "blue_green", "ab", "bandit", "manual"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShadowPolicy(_Strict):
    share: float = Field(1.0, ge=0, le=1, description="share of production requests mirrored to the candidate; "
                         "0 skips the shadow stage")
    max_in_flight: int = Field(64, ge=1, description="mirrored calls in flight at most per replica; beyond, "
                               "requests are not mirrored (the candidate never slows the user's answer)")


class CanaryPolicy(_Strict):
    steps: list[float] = Field([0.1, 0.5], min_length=1, description="traffic shares of the canary steps, rising")
    sticky_header: str = Field("x-user-id", description="a request header whose value keeps a user on one version "
                               "(else the request id)")

    @model_validator(mode="after")
    def _rising(self) -> "CanaryPolicy":
        if any(not 0 < s < 1 for s in self.steps) or self.steps != sorted(self.steps):
            raise ValueError(f"canary steps are rising shares between 0 and 1, got {self.steps}")
        return self


class SLO(_Strict):
    min_requests: int = Field(200, ge=1, description="requests (or mirrored requests) a stage needs before it "
                              "can pass")
    min_duration_s: float = Field(10.0, ge=0, description="seconds a stage lasts at least")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="server errors per request")
    p99_ratio: float = Field(1.5, gt=0, description="candidate p99 latency at most this times production's ...")
    p99_slack_ms: float = Field(10.0, ge=0, description="... plus this many milliseconds")
    max_disagreement: float | None = Field(0.15, ge=0, le=1, description="share of mirrored requests where the "
                                           "candidate's answer differs from production's (None: not checked)")
    disagreement_tolerance: float = Field(0.1, ge=0, description="regression: a relative difference above this "
                                          "counts as a disagreement")
    min_feedback: int = Field(100, ge=0, description="joined feedback rows per version before accuracy is "
                              "judged; 0: no feedback is required to promote")
    accuracy_margin: float = Field(0.02, ge=0, description="the candidate may be at most this much worse than "
                                   "production (accuracy, or relative mean error)")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence of the accuracy test")
    max_drift_psi: float | None = Field(0.3, ge=0, description="largest PSI of the candidate's drift window "
                                        "(None: not checked) ...")
    drift_margin: float = Field(0.25, ge=0, description="... or, when production drifts as much on the same "
                                "traffic, at most production's PSI plus this (PSI over a few hundred rows moves by "
                                "a few hundredths between windows, and a candidate trained on more varied data has "
                                "another reference: only a clearly larger drift breaks)")


class ABPolicy(_Strict):
    header: str = Field("x-cohort", description="the request header naming the cohort")
    cohorts: dict[str, str] = Field(default_factory=lambda: {"b": "challenger"},
                                    description="cohort value -> 'challenger', 'production' or a version number")

    @field_validator("cohorts", mode="before")
    @classmethod
    def _numbers_are_versions(cls, value: object) -> object:
        """``b: 3`` in YAML is the number 3: a version, as ``b: "3"`` is."""
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _targets(self) -> "ABPolicy":
        wrong = {c: t for c, t in self.cohorts.items() if t not in ("challenger", "production") and not t.isdigit()}
        if wrong:
            raise ValueError(f"a cohort goes to 'challenger', 'production' or a version number, got {wrong}")
        return self


class BanditPolicy(_Strict):
    reward_tolerance: float = Field(0.1, ge=0, description="regression: an answer within this relative error "
                                    "earns a reward")
    explore_floor: float = Field(0.05, ge=0, lt=0.5, description="every live version keeps at least this share")
    promote_confidence: float | None = Field(0.95, gt=0.5, lt=1, description="promote a version once it is the best "
                                             "with this probability (None: never by itself)")


class BlueGreenPolicy(_Strict):
    auto_switch: bool = Field(True, description="switch once the shadow SLOs hold; False: wait for an operator")


class Policy(_Strict):
    strategy: Strategy = "progressive"
    shadow: ShadowPolicy = Field(default_factory=ShadowPolicy)
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy)
    slo: SLO = Field(default_factory=SLO)
    ab: ABPolicy = Field(default_factory=ABPolicy)
    bandit: BanditPolicy = Field(default_factory=BanditPolicy)
    blue_green: BlueGreenPolicy = Field(default_factory=BlueGreenPolicy)

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """A policy from YAML; ValueError saying what is wrong."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"the policy is not YAML: {exc}") from None
        if data is None:  # an empty document: the default policy
            data = {}
        if not isinstance(data, dict):
            raise ValueError("a policy is a YAML mapping (strategy: ..., slo: ...)")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc, "policy"))
            raise ValueError(f"invalid policy: {problems}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def policy_key(model: str) -> str:
    return f"models/{model}/policy.yaml"


def package_policy_file(package: ModelPackage) -> Path:
    """``policy.yaml`` beside the package's code."""
    return Path(sys.modules[type(package).__module__].__file__).parent / "policy.yaml"


def load_policy(package: ModelPackage, records: Records) -> Policy:
    """The policy in force: the one set at run time, else the package's ``policy.yaml``, else the default."""
    text = records.get_text(policy_key(package.name))
    if text is None:
        path = package_policy_file(package)
        text = path.read_text() if path.exists() else ""
    return Policy.parse(text)


def save_policy(model: str, policy: Policy, records: Records) -> None:
    records.put_text(policy_key(model), policy.to_yaml())
