"""Schemathesis over the gateway's own OpenAPI document: /v1, /v2 and /admin, in-process (no Ray, no Triton).

The app is the real one (``create_app``) with the fixtures of ``test_routes.py``: version 1 of both
models built into a temporary ``var_dir``, Triton replaced by ``FakeTriton`` (the real ONNX ensembles
in this process). Two stand-ins more, so that no request leaves the process:

- the rollout controller is the real ``services.rollout.Controller`` (the loop with no Ray in it)
  behind the actor-handle interface the routes call (``handle.method.remote(...)``), over a
  registry with no Triton (promote and rollback pin files only);
- ``submit_run`` (the Ray Jobs API) answers a run id.

Schemathesis' engine (what ``st run`` does: the schema's examples, the coverage phase with its
boundary and negative values, then Hypothesis fuzzing in positive and negative mode; the stateful
phase is off) runs every operation with a fixed seed and ``deterministic`` generation, so each run
sends the same requests. Pass means, for every request: no 5xx, and a status, content type, headers
and body that the document declares for that operation; and also what Schemathesis checks beyond
that (schema-valid requests accepted, schema-invalid ones refused, 405 with ``Allow`` for methods a
path does not take, 401 on /admin without the bearer token). Checks that cannot hold for an
operation are turned off for that operation only, each with the reason (``OPERATIONS``).

Budget: MAX_EXAMPLES fuzzing examples per operation and mode; the whole file runs in about a minute on
2 cores. tests/integration/test_hostile_input.py runs the same against the live gateway, smaller.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import events

from services.registry.publish import Registry
from services.rollout.controller import Controller
from tests.unit.test_routes import (TOKEN, diabetes_ensemble, first_runs, make_app, models,  # noqa: F401
                                    settings, triton, var_dir)

# Fixed, so every run sends the same requests; FUZZ_SEED / FUZZ_EXAMPLES explore further by hand.
SEED = int(os.environ.get("FUZZ_SEED", "20250611"))
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))

# Checks off for one operation, and why. Everything else is checked everywhere.
OPERATIONS: list[dict[str, Any]] = [
    # A schema-valid digits instance or file can still be no image: JSON Schema cannot say "a PNG",
    # so valid-looking bytes are refused with 400 (not_an_image, bad_base64, ...), as they must be.
    {"include-path-regex": r"^/v1/(predict|models/digits/predict)$",
     "checks": {"positive_data_acceptance": {"enabled": False}}},
    # OIP tensors: which names, datatypes and shapes go together is the model's (GET /v2/models/{m});
    # the document can only say "tensors", so a schema-valid request is mostly refused with 400.
    {"include-path-regex": r"^/v2/models/\{model\}(/versions/\{version\})?/infer$",
     "checks": {"positive_data_acceptance": {"enabled": False}}},
    # The policy is YAML in a string, validated by Policy.parse (400 invalid_policy).
    {"include-path": "/admin/models/{model}/policy", "include-method": "PUT",
     "checks": {"positive_data_acceptance": {"enabled": False}}},
]


class InProcessController:
    """The rollout ``Controller`` behind the interface of its Ray actor handle: ``handle.status.remote(...)``
    is an awaitable, as an ObjectRef is; the call runs in a worker thread, as the actor runs it."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def __getattr__(self, name: str):
        method = getattr(self.controller, name)

        class Remote:
            @staticmethod
            def remote(*args):
                return asyncio.to_thread(method, *args)

        return Remote


@pytest.fixture(scope="module")
def fuzz_app(settings, models, triton, first_runs):
    app = make_app(settings, models, triton)
    gateway = app.state.gateway
    registry = Registry.open(settings, None)  # no Triton: promote/rollback pin files, never dial 127.0.0.1:8101
    gateway.__dict__["registry"] = registry  # Gateway.registry is a cached_property
    gateway.controller = InProcessController(Controller(registry, models))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("services.serving.routes.admin.submit_run", lambda settings_, model, events_: "fuzz-run-1")
        yield app


def fuzz_config(token: str, max_examples: int, **extra: Any) -> "schemathesis.Config":
    """The engine's settings, shared with the live-stack run in tests/integration/test_hostile_input.py."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "workers": 1,
        "continue-on-failure": True,
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        # 413 is how a batch over the documented maxItems is refused (too_many_items): a rejection too.
        "checks": {"negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]}},
        "auth": {"openapi": {"AdminToken": {"bearer": token}}},
        "operations": OPERATIONS,
        **extra,
    })


def execute(schema) -> tuple[dict[str, list[str]], Counter]:
    """Run the engine over a loaded schema; (failures by operation, requests by operation)."""
    failures: dict[str, list[str]] = defaultdict(list)
    requests: Counter = Counter()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            requests[recorder.label] += len(recorder.interactions)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    response = recorder.interactions[case_id].response if case_id in recorder.interactions else None
                    got = f"{response.status_code} {response.content[:300]!r}" if response is not None else "-"
                    failures[recorder.label].append(
                        f"{check.name}: {check.failure_info.failure.title}\n    {check.failure_info.code_sample}"
                        f"\n    -> {got}")
        elif isinstance(event, events.NonFatalError):  # the app raised through the transport: a 500
            failures[event.label].append(f"error: {event.info.title}: {event.value!r}\n    {event.info.code_sample}")
        elif isinstance(event, events.FatalError):
            failures["engine"].append(f"fatal: {event.exception!r}")
    return failures, requests


def fuzz(app, path_regex: str) -> tuple[dict[str, list[str]], Counter, float]:
    """Run the engine over the operations whose path matches; (failures by operation, requests by operation, s)."""
    config = fuzz_config(TOKEN, MAX_EXAMPLES)
    # exclude(everything else), not include(path_regex): include filters are OR-ed with the `operations`
    # entries of the config, which name operations of every area.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config).exclude(
        path_regex=f"^(?!{path_regex})")
    started = time.perf_counter()
    failures, requests = execute(schema)
    return failures, requests, time.perf_counter() - started


def report(failures: dict[str, list[str]]) -> str:
    lines = []
    for label, found in failures.items():
        lines.append(f"{label}: {len(found)} failing checks")
        lines += [f"  {f}" for f in dict.fromkeys(found)][:8]  # the distinct ones, first few
    return "\n".join(lines)


AREAS = {
    "v1": r"/(v1/|drift$|healthz$)",
    "v2": r"/v2(/|$)",
    "admin": r"/admin/",
}


@pytest.mark.parametrize("area", list(AREAS))
def test_every_response_is_documented_and_no_request_is_a_5xx(fuzz_app, area):
    failures, requests, seconds = fuzz(fuzz_app, AREAS[area])
    print(f"\n{area}: {sum(requests.values())} requests over {len(requests)} operations in {seconds:.1f}s")
    assert requests, f"no operation matched {AREAS[area]}"
    assert not failures, report(failures)
    # every operation really ran (none skipped for want of examples)
    assert all(n >= 5 for n in requests.values()), requests


def test_every_operation_of_the_document_is_fuzzed(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    paths = {op.ok().path for op in schema.get_all_operations()}
    missed = sorted(p for p in paths if not any(re.match(rx, p) for rx in AREAS.values()))
    assert not missed, f"operations no fuzz test covers: {missed}"
    assert {"/v1/models/digits/predict", "/v2/models/{model}/infer", "/admin/runs/{run_id}"} <= paths
