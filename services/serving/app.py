"""The HTTP API of the gateway: /v1 (per model), the Open Inference Protocol (/v2), /healthz, /admin, /docs.

``create_app(gateway)`` builds the FastAPI app; the Serve ingress (``ray_apps/inference.py``)
mounts it. Routes live in ``services/serving/routes/``, one module per concern. Every error a user
can cause is a 4xx JSON body ``{"error": {"code": ..., "message": ...}}`` (on /v2 the OIP shape
``{"error": "...", "code": ...}``); Triton down is 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import InvalidInput, ServingError
from services.serving.deps import Gateway
from services.serving.middleware import BodySizeLimit, RequestId, error_response, is_oip_path
from services.serving.routes import admin, feedback, health, models, oip
from services.serving.routes.predict import predict_router
from services.telemetry.instrument import ObservabilityMiddleware, add_metrics_route

log = logging.getLogger(__name__)


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(
        title="Ray Serve + Triton inference gateway",
        version="0.1.0",
        description="preprocess -> Triton ensemble -> postprocess. Models: " + ", ".join(gateway.models),
        # Our ObservabilityMiddleware opens the ingress span (under Serve's span when Serve traces);
        # FastAPI's own span would take its parent from headers only and split the trace.
        telemetry={"tracing": False},
    )
    app.state.gateway = gateway
    app.add_middleware(BodySizeLimit, max_bytes=gateway.settings.limits.max_body_bytes)
    app.add_middleware(RequestId)
    app.add_middleware(ObservabilityMiddleware)  # outermost: sees every response, errors included
    add_metrics_route(app)
    install_error_handlers(app)
    app.include_router(predict_router(gateway.models))  # first: the hot routes match before any other
    app.include_router(health.router)
    app.include_router(feedback.router)
    app.include_router(models.router)
    app.include_router(oip.router)
    app.include_router(admin.router)
    return app


def install_error_handlers(app: FastAPI) -> None:
    def oip_format(request: Request) -> bool:
        return is_oip_path(request.url.path)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        request.state.error_code = exc.code
        return error_response(exc, getattr(request.state, "request_id", None), oip_format=oip_format(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error_code = "invalid_request"
        parts = ["/".join(str(p) for p in e.get("loc", ())) + ": " + e.get("msg", "") for e in exc.errors()]
        return error_response(InvalidInput("invalid request: " + "; ".join(parts), status=422, code="invalid_request"),
                              getattr(request.state, "request_id", None), oip_format=oip_format(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(ServingError(str(exc.detail), status=exc.status_code, code="http_error"),
                              getattr(request.state, "request_id", None), oip_format=oip_format(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(ServingError("internal error; the gateway log has the details"),
                              getattr(request.state, "request_id", None), oip_format=oip_format(request))
