"""The HTTP API: /v1/predict, the Open Inference Protocol (/v2/...), /healthz, /docs.

``create_app(pipeline, specs, settings)`` builds the FastAPI app; the Serve ingress
(``ray_apps/inference.py``) mounts it. Every error a user can cause is a 4xx JSON body
``{"error": {"code": ..., "message": ...}}``; Triton down is 503 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import InvalidInput, PayloadTooLarge, ServingError, UnknownModel
from services.common.settings import Settings
from services.gateway import oip
from services.gateway.admin import admin_router
from services.observability.instrument import ObservabilityMiddleware, add_metrics_route
from services.models.base import ModelSpec
from services.pipeline.pipeline import InferencePipeline
from services.pipeline.stages import Item

log = logging.getLogger(__name__)


class PredictionOut(BaseModel):
    label: Any = Field(description="Most likely class")
    confidence: float = Field(description="Probability of that class")
    top_k: list[dict] = Field(description="The k most likely classes with their probabilities")


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="Triton model version that answered")


class PredictResponse(BaseModel):
    predictions: list[PredictionOut]
    model: ModelRef
    request_id: str


class InstanceIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    image_b64: str | None = Field(None, description="A PNG/JPEG/BMP file, base64-encoded")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[InstanceIn] = Field(description="One entry per image: {image_b64} or {<array input>: [...]}")


class BodySizeLimit:
    """Refuse bodies over the limit from Content-Length, and cut off streamed bodies that grow past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            err = PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit",
                                  code="body_too_large")
            response = error_response(err, oip_format=scope.get("path", "").startswith("/v2"))
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"request body is larger than the {self.max_bytes}-byte limit",
                                          code="body_too_large")
            return message

        await self.app(scope, limited_receive, send)


class RequestId:
    """Every request has an X-Request-ID: the client's, Serve's, or one made here.

    Serve's proxy already adds the header to the request (and echoes it in the response), so under
    Serve this only reads it; outside Serve it makes one up and echoes it itself. Plain ASGI:
    BaseHTTPMiddleware costs about a tenth of the gateway's CPU per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                scope.setdefault("state", {})["request_id"] = value.decode("latin-1")
                return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        scope["headers"] = [*scope["headers"], (b"x-request-id", request_id.encode())]
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def error_response(err: ServingError, request_id: str | None = None, *, oip_format: bool = False) -> JSONResponse:
    """Our error body; on /v2 routes the OIP shape {"error": "<message>"} that tritonclient parses."""
    headers = {}
    if err.retry_after_s:
        headers["Retry-After"] = str(err.retry_after_s)
    body = {"error": err.message, "code": err.code} if oip_format else err.to_json()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=err.status, headers=headers)


def _is_oip(request: Request) -> bool:
    return request.url.path.startswith("/v2/") or request.url.path == "/v2"


def create_app(pipeline: InferencePipeline, specs: dict[str, ModelSpec], settings: Settings) -> FastAPI:
    default_model = next(iter(specs))
    app = FastAPI(
        title="Ray Serve + Triton inference gateway",
        version="0.1.0",
        description="preprocess -> Triton ensemble -> postprocess. Models: " + ", ".join(specs),
        # Our ObservabilityMiddleware opens the ingress span (under Serve's span when Serve traces);
        # FastAPI's own span would take its parent from headers only and split the trace.
        telemetry={"tracing": False},
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestId)
    app.add_middleware(ObservabilityMiddleware)  # outermost: sees every response, errors included
    add_metrics_route(app)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        request.state.error_code = exc.code
        return error_response(exc, getattr(request.state, "request_id", None), oip_format=_is_oip(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error_code = "invalid_request"
        parts = ["/".join(str(p) for p in e.get("loc", ())) + ": " + e.get("msg", "") for e in exc.errors()]
        return error_response(InvalidInput("invalid request: " + "; ".join(parts), status=422,
                                           code="invalid_request"), oip_format=_is_oip(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(ServingError(str(exc.detail), status=exc.status_code, code="http_error"),
                              oip_format=_is_oip(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(ServingError("internal error; the gateway log has the details"),
                              oip_format=_is_oip(request))

    def spec_for(name: str) -> ModelSpec:
        try:
            return specs[name]
        except KeyError:
            raise UnknownModel(f"no model named {name!r}; served models: {sorted(specs)}") from None

    # ---- health -------------------------------------------------------------------------------
    @app.get("/healthz", summary="200 once Triton and every deployment are ready, 503 with a reason otherwise")
    async def healthz() -> JSONResponse:
        ok, reason = await pipeline.health()
        if ok:
            return JSONResponse({"status": "ok", "models": sorted(specs)})
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503,
                            headers={"Retry-After": "2"})

    app.include_router(admin_router(settings))

    @app.get("/drift", summary="Input and prediction drift of each model vs its served version's training data")
    async def drift(model: Annotated[str, Query()] = default_model) -> dict:
        spec_for(model)
        watch = getattr(pipeline, "drift", None)
        report = watch.report(model) if watch else None
        if report is None:
            return {"model": model, "status": "not watching yet (no traffic, or no reference for this version)"}
        return report

    # ---- /v1 ----------------------------------------------------------------------------------
    async def predict_v1(request: Request, model: str, top_k: int | None) -> JSONResponse:
        spec = spec_for(model)
        k = spec.default_top_k if top_k is None else top_k
        if not 1 <= k <= len(spec.labels):
            raise InvalidInput(f"top_k must be between 1 and {len(spec.labels)}, got {k}", code="bad_top_k")
        request.state.model = spec.name
        items = await read_items(request, spec, settings)
        request.state.batch_size = len(items)
        result = await pipeline.predict(spec.name, items, k)
        request.state.model_version = result.version
        # Built directly: the shape is ours and fixed, re-validating it through the response
        # model costs CPU on every request. response_model stays on the routes for the docs.
        return JSONResponse({"predictions": result.predictions, "model": {"name": spec.name, "version": result.version},
                             "request_id": request.state.request_id})

    predict_doc = {
        "summary": "Classify one or more images",
        "description": "multipart/form-data with one or more `file` parts, or JSON "
        '`{"instances": [{"image_b64": "..."}, {"pixels": [[...8 rows of 8...]]}]}`.',
        "openapi_extra": {"requestBody": {"content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {"schema": PredictRequest.model_json_schema()},
        }}},
    }

    @app.post("/v1/predict", response_model=PredictResponse, **predict_doc)
    async def predict(request: Request, model: Annotated[str, Query()] = default_model,
                      top_k: Annotated[int | None, Query()] = None) -> JSONResponse:
        return await predict_v1(request, model, top_k)

    @app.post("/v1/models/{model}/predict", response_model=PredictResponse, **predict_doc)
    async def predict_model(request: Request, model: str,
                            top_k: Annotated[int | None, Query()] = None) -> JSONResponse:
        return await predict_v1(request, model, top_k)

    # ---- Open Inference Protocol (KServe v2) --------------------------------------------------
    @app.get("/v2", summary="OIP server metadata")
    async def server_metadata() -> dict:
        return {"name": "raytriton-gateway", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="OIP liveness")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", summary="OIP readiness: Triton and every deployment ready")
    async def ready() -> JSONResponse:
        ok, reason = await pipeline.health()
        return JSONResponse({"ready": ok, **({} if ok else {"reason": reason})}, status_code=200 if ok else 503)

    @app.get("/v2/models/{model}", summary="OIP model metadata")
    @app.get("/v2/models/{model}/versions/{version}", summary="OIP model metadata")
    async def model_metadata(model: str, version: str | None = None) -> dict:
        return oip.model_metadata(spec_for(model), [version] if version else [])

    @app.get("/v2/models/{model}/ready", summary="OIP model readiness")
    @app.get("/v2/models/{model}/versions/{version}/ready", summary="OIP model readiness")
    async def model_ready(model: str, version: str | None = None) -> JSONResponse:
        spec_for(model)
        ok, reason = await pipeline.health()
        return JSONResponse({"name": model, "ready": ok, **({} if ok else {"reason": reason})},
                            status_code=200 if ok else 503)

    @app.post("/v2/models/{model}/infer", summary="OIP inference through the same pre/post pipeline")
    @app.post("/v2/models/{model}/versions/{version}/infer", summary="OIP inference on one model version")
    async def infer(request: Request, model: str, version: str = "") -> Response:
        spec = spec_for(model)
        if request.headers.get("content-encoding") not in (None, "", "identity"):
            raise InvalidInput("compressed request bodies are not supported; send it uncompressed",
                               status=415, code="unsupported_encoding")
        body = await request.body()
        request.state.model = spec.name
        parsed = oip.parse_request(body, request.headers.get(oip.HEADER_LENGTH), spec, settings.max_batch_items)
        request.state.batch_size = len(parsed.items)
        result = await pipeline.predict(spec.name, parsed.items, len(spec.labels), version)
        request.state.model_version = result.version
        content, headers = oip.encode_response(spec, result.version, parsed, result.predictions, result.scores)
        return Response(content=content, headers=headers)

    return app


async def read_items(request: Request, spec: ModelSpec, settings: Settings) -> list[Item]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_batch_items + 1, max_fields=16)
        except PayloadTooLarge:
            raise
        except Exception as exc:
            raise InvalidInput(f"the multipart body could not be parsed: {exc}", code="bad_multipart") from None
        files = form.getlist("file")
        if not files:
            raise InvalidInput("send the images as multipart parts named 'file'", code="empty_batch")
        _check_count(len(files), settings)
        items = []
        for i, part in enumerate(files):
            if not isinstance(part, UploadFile):
                raise InvalidInput(f"part {i} named 'file' is a text field, not a file upload", code="not_a_file")
            items.append(Item("image", await part.read()))
        return items
    if content_type in ("application/json", ""):
        body = await request.body()
        if not body:
            raise InvalidInput("the request body is empty; send JSON {\"instances\": [...]} or multipart files",
                               code="empty_batch")
        try:
            payload = PredictRequest.model_validate_json(body)
        except ValueError as exc:
            raise InvalidInput(f"the JSON body is not a valid predict request: {_pydantic_summary(exc)}",
                               status=422, code="invalid_request") from None
        if not payload.instances:
            raise InvalidInput("'instances' is empty; send at least one", code="empty_batch")
        _check_count(len(payload.instances), settings)
        return [_instance_item(i, inst, spec) for i, inst in enumerate(payload.instances)]
    raise InvalidInput(f"unsupported Content-Type {content_type!r}; use multipart/form-data or application/json",
                       status=415, code="unsupported_media_type")


def _instance_item(index: int, inst: InstanceIn, spec: ModelSpec) -> Item:
    extra = dict(inst.model_extra or {})
    fields = (["image_b64"] if inst.image_b64 is not None else []) + list(extra)
    if fields == ["image_b64"]:
        try:
            return Item("image", base64.b64decode(inst.image_b64, validate=True))
        except ValueError:
            raise InvalidInput(f"instance {index}: image_b64 is not valid base64", code="bad_base64") from None
    if fields == [spec.array_input]:
        return Item("array", extra[spec.array_input])
    raise InvalidInput(f"instance {index} must have exactly one of 'image_b64' or '{spec.array_input}', "
                       f"got {fields or 'nothing'}", code="bad_instance")


def _check_count(n: int, settings: Settings) -> None:
    if n > settings.max_batch_items:
        raise PayloadTooLarge(f"the request has {n} items; the limit is {settings.max_batch_items}",
                              code="too_many_items")


def _pydantic_summary(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join("/".join(map(str, e["loc"])) + ": " + e["msg"] for e in errors()[:5])
        except Exception:
            pass
    return str(exc).splitlines()[0]

