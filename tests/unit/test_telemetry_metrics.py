"""The rts_* metrics move as the call sites say; the exposition is valid Prometheus text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.telemetry import metrics


@pytest.fixture(autouse=True)
def fresh():
    metrics.reset_metrics("prometheus")


def v(name, **labels):
    return metrics.sample_value(name, labels) or 0.0


def test_requests_errors_and_batch_sizes():
    metrics.record_request("/v1/predict", "digits", "2", 200)
    metrics.record_request("/v1/predict", "digits", 2, "200")
    metrics.record_request("/v1/predict", "digits", None, 413)
    metrics.record_error("too_many_items", "/v1/predict")
    metrics.record_batch_size("digits", 3)
    assert v("rts_requests_total", route="/v1/predict", model="digits", version="2", status="200") == 2
    assert v("rts_requests_total", route="/v1/predict", model="digits", version="", status="413") == 1
    assert v("rts_errors_total", code="too_many_items", route="/v1/predict") == 1
    assert v("rts_batch_size_sum", model="digits") == 3
    assert v("rts_batch_size_bucket", model="digits", le="4.0") == 1
    assert v("rts_batch_size_bucket", model="digits", le="2.0") == 0


def test_stage_timer_observes_also_on_errors():
    for stage in metrics.STAGES:
        with metrics.stage_timer(stage, "digits"):
            pass
    with pytest.raises(ValueError):
        with metrics.stage_timer("triton", "digits"):
            raise ValueError("boom")
    assert v("rts_stage_seconds_count", stage="preprocess", model="digits") == 1
    assert v("rts_stage_seconds_count", stage="triton", model="digits") == 2
    assert 0 < v("rts_stage_seconds_sum", stage="total", model="digits") < 1


def test_retraining_gates_version_and_drift():
    metrics.record_retraining_run("published", 42.0)
    metrics.record_retraining_run("gates_failed", 30.0)
    metrics.record_retraining_stage("train", 12.5)
    metrics.record_gates([{"name": "accuracy", "passed": True}, {"name": "no_regression", "passed": False}])
    metrics.set_served_version("digits", "3")
    metrics.set_served_version("digits", "")  # not known yet: ignored
    metrics.set_drift("digits", {"drifted": True, "samples": 500,
                                 "scores": {"psi_pixel_intensity": 0.31, "ks_image_mean": 0.2}})
    metrics.record_schema_violation("digits", "wrong_shape")
    assert v("rts_retraining_runs_total", outcome="published") == 1
    assert v("rts_retraining_duration_seconds_bucket", outcome="published", le="60.0") == 1
    assert v("rts_retraining_stage_seconds_count", stage="train") == 1
    assert v("rts_gate_results_total", gate="no_regression", passed="false") == 1
    assert v("rts_served_version", model="digits") == 3
    assert v("rts_drift_score", model="digits", statistic="psi_pixel_intensity") == pytest.approx(0.31)
    assert v("rts_drift_detected", model="digits") == 1
    assert v("rts_drift_window_samples", model="digits") == 500
    assert v("rts_schema_violations_total", model="digits", kind="wrong_shape") == 1


def test_exposition_parses_and_has_every_family():
    metrics.record_request("/v1/predict", "digits", "1", 200)
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    # prometheus_client reports counters without the _total suffix in family names
    expected = {name.removesuffix("_total") for name in metrics.METRIC_FAMILIES}
    assert expected <= names


def test_auto_backend_is_prometheus_outside_ray():
    assert metrics.Metrics("auto").backend_name == "prometheus"
    with pytest.raises(ValueError, match="backend"):
        metrics.Metrics("statsd")
