"""``GET /v1/models``: every served model with its versions, the serving version and its input schema;
``GET /drift``: each model's drift against its serving version's training data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from services.modelkit import ModelPackage
from services.modelkit.discovery import model_named
from services.serving.deps import Gateway, GatewayDep, ModelDep
from services.serving.responses import errors

router = APIRouter(tags=["models"])


def _describe(gateway: Gateway, package: ModelPackage) -> dict:
    versions = gateway.registry.describe(package.name, package.family, lineage=False)
    return {**package.describe(), "serving_version": versions["serving"],
            "versions": [v["version"] for v in versions["versions"]],
            "predict": f"/v1/models/{package.name}/predict", "oip": f"/v2/models/{package.name}/infer"}


@router.get("/v1/models", summary="Every served model: versions, the serving version, its input schema",
            responses=errors())
async def list_models(gateway: GatewayDep) -> dict:
    models = [await run_in_threadpool(_describe, gateway, p) for p in gateway.models.values()]
    return {"default": gateway.default_model, "models": models}


@router.get("/v1/models/{model}", summary="One served model: versions, the serving version, its input schema",
            responses=errors(404))
async def describe_model(package: ModelDep, gateway: GatewayDep) -> dict:
    return await run_in_threadpool(_describe, gateway, package)


@router.get("/drift", summary="Input and prediction drift of a model vs its serving version's training data",
            responses=errors(404))
async def drift(gateway: GatewayDep, model: Annotated[str | None, Query()] = None) -> dict:
    name = model_named(gateway.models, model or gateway.default_model).name
    watch = gateway.pipeline.drift
    report = watch.report(name) if watch else None
    if report is None:
        return {"model": name, "status": "not watching yet (no traffic, or no reference for this version)"}
    return report
