"""Live evidence about a version, and the verdict on it: hold, advance, or roll back. Pure functions.

A ``Window`` collects what the gateways reported about one version since its current stage (or
canary step) began: requests answered and failed, latencies, mirrored requests and how often the
version disagreed with production, joined feedback (right answers, or absolute errors), and the
largest PSI of its drift window. ``evaluate`` compares a challenger's window with production's over
the same period against the policy's SLOs:

- error rate at most ``max_error_rate``;
- p99 latency at most ``p99_ratio`` x production's + ``p99_slack_ms``;
- disagreement with production at most ``max_disagreement`` (shadow);
- live accuracy (or mean absolute error) from feedback not worse than production's by more than
  ``accuracy_margin``, by a one-sided test at ``confidence``: the version advances only once the
  test shows it is not worse (non-inferiority), and is rolled back as soon as it shows it is worse;
- drift: the largest PSI at most ``max_drift_psi``, or, when production drifts as much on the same
  traffic, at most production's + ``drift_margin``.

A check with too little evidence neither passes nor breaks; a stage advances only when every check
passes over ``min_requests`` samples and ``min_duration_s``, and is rolled back the moment one breaks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np

from services.rollout.policy import SLO

RESERVOIR = 4000


def _reservoir_add(values: list[float], new: list[float], seen: int, rng: np.random.Generator) -> None:
    """Keep a uniform sample of at most RESERVOIR values (p99 over a long window stays cheap)."""
    for i, value in enumerate(new):
        n = seen + i
        if len(values) < RESERVOIR:
            values.append(value)
        else:
            j = int(rng.integers(0, n + 1))
            if j < RESERVOIR:
                values[j] = value


@dataclass
class Window:
    started_at: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    shadow_requests: int = 0
    shadow_errors: int = 0
    shadow_disagreements: int = 0
    shadow_latencies_ms: list[float] = field(default_factory=list)
    feedback: int = 0
    correct: int = 0  # classification
    abs_error_sum: float = 0.0  # regression
    abs_error_sq_sum: float = 0.0
    drift_psi: float | None = None
    # latencies offered to each reservoir so far (not requests: errors and the replicas' caps send fewer)
    latencies_seen: int = 0
    shadow_latencies_seen: int = 0
    _rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0), repr=False)

    def add(self, stats: dict) -> None:
        """Fold one replica's report for this version into the window."""
        latencies, shadow_latencies = stats.get("latencies_ms", []), stats.get("shadow_latencies_ms", [])
        _reservoir_add(self.latencies_ms, latencies, self.latencies_seen, self._rng)
        _reservoir_add(self.shadow_latencies_ms, shadow_latencies, self.shadow_latencies_seen, self._rng)
        self.latencies_seen += len(latencies)
        self.shadow_latencies_seen += len(shadow_latencies)
        self.requests += stats.get("requests", 0)
        self.errors += stats.get("errors", 0)
        self.shadow_requests += stats.get("shadow_requests", 0)
        self.shadow_errors += stats.get("shadow_errors", 0)
        self.shadow_disagreements += stats.get("shadow_disagreements", 0)
        if stats.get("drift_psi") is not None:
            self.drift_psi = stats["drift_psi"]

    def add_feedback(self, correct: bool | None, abs_error: float | None) -> None:
        self.feedback += 1
        if correct is not None:
            self.correct += int(correct)
        if abs_error is not None:
            self.abs_error_sum += abs_error
            self.abs_error_sq_sum += abs_error ** 2

    @property
    def age_s(self) -> float:
        return time.time() - self.started_at

    @staticmethod
    def p99(values: list[float]) -> float | None:
        return float(np.percentile(values, 99)) if values else None

    def summary(self) -> dict:
        out = {"requests": self.requests, "errors": self.errors, "p99_ms": _round(self.p99(self.latencies_ms)),
               "shadow_requests": self.shadow_requests, "shadow_errors": self.shadow_errors,
               "shadow_disagreements": self.shadow_disagreements,
               "shadow_p99_ms": _round(self.p99(self.shadow_latencies_ms)), "feedback": self.feedback,
               "drift_psi": _round(self.drift_psi), "age_s": round(self.age_s, 1)}
        if self.feedback:
            out["accuracy"] = _round(self.correct / self.feedback)
            out["mean_abs_error"] = _round(self.abs_error_sum / self.feedback)
        return out


def _round(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(float(value), places)


Action = Literal["hold", "advance", "rollback"]


@dataclass
class Verdict:
    action: Action
    reasons: list[str]
    numbers: dict


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def accuracy_test(candidate: Window, production: Window, slo: SLO, kind: str) -> tuple[str, str, dict]:
    """('pass' | 'break' | 'wait', why, numbers): is the candidate no worse than production, by a margin?

    With ``min_feedback == 0`` feedback is not required: what there is can break the test, but too
    little or inconclusive evidence passes instead of waiting (else one feedback row would hold a
    stage that no feedback at all lets pass)."""
    state, why, numbers = _accuracy_test(candidate, production, slo, kind)
    if state == "wait" and slo.min_feedback == 0:
        return "pass", f"feedback not required by the policy ({why})", numbers
    return state, why, numbers


def _accuracy_test(candidate: Window, production: Window, slo: SLO, kind: str) -> tuple[str, str, dict]:
    if candidate.feedback < max(slo.min_feedback, 2) or production.feedback < max(slo.min_feedback, 2):
        return "wait", f"feedback {candidate.feedback} (candidate) / {production.feedback} (production) of " \
                       f"{slo.min_feedback} needed", {}
    z = _z(slo.confidence)
    if kind == "classification":
        # Smoothed proportions: a perfect score on a few rows must not give a zero variance.
        p1 = (candidate.correct + 1) / (candidate.feedback + 2)
        p0 = (production.correct + 1) / (production.feedback + 2)
        se = math.sqrt(p1 * (1 - p1) / candidate.feedback + p0 * (1 - p0) / production.feedback)
        diff = p1 - p0
        numbers = {"accuracy_candidate": round(candidate.correct / candidate.feedback, 4),
                   "accuracy_production": round(production.correct / production.feedback, 4),
                   "difference_low": round(diff - z * se, 4), "difference_high": round(diff + z * se, 4),
                   "margin": -slo.accuracy_margin}
        if diff + z * se < -slo.accuracy_margin:
            return "break", (f"live accuracy {numbers['accuracy_candidate']:.3f} vs production "
                             f"{numbers['accuracy_production']:.3f}: worse by more than {slo.accuracy_margin} "
                             f"at {slo.confidence:.0%}"), numbers
        if diff - z * se > -slo.accuracy_margin:
            return "pass", "live accuracy no worse than production (non-inferior)", numbers
        return "wait", "live accuracy not yet shown to be no worse", numbers
    m1 = candidate.abs_error_sum / candidate.feedback
    m0 = production.abs_error_sum / production.feedback
    v1 = max(candidate.abs_error_sq_sum / candidate.feedback - m1 ** 2, 1e-12)
    v0 = max(production.abs_error_sq_sum / production.feedback - m0 ** 2, 1e-12)
    allowed = m0 * (1 + slo.accuracy_margin)
    se = math.sqrt(v1 / candidate.feedback + (1 + slo.accuracy_margin) ** 2 * v0 / production.feedback)
    t = (m1 - allowed) / se
    numbers = {"mae_candidate": round(m1, 4), "mae_production": round(m0, 4), "t": round(t, 3)}
    if t > z:
        return "break", f"live mean error {m1:.3f} vs production {m0:.3f}: worse by more than " \
                        f"{slo.accuracy_margin:.0%} at {slo.confidence:.0%}", numbers
    if t < -z:
        return "pass", "live mean error no worse than production (non-inferior)", numbers
    return "wait", "live mean error not yet shown to be no worse", numbers


def evaluate(stage: str, candidate: Window, production: Window, slo: SLO, kind: str,
             judge_accuracy: bool = True) -> Verdict:
    """The verdict on a challenger in `stage` ('shadow' or 'canary') against production over the same period."""
    mirrored = stage == "shadow"
    samples = candidate.shadow_requests if mirrored else candidate.requests
    errors = candidate.shadow_errors if mirrored else candidate.errors
    latencies = candidate.shadow_latencies_ms if mirrored else candidate.latencies_ms
    enough = samples >= slo.min_requests
    # Below this, one slow or failed request says little (never more than the stage needs to pass).
    judge_from = min(slo.min_requests, max(20, slo.min_requests // 4))
    broke, waiting, numbers = [], [], {"samples": samples}

    rate = errors / samples if samples else 0.0
    numbers["error_rate"] = round(rate, 4)
    if errors and rate > slo.max_error_rate and (samples >= judge_from or errors >= 5):
        broke.append(f"error rate {rate:.3f} > {slo.max_error_rate}")

    p99, base = Window.p99(latencies), Window.p99(production.latencies_ms)
    numbers.update(p99_ms=_round(p99), production_p99_ms=_round(base))
    if p99 is not None and base is not None and samples >= judge_from:
        limit = base * slo.p99_ratio + slo.p99_slack_ms
        numbers["p99_limit_ms"] = round(limit, 3)
        if p99 > limit:
            broke.append(f"p99 latency {p99:.1f} ms > {limit:.1f} ms (production {base:.1f} ms)")
    elif enough:
        waiting.append("no production latency to compare with yet")

    if mirrored and slo.max_disagreement is not None and samples:
        share = candidate.shadow_disagreements / samples
        numbers["disagreement"] = round(share, 4)
        if share > slo.max_disagreement and samples >= judge_from:
            broke.append(f"disagrees with production on {share:.1%} of requests > {slo.max_disagreement:.1%}")

    if slo.max_drift_psi is not None and candidate.drift_psi is not None:
        # Traffic unlike every version's training data is drift for production too, not the candidate's fault:
        # the candidate breaks only by drifting more than max_drift_psi and more than production does.
        limit = slo.max_drift_psi
        if production.drift_psi is not None:
            limit = max(limit, production.drift_psi + slo.drift_margin)
            numbers["production_drift_psi"] = round(production.drift_psi, 4)
        numbers.update(drift_psi=round(candidate.drift_psi, 4), drift_limit=round(limit, 4))
        if candidate.drift_psi > limit:
            broke.append(f"drift PSI {candidate.drift_psi:.3f} > {limit:.3f}")

    if not mirrored and judge_accuracy:
        state, why, accuracy = accuracy_test(candidate, production, slo, kind)
        numbers.update(accuracy)
        if state == "break":
            broke.append(why)
        elif state == "wait":
            waiting.append(why)

    if broke:
        return Verdict("rollback", broke, numbers)
    if not enough:
        waiting.append(f"{samples} of {slo.min_requests} samples")
    if candidate.age_s < slo.min_duration_s:
        waiting.append(f"{candidate.age_s:.0f} of {slo.min_duration_s:.0f} s")
    if waiting:
        return Verdict("hold", waiting, numbers)
    return Verdict("advance", ["every SLO holds"], numbers)


def best_probability(posteriors: dict[int, tuple[float, float]], draws: int = 4000, seed: int = 0) -> dict[int, float]:
    """P(each version has the highest reward) under its Beta posterior, by Monte Carlo."""
    rng = np.random.default_rng(seed)
    versions = list(posteriors)
    samples = np.stack([rng.beta(*posteriors[v], size=draws) for v in versions])
    wins = np.bincount(samples.argmax(axis=0), minlength=len(versions))
    return {v: float(w / draws) for v, w in zip(versions, wins)}
