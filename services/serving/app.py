"""The HTTP API of the gateway: /v1 (per model), the Open Inference Protocol (/v2), /healthz, /admin, /docs.

``create_app(gateway)`` builds the FastAPI app; the Serve ingress (``ray_apps/inference.py``)
mounts it. Routes live in ``services/serving/routes/``, one module per concern. Every error a user
can cause is a 4xx JSON body ``{"error": {"code": ..., "message": ...}}`` (on /v2 the OIP shape
``{"error": "...", "code": ...}``); Triton down is 503 with ``Retry-After``. Every route documents
every status it can return, with these bodies (``services/serving/responses.py``); Schemathesis
holds the app to its document (tests/unit/test_openapi_fuzz.py).

Hostile input: a bad ``X-Request-ID`` is replaced, an untrusted trace context dropped, oversized headers
are 431 (``middleware.RequestId``); bodies over the limit are 413 and bodies that stall or trickle 408
(``middleware.BodySizeLimit``); model names, versions and run ids never reach storage unchecked, and
storage refuses any key that could leave the store (``services.storage.check_key``).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.errors import InvalidInput, ServingError
from services.serving.deps import Gateway
from services.serving.middleware import BodySizeLimit, RequestId, error_response, is_oip_path
from services.serving.routes import admin, feedback, health, models, oip
from services.serving.routes.predict import FastPredict, predict_router
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
    predict = predict_router(gateway.models)
    app.add_middleware(FastPredict, gateway=gateway, routes=predict.routes)  # innermost: the hot routes
    app.add_middleware(BodySizeLimit, max_bytes=gateway.settings.limits.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware)  # sees every response, errors included
    app.add_middleware(RequestId)  # outermost: spans, logs and handlers only see a valid id and trace context
    add_metrics_route(app)
    install_error_handlers(app)
    app.include_router(predict)  # first: the hot routes match before any other
    app.include_router(health.router)
    app.include_router(feedback.router)
    app.include_router(models.router)
    app.include_router(oip.router)
    app.include_router(admin.router)
    _document_model_names(app, list(gateway.models))
    return app


def _document_model_names(app: FastAPI, names: list[str]) -> None:
    """Every ``{model}`` path parameter lists the served models (``ModelDep`` is shared by every app, the
    model names are this app's); any other name is still a 404."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            for item in generate()["paths"].values():
                for operation in item.values():
                    for parameter in operation.get("parameters", ()):
                        if parameter.get("in") == "path" and parameter.get("name") == "model":
                            parameter["schema"] = {**parameter.get("schema", {}), "enum": names}
        return app.openapi_schema

    app.openapi = openapi


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: dict) -> str:
    """Every method some route takes at this path (Starlette's 405 names the methods of one route only)."""
    allowed = [m for m in METHODS
               if any(route.matches({**scope, "method": m})[0] == Match.FULL for route in app.router.routes)]
    return ", ".join(allowed)


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
        if isinstance(exc.__cause__, ServingError):
            # FastAPI turns whatever stops it reading a JSON body into "400 There was an error parsing the
            # body"; a body over the limit (413) or too slow (408) says what it is.
            return await _serving_error(request, exc.__cause__)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: Allow lists every method of the path, not only one route's
            headers["Allow"] = allowed_methods(app, request.scope)
        return error_response(ServingError(str(exc.detail), status=exc.status_code, code="http_error"),
                              getattr(request.state, "request_id", None), oip_format=oip_format(request),
                              headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(ServingError("internal error; the gateway log has the details"),
                              getattr(request.state, "request_id", None), oip_format=oip_format(request))
