"""The fast subset of the fault matrix (loadtests/faults.py; the whole matrix is `make test-faults`):
one of two ingress replicas killed -9 under a bounded Locust load costs users nothing.

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
    assert row.failed == 0, f"{row.failed} failed ({row.in_flight} in flight at the kill): {row.errors}"
