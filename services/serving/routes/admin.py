"""Operator endpoints behind a bearer token: versions and lineage, start a run, read a run, roll back.

Set ``RTS_ADMIN_TOKEN`` (``make up`` makes one and prints it); without it these routes answer 503.
``Authorization: Bearer <token>`` on every call; a wrong or missing token is 401.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from services.errors import InvalidInput, ServingError
from services.registry.publish import VersionNotAvailable
from services.retraining.jobs import submit_run
from services.retraining.requests import retrain_request
from services.serving.deps import GatewayDep, ModelDep, require_admin_token
from services.telemetry import metrics

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_token)])


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("requested over the admin API", max_length=500)
    force: bool = Field(False, description="train and publish even with no new data since the serving version")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="a complete published version to serve again")


@router.get("/models", summary="Every model's versions with metrics and lineage; which one serves")
def all_models(gateway: GatewayDep) -> dict:
    return {"models": [gateway.registry.describe(name, p.family) for name, p in gateway.models.items()]}


@router.get("/models/{model}", summary="One model's versions with metrics and lineage; which one serves")
def one_model(package: ModelDep, gateway: GatewayDep) -> dict:
    return gateway.registry.describe(package.name, package.family)


@router.post("/models/{model}/retrain", status_code=202, summary="Start a retraining run of a model (a Ray Job)")
async def retrain(package: ModelDep, gateway: GatewayDep, body: RetrainBody | None = None) -> dict:
    body = body or RetrainBody()
    event = retrain_request(package.name, body.reason, source="rts/admin", force=body.force)
    run_id = await run_in_threadpool(submit_run, gateway.settings, package.name, [event])
    return {"run_id": run_id, "model": package.name, "outcome": "submitted"}


@router.get("/runs/{run_id}", summary="A run's record: stages, timings, gates, outcome")
def run(run_id: str, gateway: GatewayDep) -> dict:
    record = gateway.registry.records.run(run_id)
    if record is None:
        raise ServingError(f"no run {run_id!r}", status=404, code="unknown_run")
    return record


@router.post("/models/{model}/rollback", summary="Serve an earlier version of a model again, without a restart")
def rollback(package: ModelDep, gateway: GatewayDep, body: RollbackBody) -> dict:
    try:
        seconds = gateway.registry.rollback(package.name, package.family, body.version)
    except VersionNotAvailable as exc:
        raise InvalidInput(str(exc), status=409, code="bad_version") from None
    metrics.set_served_version(package.name, body.version)
    return {"model": package.name, "serving": body.version, "seconds": round(seconds, 3)}
