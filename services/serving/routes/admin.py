"""Operator endpoints behind a bearer token: versions, stages and lineage; runs; the rollout (status,
promote, rollback, the policy, injected faults).

Set ``RTS_ADMIN_TOKEN`` (``make up`` makes one and prints it); without it these routes answer 503.
``Authorization: Bearer <token>`` on every call; a wrong or missing token is 401 (``WWW-Authenticate:
Bearer``). The check is a dependency of the router, so of every route here (tests/unit/test_routes.py
enumerates them); the token is compared in constant time and never logged.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from annotated_types import Ge
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from starlette.concurrency import run_in_threadpool

from services.errors import InvalidInput, ServingError
from services.retraining.jobs import submit_run
from services.retraining.requests import retrain_request
from services.rollout.policy import Policy, load_policy, save_policy
from services.serving.controller import call
from services.serving.deps import GatewayDep, ModelDep, require_admin_token
from services.serving.responses import errors
from services.telemetry import metrics

# Every route: 401 without the right token, 503 while the admin API has no token (or a backend is away).
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_token)],
                   responses=errors(401, 503))

# Run ids are made by new_run_id() ("20250101-120000-ab12cd", "init-<model>-..."); one never names a
# path: a run id is part of a storage key (runs/<id>.json).
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _json_integer(value: object) -> object:
    """A JSON integer: 2 or 2.0 (the same number in JSON), never true, "2" or 2.5."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be an integer")
    return value


# A version number as JSON Schema's "integer" says; strict models otherwise (true is no version, "0.5" no rate).
Version = Annotated[int, Strict(False), Ge(1), BeforeValidator(_json_integer)]


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field("requested over the admin API", max_length=500)
    force: bool = Field(False, description="train and publish even with no new data since the serving version")


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Version | None = Field(None, description="a complete published version; none: see the route")


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    yaml: str = Field(description="the policy as YAML (see services/rollout/policy.py)", max_length=20_000)


class FaultBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Version
    latency_ms: float = Field(0, ge=0, le=60_000)
    error_rate: float = Field(0, ge=0, le=1)


async def _follow(gateway) -> None:
    """This replica routes by the new table at once; the others within their refresh interval (1 s)."""
    if gateway.router is not None:
        await run_in_threadpool(gateway.router.refresh)


@router.get("/models", summary="Every model's versions with metrics and lineage; which one serves")
def all_models(gateway: GatewayDep) -> dict:
    return {"models": [gateway.registry.describe(name, p.family) for name, p in gateway.models.items()]}


@router.get("/models/{model}", summary="One model's versions with metrics and lineage; which one serves",
            responses=errors(404))
def one_model(package: ModelDep, gateway: GatewayDep) -> dict:
    return gateway.registry.describe(package.name, package.family)


@router.post("/models/{model}/retrain", status_code=202, summary="Start a retraining run of a model (a Ray Job)",
             responses=errors(400, 404, 408, 413, 422))
async def retrain(package: ModelDep, gateway: GatewayDep, body: RetrainBody | None = None) -> dict:
    body = body or RetrainBody()
    event = retrain_request(package.name, body.reason, source="rts/admin", force=body.force)
    try:
        run_id = await run_in_threadpool(submit_run, gateway.settings, package.name, [event])
    except ConnectionError as exc:  # the Ray Jobs API (the dashboard) cannot be reached
        raise ServingError(f"the Ray Jobs API at {gateway.settings.ray.jobs_url} cannot be reached: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                           status=503, code="jobs_unavailable", retry_after_s=5) from None
    return {"run_id": run_id, "model": package.name, "outcome": "submitted"}


@router.get("/runs/{run_id}", summary="A run's record: stages, timings, gates, outcome", responses=errors(404, 422))
def run(run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN, description="a run id, as retrain answers it")],
        gateway: GatewayDep) -> dict:
    record = gateway.registry.records.run(run_id)
    if record is None:
        raise ServingError(f"no run {run_id!r}", status=404, code="unknown_run")
    return record


@router.get("/models/{model}/status", summary="The rollout of a model: stages, routing, live evidence, decisions",
            responses=errors(404, 422))
async def status(package: ModelDep, gateway: GatewayDep, timeline: int = Query(0, ge=0, le=7200)) -> dict:
    if gateway.controller is None:
        book = await run_in_threadpool(gateway.registry.stages, package.name)
        return {"model": package.name, "production": book.production, "challengers": book.challengers,
                "stages": {str(v): s for v, s in book.versions.items()}, "controller": "not running"}
    return await call(gateway.controller.status.remote(package.name, timeline))


@router.post("/models/{model}/promote", summary="Make a version production now (default: the newest challenger)",
             responses=errors(400, 404, 408, 409, 413, 422))
async def promote(package: ModelDep, gateway: GatewayDep, body: VersionBody | None = None) -> dict:
    target = (body or VersionBody()).version
    if target is None:  # the newest challenger, found here so that "none" is the same 409 with or without a controller
        book = await run_in_threadpool(gateway.registry.stages, package.name)
        target = book.challengers[-1] if book.challengers else None
    if target is None:
        raise InvalidInput(f"{package.name} has no candidate to promote; name a version", status=409, code="conflict")
    if gateway.controller is not None:
        result = await call(gateway.controller.promote.remote(package.name, target, "operator (admin API)"))
        await _follow(gateway)
        return result
    seconds = await call(run_in_threadpool(gateway.registry.promote, package.name, package.family, target,
                                           by="operator (admin API)", reason="promoted by an operator"))
    return {"model": package.name, "production": target, "seconds": round(seconds, 3)}


@router.post("/models/{model}/rollback",
             summary="Roll back: the challengers, or (none left) to the production before; or to a named version",
             responses=errors(400, 404, 408, 409, 413, 422))
async def rollback(package: ModelDep, gateway: GatewayDep, body: VersionBody | None = None) -> dict:
    version = (body or VersionBody()).version
    if gateway.controller is not None:
        result = await call(gateway.controller.rollback.remote(package.name, version, "operator (admin API)"))
    else:
        result = await call(run_in_threadpool(gateway.registry.rollback, package.name, package.family, version,
                                              by="operator (admin API)"))
    if result.get("production") is not None:
        metrics.set_served_version(package.name, result["production"])
    await _follow(gateway)
    return {"model": package.name, **result}


@router.get("/models/{model}/policy", summary="The delivery policy in force", responses=errors(404))
async def get_policy(package: ModelDep, gateway: GatewayDep) -> dict:
    policy = await run_in_threadpool(load_policy, package, gateway.registry.records)
    return {"model": package.name, "policy": policy.model_dump(mode="json"), "yaml": policy.to_yaml()}


@router.put("/models/{model}/policy", summary="Change the delivery policy at run time (validated; no restart)",
            responses=errors(400, 404, 408, 413, 422))
async def put_policy(package: ModelDep, gateway: GatewayDep, body: PolicyBody) -> dict:
    try:
        policy = Policy.parse(body.yaml)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_policy") from None
    if gateway.controller is not None:
        await call(gateway.controller.set_policy.remote(package.name, body.yaml, "operator (admin API)"))
        await _follow(gateway)
    else:
        await run_in_threadpool(save_policy, package.name, policy, gateway.registry.records)
    return {"model": package.name, "policy": policy.model_dump(mode="json")}


@router.post("/models/{model}/faults", summary="Inject latency or failures into one version (to test rollbacks)",
             responses=errors(400, 404, 408, 413, 422))
async def fault(package: ModelDep, gateway: GatewayDep, body: FaultBody) -> dict:
    if gateway.controller is None:
        raise ServingError("faults are routed by the rollout controller, which runs in the Ray cluster",
                           status=503, code="no_controller")
    result = await call(gateway.controller.set_fault.remote(package.name, body.version, body.model_dump(
        exclude={"version"}), "operator (admin API)"))
    await _follow(gateway)
    return result
