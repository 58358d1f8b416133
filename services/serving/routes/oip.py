"""The Open Inference Protocol (KServe v2) on the gateway: the same pipeline as /v1, tensors in and out."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from services.errors import InvalidInput, UnknownModel
from services.modelkit import ModelPackage
from services.rollout.routing import Route
from services.serving import oip
from services.serving.deps import Gateway, GatewayDep, ModelDep
from services.serving.responses import (OipLive, OipModelMetadata, OipModelReady, OipReady, OipServerMetadata,
                                        infer_ok, infer_openapi, oip_errors)

router = APIRouter(prefix="/v2", tags=["open inference protocol"])

# Triton's model versions are positive integers; anything else names no version (and never reaches Triton).
VERSION = re.compile(r"[1-9][0-9]{0,9}")


def _check_version(package: ModelPackage, version: str | None) -> None:
    if version is not None and VERSION.fullmatch(version) is None:
        raise UnknownModel(f"model {package.name!r} has no version {version!r}; versions are positive integers")


@router.get("", summary="OIP server metadata", responses={200: {"model": OipServerMetadata}, **oip_errors()})
async def server_metadata() -> dict:
    return {"name": "raytriton-gateway", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="OIP liveness", responses={200: {"model": OipLive}, **oip_errors()})
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="OIP readiness: Triton and every deployment ready",
            responses={200: {"model": OipReady}, **oip_errors(), 503: {"model": OipReady, "description": "Not ready"}})
async def ready(gateway: GatewayDep) -> JSONResponse:
    ok, reason = await gateway.pipeline.health()
    return JSONResponse({"ready": ok, **({} if ok else {"reason": reason})}, status_code=200 if ok else 503)


async def _versions(gateway: Gateway, package: ModelPackage, version: str | None) -> list[str]:
    """The model's complete versions; a version asked for that is not one of them is a 404."""
    _check_version(package, version)
    described = await run_in_threadpool(gateway.registry.describe, package.name, package.family, False)
    versions = [str(v["version"]) for v in described["versions"]]
    if version is not None and version not in versions:
        raise UnknownModel(f"model {package.name!r} has no version {version!r}; versions: {versions}")
    return versions


@router.get("/models/{model}", summary="OIP model metadata",
            responses={200: {"model": OipModelMetadata}, **oip_errors(404)})
@router.get("/models/{model}/versions/{version}", summary="OIP model metadata",
            responses={200: {"model": OipModelMetadata}, **oip_errors(404)})
async def model_metadata(package: ModelDep, gateway: GatewayDep, version: str | None = None) -> dict:
    versions = await _versions(gateway, package, version)
    return oip.model_metadata(package, [version] if version else versions)


_READY = {200: {"model": OipModelReady}, **oip_errors(404),
          503: {"model": OipModelReady, "description": "Not ready"}}
_INFER = {**infer_ok(), **oip_errors(400, 404, 408, 413, 415, 502, 503)}


@router.get("/models/{model}/ready", summary="OIP model readiness", responses=_READY)
@router.get("/models/{model}/versions/{version}/ready", summary="OIP model readiness", responses=_READY)
async def model_ready(package: ModelDep, gateway: GatewayDep, version: str | None = None) -> JSONResponse:
    if version is not None:
        await _versions(gateway, package, version)
    ok, reason = await gateway.pipeline.health()
    return JSONResponse({"name": package.name, "ready": ok, **({} if ok else {"reason": reason})},
                        status_code=200 if ok else 503)


@router.post("/models/{model}/infer", summary="OIP inference through the same pre/post pipeline",
             responses=_INFER, openapi_extra=infer_openapi())
@router.post("/models/{model}/versions/{version}/infer", summary="OIP inference on one model version",
             responses=_INFER, openapi_extra=infer_openapi())
async def infer(request: Request, package: ModelDep, gateway: GatewayDep, version: str = "") -> Response:
    if version:
        _check_version(package, version)
    if request.headers.get("content-encoding") not in (None, "", "identity"):
        raise InvalidInput("compressed request bodies are not supported; send it uncompressed",
                           status=415, code="unsupported_encoding")
    body = await request.body()
    request.state.model = package.name
    parsed = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH), package,
                               gateway.settings.limits.max_batch_items)
    request.state.batch_size = len(parsed.inputs)
    request_id = request.state.request_id  # what X-Request-ID says, and what feedback names
    # A version in the path is that version's own ensemble; none: the model's routing picks one.
    route = Route(version, pinned=True) if version else gateway.route(package.name, request.headers, request_id)
    result = await gateway.pipeline.predict(package.name, parsed.inputs, package.Options(), route, request_id)
    request.state.model_version = result.version
    tensors = package.to_tensors(result.predictions, result.outputs)
    content, headers = oip.encode_response(package, result.version, parsed, tensors)
    return Response(content=content, headers=headers)
