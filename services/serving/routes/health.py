"""``GET /healthz``: 200 once Triton, every model's ensemble and every deployment are ready."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.serving.deps import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 once Triton and every deployment are ready, 503 with a reason otherwise")
async def healthz(gateway: GatewayDep) -> JSONResponse:
    ok, reason = await gateway.pipeline.health()
    if ok:
        return JSONResponse({"status": "ok", "models": sorted(gateway.models)})
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503, headers={"Retry-After": "2"})
