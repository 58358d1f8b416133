"""Live evidence and the verdict on a challenger (``services.rollout.evaluation``): pure functions.

Covered:

- ``Window``: replica reports folded in (counts, latencies, drift), feedback (accuracy, mean
  absolute error), ``summary``; the latency reservoir stays bounded and stays a uniform sample
  across reports, even when reports carry fewer latencies than requests (errors, replica caps);
- ``evaluate``: hold with too few samples or too short a stage; advance when every SLO holds;
  roll back on error rate, on p99 against production's (ratio + slack), on shadow disagreement,
  on drift PSI, on live accuracy; a handful of early errors or slow requests is not enough to
  judge; the shadow stage judges the mirrored numbers and never accuracy; ``judge_accuracy=False``;
  no production latency to compare with holds;
- ``accuracy_test``: waits with little evidence, passes a non-inferior candidate, breaks a clearly
  worse one, waits when inconclusive; ``min_feedback: 0`` never waits (but can still break);
  regression uses the mean absolute error (relative margin); a perfect small sample does not
  divide by zero;
- ``best_probability``: a clear winner, a tie, reproducible with a seed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.rollout.evaluation import RESERVOIR, Window, accuracy_test, best_probability, evaluate
from services.rollout.policy import SLO

# A quick SLO: 40 samples, no minimum duration, feedback required only where a test says so.
FAST = dict(min_requests=40, min_duration_s=0, max_error_rate=0.05, p99_ratio=1.5, p99_slack_ms=10,
            max_disagreement=0.15, min_feedback=0, max_drift_psi=0.3)


def slo(**changes) -> SLO:
    return SLO(**{**FAST, **changes})


def served(n: int, latency_ms: float = 5.0, errors: int = 0, seed: int = 0) -> dict:
    """A replica's report of `n` answered requests (LiveStats.take's per-version shape)."""
    rng = np.random.default_rng(seed)
    return {"requests": n, "errors": errors,
            "latencies_ms": list(latency_ms * rng.uniform(0.8, 1.2, n - errors))}


def mirrored(n: int, latency_ms: float = 5.0, errors: int = 0, disagreements: int = 0, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {"shadow_requests": n, "shadow_errors": errors, "shadow_disagreements": disagreements,
            "shadow_latencies_ms": list(latency_ms * rng.uniform(0.8, 1.2, n - errors))}


def window(*reports: dict, feedback: tuple[int, int] | None = None, abs_errors=()) -> Window:
    w = Window()
    for r in reports:
        w.add(r)
    if feedback is not None:
        right, total = feedback
        for i in range(total):
            w.add_feedback(i < right, None)
    for e in abs_errors:
        w.add_feedback(None, float(e))
    return w


def production(n: int = 200, latency_ms: float = 5.0, feedback: tuple[int, int] | None = None) -> Window:
    return window(served(n, latency_ms, seed=7), feedback=feedback)


# ---- Window ---------------------------------------------------------------------------------------

def test_window_folds_reports_and_feedback():
    w = Window()
    w.add({**served(10, errors=2), **mirrored(5, errors=1, disagreements=2)})
    w.add({"requests": 3, "latencies_ms": [1.0, 2.0, 3.0], "drift_psi": 0.12})
    w.add({"requests": 1, "latencies_ms": [4.0]})  # no drift in this report: the last value stays
    assert (w.requests, w.errors, len(w.latencies_ms)) == (14, 2, 12)
    assert (w.shadow_requests, w.shadow_errors, w.shadow_disagreements, len(w.shadow_latencies_ms)) == (5, 1, 2, 4)
    assert w.drift_psi == 0.12
    w.add_feedback(True, None)
    w.add_feedback(False, None)
    w.add_feedback(None, 3.0)
    summary = w.summary()
    assert summary["requests"] == 14 and summary["feedback"] == 3 and summary["drift_psi"] == 0.12
    assert summary["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert summary["mean_abs_error"] == pytest.approx(1.0)
    assert summary["p99_ms"] == pytest.approx(Window.p99(w.latencies_ms), abs=1e-3)
    assert "accuracy" not in Window().summary() and Window().summary()["p99_ms"] is None


def test_the_latency_reservoir_is_bounded():
    w = Window()
    for i in range(5):
        w.add({"requests": 2000, "latencies_ms": [float(i)] * 2000})
    assert len(w.latencies_ms) == RESERVOIR and w.requests == 10_000


def test_the_latency_reservoir_samples_every_report_alike_when_reports_carry_fewer_latencies_than_requests():
    # A busy replica sends at most 5000 latencies per report however many requests it answered:
    # every report must still count the same in the sample (else p99 reflects only the window's start).
    w = Window()
    for i in range(10):
        w.add({"requests": 20_000, "latencies_ms": [float(i)] * 5000})
    counts = np.bincount(np.asarray(w.latencies_ms, dtype=int), minlength=10)
    assert counts.min() > 300 and counts.max() < 500  # 400 each expected

    # Failed requests carry no latency: half the requests failing early must not hide later slowness.
    w = Window()
    w.add({"requests": 40_000, "errors": 36_000, "latencies_ms": [1.0] * 4000})
    w.add({"requests": 4000, "latencies_ms": [100.0] * 4000})
    assert np.mean(np.asarray(w.latencies_ms) == 100.0) == pytest.approx(0.5, abs=0.05)


def test_window_age():
    w = Window(started_at=time.time() - 30)
    assert 29 < w.age_s < 35


# ---- evaluate: hold or advance --------------------------------------------------------------------

def test_too_few_samples_holds():
    verdict = evaluate("shadow", window(mirrored(39)), production(), slo(), "classification")
    assert verdict.action == "hold"
    assert "39 of 40 samples" in verdict.reasons


def test_every_slo_holding_advances_a_shadow():
    verdict = evaluate("shadow", window(mirrored(100, disagreements=5)), production(), slo(), "classification")
    assert verdict.action == "advance", verdict.reasons
    assert verdict.numbers["samples"] == 100 and verdict.numbers["disagreement"] == 0.05
    assert verdict.numbers["p99_limit_ms"] > verdict.numbers["p99_ms"]


def test_every_slo_holding_advances_a_canary():
    verdict = evaluate("canary", window(served(100)), production(), slo(), "classification")
    assert verdict.action == "advance", verdict.reasons


def test_a_stage_lasts_min_duration():
    young = window(mirrored(100))
    verdict = evaluate("shadow", young, production(), slo(min_duration_s=60), "classification")
    assert verdict.action == "hold" and any("of 60 s" in r for r in verdict.reasons)
    young.started_at -= 61
    assert evaluate("shadow", young, production(), slo(min_duration_s=60), "classification").action == "advance"


def test_no_production_latency_to_compare_with_holds():
    verdict = evaluate("shadow", window(mirrored(100)), Window(), slo(), "classification")
    assert verdict.action == "hold" and "no production latency to compare with yet" in verdict.reasons


def test_the_shadow_stage_judges_mirrored_requests_not_answered_ones():
    # lots of answered requests (as a canary would have) but no mirrored ones: nothing to judge a shadow by
    verdict = evaluate("shadow", window(served(500)), production(), slo(), "classification")
    assert verdict.action == "hold" and verdict.numbers["samples"] == 0


# ---- evaluate: roll back ---------------------------------------------------------------------------

def test_error_rate_rolls_back():
    verdict = evaluate("canary", window(served(100, errors=10)), production(), slo(), "classification")
    assert verdict.action == "rollback"
    assert verdict.reasons == ["error rate 0.100 > 0.05"] and verdict.numbers["error_rate"] == 0.1


def test_shadow_errors_roll_a_shadow_back():
    verdict = evaluate("shadow", window(mirrored(100, errors=20)), production(), slo(), "classification")
    assert verdict.action == "rollback" and "error rate 0.200" in verdict.reasons[0]


def test_an_early_error_or_two_is_not_enough_to_judge():
    verdict = evaluate("canary", window(served(4, errors=2)), production(), slo(), "classification")
    assert verdict.action == "hold"
    # ... but five errors are, even early
    assert evaluate("canary", window(served(6, errors=5)), production(), slo(), "classification").action == "rollback"


def test_error_rate_within_the_slo_passes():
    verdict = evaluate("canary", window(served(200, errors=2)), production(), slo(), "classification")
    assert verdict.action == "advance", verdict.reasons


def test_p99_above_production_times_ratio_plus_slack_rolls_back():
    verdict = evaluate("canary", window(served(100, latency_ms=40)), production(latency_ms=5), slo(), "classification")
    assert verdict.action == "rollback"
    assert verdict.reasons[0].startswith("p99 latency") and "production" in verdict.reasons[0]
    assert verdict.numbers["p99_limit_ms"] == pytest.approx(verdict.numbers["production_p99_ms"] * 1.5 + 10, abs=1e-2)


def test_p99_within_ratio_and_slack_passes():
    # 1.5 x 6 ms + 10 ms = 19 ms allowed
    verdict = evaluate("canary", window(served(100, latency_ms=12)), production(latency_ms=5), slo(), "classification")
    assert verdict.action == "advance", verdict.reasons


def test_shadow_p99_uses_the_mirrored_latencies():
    verdict = evaluate("shadow", window(served(100, latency_ms=5), mirrored(100, latency_ms=60)), production(),
                       slo(), "classification")
    assert verdict.action == "rollback" and verdict.reasons[0].startswith("p99 latency")


def test_a_few_slow_requests_early_are_not_judged():
    verdict = evaluate("canary", window(served(10, latency_ms=100)), production(), slo(), "classification")
    assert verdict.action == "hold"


def test_shadow_disagreement_rolls_back():
    verdict = evaluate("shadow", window(mirrored(100, disagreements=30)), production(), slo(), "classification")
    assert verdict.action == "rollback"
    assert verdict.reasons == ["disagrees with production on 30.0% of requests > 15.0%"]


def test_disagreement_is_not_checked_when_the_policy_says_none():
    verdict = evaluate("shadow", window(mirrored(100, disagreements=90)), production(),
                       slo(max_disagreement=None), "classification")
    assert verdict.action == "advance" and "disagreement" not in verdict.numbers


def test_drift_psi_rolls_back():
    drifted = window(served(100))
    drifted.drift_psi = 0.5
    verdict = evaluate("canary", drifted, production(), slo(), "classification")
    assert verdict.action == "rollback" and verdict.reasons == ["drift PSI 0.500 > 0.300"]
    assert evaluate("canary", drifted, production(), slo(max_drift_psi=None), "classification").action == "advance"


def test_drift_production_shares_is_not_held_against_the_candidate():
    """Traffic unlike every version's training data drifts production too: the candidate breaks only by
    drifting more than production does, by more than drift_margin."""
    drifted = window(served(100))
    drifted.drift_psi = 0.5
    base = production()
    base.drift_psi = 0.45
    verdict = evaluate("canary", drifted, base, slo(), "classification")
    assert verdict.action == "advance", verdict.reasons
    assert verdict.numbers["drift_limit"] == 0.7 and verdict.numbers["production_drift_psi"] == 0.45
    drifted.drift_psi = 0.75
    verdict = evaluate("canary", drifted, base, slo(), "classification")
    assert verdict.action == "rollback" and verdict.reasons == ["drift PSI 0.750 > 0.700"]


def test_every_broken_slo_is_named():
    bad = window(served(100, latency_ms=50, errors=20))
    bad.drift_psi = 0.9
    verdict = evaluate("canary", bad, production(), slo(), "classification")
    assert verdict.action == "rollback" and len(verdict.reasons) == 3


def test_a_canary_with_worse_live_accuracy_rolls_back():
    candidate = window(served(100), feedback=(70, 200))
    base = production(feedback=(190, 200))
    verdict = evaluate("canary", candidate, base, slo(min_feedback=50), "classification")
    assert verdict.action == "rollback" and verdict.reasons[0].startswith("live accuracy 0.350 vs production 0.950")
    assert verdict.numbers["accuracy_candidate"] == 0.35
    # the same evidence, not judged: ab and bandit canaries leave accuracy to the operator or the bandit
    assert evaluate("canary", candidate, base, slo(min_feedback=50), "classification",
                    judge_accuracy=False).action == "advance"


def test_a_canary_waits_for_feedback_the_policy_requires():
    verdict = evaluate("canary", window(served(100), feedback=(10, 10)), production(feedback=(10, 10)),
                       slo(min_feedback=50), "classification")
    assert verdict.action == "hold" and any("of 50 needed" in r for r in verdict.reasons)


def test_a_shadow_is_never_judged_on_accuracy():
    # a shadow answers no one, so no feedback can be about it
    verdict = evaluate("shadow", window(mirrored(100)), production(), slo(min_feedback=50), "classification")
    assert verdict.action == "advance", verdict.reasons


# ---- accuracy_test -----------------------------------------------------------------------------------

def test_accuracy_waits_with_little_evidence():
    state, why, _ = accuracy_test(window(feedback=(5, 5)), window(feedback=(50, 100)), slo(min_feedback=20),
                                  "classification")
    assert state == "wait" and "feedback 5 (candidate) / 100 (production) of 20 needed" in why


def test_accuracy_passes_a_non_inferior_candidate():
    state, why, numbers = accuracy_test(window(feedback=(950, 1000)), window(feedback=(940, 1000)),
                                        slo(min_feedback=100), "classification")
    assert state == "pass" and "non-inferior" in why
    assert numbers["difference_low"] > -0.02 and numbers["margin"] == -0.02


def test_accuracy_breaks_a_clearly_worse_candidate():
    state, why, numbers = accuracy_test(window(feedback=(700, 1000)), window(feedback=(950, 1000)),
                                        slo(min_feedback=100), "classification")
    assert state == "break" and "worse by more than 0.02 at 95%" in why
    assert numbers["difference_high"] < -0.02


def test_accuracy_waits_when_inconclusive():
    state, why, _ = accuracy_test(window(feedback=(90, 100)), window(feedback=(93, 100)), slo(min_feedback=100),
                                  "classification")
    assert state == "wait" and why == "live accuracy not yet shown to be no worse"


def test_accuracy_with_min_feedback_0_never_waits_but_can_break():
    rules = slo(min_feedback=0)
    assert accuracy_test(Window(), Window(), rules, "classification")[0] == "pass"
    # one row of feedback, or inconclusive evidence, must not hold a stage that none at all lets pass
    assert accuracy_test(window(feedback=(1, 1)), Window(), rules, "classification")[0] == "pass"
    assert accuracy_test(window(feedback=(90, 100)), window(feedback=(93, 100)), rules, "classification")[0] == "pass"
    assert accuracy_test(window(feedback=(700, 1000)), window(feedback=(950, 1000)), rules,
                         "classification")[0] == "break"


def test_accuracy_of_a_perfect_small_sample_is_finite():
    state, _, numbers = accuracy_test(window(feedback=(10, 10)), window(feedback=(10, 10)), slo(min_feedback=10),
                                      "classification")
    assert state == "wait" and numbers["difference_low"] < 0 < numbers["difference_high"]


def test_a_higher_confidence_needs_more_evidence():
    args = (window(feedback=(960, 1000)), window(feedback=(950, 1000)))
    assert accuracy_test(*args, slo(min_feedback=100, confidence=0.9), "classification")[0] == "pass"
    # near certainty with a tighter margin: the interval now straddles it
    assert accuracy_test(*args, slo(min_feedback=100, confidence=0.9999, accuracy_margin=0.005),
                         "classification")[0] == "wait"


def test_regression_uses_the_mean_absolute_error():
    rng = np.random.default_rng(0)
    base = window(abs_errors=np.abs(rng.normal(0, 10, 500)))
    same = window(abs_errors=np.abs(rng.normal(0, 10, 500)) * 0.9)
    worse = window(abs_errors=np.abs(rng.normal(0, 10, 500)) * 1.5)
    rules = slo(min_feedback=100, accuracy_margin=0.05)

    state, why, numbers = accuracy_test(same, base, rules, "regression")
    assert state == "pass" and "mean error" in why
    assert set(numbers) == {"mae_candidate", "mae_production", "t"}
    assert numbers["mae_candidate"] == pytest.approx(same.abs_error_sum / same.feedback, abs=1e-3)

    state, why, numbers = accuracy_test(worse, base, rules, "regression")
    assert state == "break" and "worse by more than 5%" in why and numbers["t"] > 1.645

    # correct/incorrect counts mean nothing to a regressor: only the errors are read
    assert accuracy_test(window(feedback=(0, 200), abs_errors=[1.0] * 200), window(abs_errors=[1.0] * 400),
                         rules, "regression")[0] == "pass"


def test_regression_within_the_margin_but_unproven_waits():
    base = window(abs_errors=[9.0, 11.0] * 50)
    candidate = window(abs_errors=[9.5, 11.5] * 50)  # 5 % worse, margin 5 %: on the line
    assert accuracy_test(candidate, base, slo(min_feedback=100, accuracy_margin=0.05), "regression")[0] == "wait"


def test_regression_canary_with_a_worse_error_rolls_back():
    candidate = window(served(100), abs_errors=[20.0, 22.0] * 100)
    base = window(served(200, seed=3), abs_errors=[10.0, 12.0] * 100)
    verdict = evaluate("canary", candidate, base, slo(min_feedback=100), "regression")
    assert verdict.action == "rollback" and "live mean error 21.000 vs production 11.000" in verdict.reasons[0]


# ---- best_probability ---------------------------------------------------------------------------------

def test_best_probability_of_a_clear_winner():
    best = best_probability({1: (50, 50), 2: (90, 10)})
    assert best[2] > 0.999 and sum(best.values()) == pytest.approx(1.0)


def test_best_probability_of_a_tie_and_its_seed():
    best = best_probability({1: (30, 30), 2: (30, 30), 3: (30, 30)})
    assert all(p == pytest.approx(1 / 3, abs=0.04) for p in best.values())
    assert best_probability({1: (3, 5), 2: (5, 3)}, seed=4) == best_probability({1: (3, 5), 2: (5, 3)}, seed=4)
