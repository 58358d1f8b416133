"""What operators do, shared by the CLI (``rts models ...``) and the admin HTTP API (``/admin/...``)."""

from __future__ import annotations

import time

from services.common.settings import Settings
from services.model_repository import ModelRepository
from services.observability.tracing import current_traceparent
from services.models.digits import train as digits
from services.retraining import publish
from services.retraining.jobs import submit_run, wait_for_run
from services.retraining.records import Records, now
from services.storage import open_store


def list_versions(settings: Settings) -> dict:
    repo = ModelRepository(open_store(settings.model_repository_uri))
    records = Records(open_store(settings.data_uri))
    lineage = {r["version"]: r for r in records.versions()}
    family = digits.family()
    serving = repo.served_version(family)
    versions = []
    for v in repo.complete_versions(family):
        rec = lineage.get(v, {})
        metrics = rec.get("metrics", {}).get("candidate", {})
        versions.append({"version": v, "serving": v == serving, "created_at": rec.get("created_at"),
                         "run_id": rec.get("run_id"), "holdout_accuracy": metrics.get("accuracy"),
                         "gates_passed": all(g["passed"] for g in rec.get("gates", [])) if rec else None,
                         "lineage": rec or {"note": "initial version built by services.models.digits.train"}})
    return {"model": family.ensemble, "serving": serving, "versions": versions}


def start_run(settings: Settings, reason: str, wait: bool = False) -> dict:
    event = {"id": f"manual-{time.time_ns()}", "source": "rts/operator", "type": "rts.retrain.requested",
             "subject": "digits", "time": now(), "data": {"reason": reason, "model": "digits"}}
    traceparent = current_traceparent()
    if traceparent:
        event["traceparent"] = traceparent  # the run's spans join the operator's request trace
    run_id = submit_run([event], settings)
    return wait_for_run(run_id, settings) if wait else {"run_id": run_id, "outcome": "submitted"}


def rollback_to(settings: Settings, version: int) -> dict:
    repo = ModelRepository(open_store(settings.model_repository_uri))
    triton = publish.TritonControl(settings.effective_triton_url)
    try:
        seconds = publish.rollback(triton, repo, digits.family(), version)
    finally:
        triton.close()
    Records(open_store(settings.data_uri)).set_serving(version, reason="rollback by operator")
    return {"serving": version, "seconds": round(seconds, 3)}
