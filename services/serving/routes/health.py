"""``GET /healthz``: 200 once Triton, every model's ensemble and every deployment are ready.

With ``rts up`` on this machine, the body also shows the processes its launcher supervises (Triton, the
listener): up or restarting, and how often each was restarted. A restarting listener does not make
the gateway unhealthy (requests are served); a restarting Triton does, through the readiness check."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.serving.deps import GatewayDep
from services.serving.responses import RETRY_AFTER, HealthBody, errors
from services.telemetry.supervision import read_status, status_path

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="200 once Triton and every deployment are ready, 503 with a reason otherwise",
            responses={200: {"model": HealthBody}, **errors(),
                       503: {"model": HealthBody, "description": "Not ready: the reason says why", "headers": RETRY_AFTER}})
async def healthz(gateway: GatewayDep) -> JSONResponse:
    ok, reason = await gateway.pipeline.health()
    body = {"status": "ok", "models": sorted(gateway.models)} if ok else {"status": "unavailable", "reason": reason}
    processes = read_status(status_path(gateway.settings))
    if processes is not None:
        body["processes"] = processes
    if ok:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
