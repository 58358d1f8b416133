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
