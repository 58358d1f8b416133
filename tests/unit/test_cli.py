"""The CLI says what is missing in one line (exit 2), never with a traceback."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.settings import get_settings


@pytest.fixture
def run(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith(("RTS_", "AWS_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RTS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))  # no region from a profile either
    get_settings.cache_clear()

    def invoke(*args: str):
        result = CliRunner().invoke(app, list(args))
        return result.exit_code, result.output.strip()

    yield invoke
    get_settings.cache_clear()


@pytest.mark.parametrize("args, message", [
    (["listen", "--source", "sqs"], "the sqs source needs a queue: pass --queue-url"),
    (["listen", "--source", "sqs", "--queue-url", "http://127.0.0.1:9/000000000000/q"],
     "the sqs source needs the queue's AWS region: pass --region"),
    (["listen", "--source", "pubsub"], "the pubsub source needs a subscription: pass --subscription"),
    (["listen", "--source", "pubsub", "--subscription", "my-sub"],
     "--subscription must look like projects/<project>/subscriptions/<name>"),
    (["listen", "--source", "kafka"], "listener.source: Input should be 'local', 'sqs' or 'pubsub'"),
    (["models", "rollback", "cats", "1"], "no model named 'cats'; models here: diabetes, digits"),
    (["models", "status", "digits"], "set RTS_ADMIN_TOKEN to the gateway's admin token (make up prints it)"),
    (["models", "policy", "digits", "--file", "/no/such/policy.yaml"], "does not exist"),
])
def test_missing_or_wrong_options_are_one_line(run, args, message):
    code, output = run(*args)
    assert code == 2, output
    assert output.startswith("error: ") and message in output and "Traceback" not in output
    assert len(output.splitlines()) == 1


def test_an_unknown_variable_stops_any_command_in_one_line(run, monkeypatch):
    monkeypatch.setenv("RTS_TRITON_GRCP_PORT", "1")
    code, output = run("models", "list")
    assert code == 2 and "RTS_TRITON_GRCP_PORT is not a setting; did you mean RTS_TRITON_GRPC_PORT?" in output


def test_the_region_comes_from_the_queue_url(run, monkeypatch):
    from services.events.sqs import region_of

    assert region_of("https://sqs.eu-west-1.amazonaws.com/123/q") == "eu-west-1"
    assert region_of("http://127.0.0.1:5000/123/q") is None


def test_rollout_commands_say_when_no_gateway_answers(run, monkeypatch):
    monkeypatch.setenv("RTS_ADMIN_TOKEN", "t0ken")
    monkeypatch.setenv("RTS_SERVE_HTTP_PORT", "9")  # nothing listens there
    get_settings.cache_clear()
    for args in (["models", "status", "digits"], ["models", "promote", "digits", "2"], ["models", "rollback", "digits"],
                 ["models", "fault", "digits", "2", "--latency-ms", "100"]):
        code, output = run(*args)
        assert code == 2 and output.startswith("error: no gateway at http://127.0.0.1:9/admin/"), output
        assert "is the stack up (make up)?" in output and len(output.splitlines()) == 1
