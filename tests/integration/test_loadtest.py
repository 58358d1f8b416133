"""The Locust load test, CI-short ("ci" profile, about 25 s): the report folder a user gets."""

from __future__ import annotations

import json

import pytest

from loadtests.run import run_profile

pytestmark = pytest.mark.integration


def test_ci_profile_writes_a_full_report_with_no_failures(stack, tmp_path):
    # No feedback here: it would become training data, and later tests count on knowing what is new.
    # (test_rollout sends feedback, and checks what becomes of it.)
    result = run_profile("ci", stack.gateway_url, stack.ray.dashboard_url, tmp_path / "report",
                         env={"LOADTEST_FEEDBACK_SHARE": "0"})
    out = tmp_path / "report"
    for name in ("report.html", "locust_stats.csv", "locust_stats_history.csv", "timings.csv", "replicas.csv",
                 "stages.json", "stages.md", "load.png"):
        assert (out / name).exists(), name
    stages = json.loads((out / "stages.json").read_text())
    assert len(stages) == 3 and all(s["requests"] > 0 for s in stages)
    # Bad requests are part of the mix; they count as successes only when they get their 400.
    assert sum(s["failures"] for s in stages) == 0, (out / "locust_failures.csv").read_text()
    assert stages[1]["rps"] > stages[0]["rps"]  # more users, more throughput
    assert "Ingress" in (out / "replicas.csv").read_text()
    assert result["locust_exit"] == 0
