"""One settings object: nested sections, every RTS_* variable a field, unknown variables refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import Section, Settings, unknown_variables, variable_names


@pytest.fixture
def env(monkeypatch):
    """A clean RTS_* environment for the test."""
    import os

    for key in [k for k in os.environ if k.startswith("RTS_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def test_sections_read_their_variables(env):
    env.setenv("RTS_TRITON_GRPC_PORT", "9101")
    env.setenv("RTS_RETRAIN_WORKERS", "3")
    env.setenv("RTS_LISTENER_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/1/q")
    env.setenv("RTS_DATA_URI", "s3://bucket/data")
    env.setenv("RTS_MODELS", "services.models.digits, acme.models.churn")
    s = Settings()
    assert s.triton.grpc_port == 9101 and s.triton.grpc_address == "grpc://127.0.0.1:9101"
    assert s.retrain.workers == 3 and s.listener.queue_url.endswith("/q")
    assert s.data_uri == "s3://bucket/data" and s.models == ["services.models.digits", "acme.models.churn"]
    env.setenv("RTS_MODELS", '["a.b"]')
    assert Settings().models == ["a.b"]


def test_an_unknown_variable_is_refused_with_the_closest_name(env):
    env.setenv("RTS_TRITON_GRPC_PROT", "9101")
    with pytest.raises(ValidationError, match="RTS_TRITON_GRPC_PROT is not a setting; did you mean RTS_TRITON_GRPC_PORT"):
        Settings()
    assert unknown_variables({"RTS_DRIFT_ENABLED": "1", "RTS_QQQQQQQQQQ": "1", "HOME": "/"}) == [
        "RTS_QQQQQQQQQQ is not a setting; see services/settings.py for every setting"]


def test_every_field_is_a_documented_variable():
    names = variable_names()
    assert {"RTS_TRITON_URL", "RTS_TRITON_HTTP_URL", "RTS_RAY_DASHBOARD_URL", "RTS_S3_ENDPOINT_URL",
            "RTS_SQS_ENDPOINT_URL", "RTS_ADMIN_TOKEN", "RTS_RETRAIN_WORKERS", "RTS_LIMITS_MAX_BODY_BYTES",
            "RTS_DATA_URI", "RTS_MODEL_REPOSITORY_URI", "RTS_MODELS", "RTS_SERVE_CONFIG"} <= names
    for name, field in Settings.model_fields.items():
        sections = [field.annotation] if isinstance(field.annotation, type) and issubclass(field.annotation, Section) \
            else []
        assert field.description or sections, name
        for section in sections:
            for sub, subfield in section.model_fields.items():
                assert subfield.description, f"{name}.{sub} has no description"


def test_what_a_process_was_given_reaches_its_children(env):
    s = Settings(var_dir="/tmp/v", triton={"grpc_port": 7001}, admin={"token": "x" * 20}, models=["a.b"])
    env_vars = s.to_env()
    assert env_vars["RTS_TRITON_GRPC_PORT"] == "7001" and env_vars["RTS_ADMIN_TOKEN"] == "x" * 20
    assert "RTS_TRITON_HTTP_PORT" not in env_vars  # defaults are not passed on
    for key, value in env_vars.items():
        env.setenv(key, value)
    again = Settings()
    assert again.triton.grpc_port == 7001 and again.models == ["a.b"] and str(again.var_dir) == "/tmp/v"
    assert again.admin.token.get_secret_value() == "x" * 20


def test_production_refuses_unsafe_values(env):
    with pytest.raises(ValidationError, match="shorter than 16"):
        Settings(environment="production", admin={"token": "short"})
    with pytest.raises(ValidationError, match="external Triton cannot read a file://"):
        Settings(environment="production", triton={"url": "grpc://triton:8001"})
    Settings(environment="production", triton={"url": "grpc://triton:8001"}, RTS_MODEL_REPOSITORY_URI="s3://b/m")
