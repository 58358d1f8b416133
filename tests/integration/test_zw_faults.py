"""The fast subset of the fault matrix (loadtests/faults.py; the whole matrix is `make test-faults`):
one of two ingress replicas killed -9 under a bounded Locust load: no HTTP error, the replica replaced,
and at most a connection or two dropped by HAProxy's reload (see the assertion).

Runs after the other tests of the session stack (file order) and puts its Serve config back.
"""

from __future__ import annotations

import pytest

from loadtests.faults import FAULTS, run_row, table
from services.runtime.stack import render_serve_config

pytestmark = pytest.mark.integration


@pytest.fixture
def restore_config(stack):
    yield
    rendered = render_serve_config(stack.serve_config, stack.work_dir / "serve_config.yaml",
                                   http_port=stack.settings.serve.http_port)
    stack.ray.serve_deploy(rendered)


def test_one_of_two_ingress_replicas_killed_under_load_fails_no_request(stack, restore_config, tmp_path):
    row = run_row(stack, FAULTS["ingress-1-of-2"], tmp_path / "ingress-1-of-2")
    print("\n" + table([row]))
    assert row.requests > 100 and row.failed_before_fault == 0
    assert row.recovered_s is not None and row.recovered_s < 30, "the killed replica was not replaced"
    # The goal is 0, and most runs get it. What is left looks like a keep-alive race (not yet proven): Serve rewrites HAProxy's
    # configuration when the replica set changes, HAProxy's reload closes idle client connections, and a
    # client that sends on one at that instant sees the connection drop (status 0, never an HTTP error).
    dropped = [e for e in row.errors if "CatchResponseError('0: ')" in e]
    assert dropped == row.errors, f"failures other than a dropped connection: {row.errors}"
    assert row.failed <= 2, f"{row.failed} failed ({row.in_flight} in flight at the kill): {row.errors}"
