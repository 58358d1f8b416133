"""What the gateway answers, as the OpenAPI document says it: the error bodies it really sends
(``middleware.error_response``) and the bodies of the routes that answer with a status of their own.

Every route lists every status it can return with ``responses=errors(...)`` (or ``oip_errors`` on
/v2); ``tests/unit/test_openapi_fuzz.py`` runs Schemathesis over the document and fails on any
status, content type or body the document does not declare. These models document; responses are
built directly (no response validation on the request path).

Usage::

    @router.get("/v1/models/{model}", responses=errors(404))
    async def describe_model(...): ...
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# ---- the error bodies -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="what went wrong, for programs: missing_field, unknown_model, body_too_large, ...")
    message: str = Field(description="what went wrong and where, for people")


class ErrorBody(BaseModel):
    """Every error outside /v2: ``{"error": {"code": ..., "message": ...}, "request_id": ...}``."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail
    request_id: str = Field(None, description="the request's X-Request-ID (absent only if the request had none yet)")


class OipErrorBody(BaseModel):
    """Every error on /v2, in the Open Inference Protocol's shape (a string, as tritonclient parses it)."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="what went wrong and where")
    code: str = Field(description="what went wrong, for programs (the same codes as /v1)")
    request_id: str = Field(None, description="the request's X-Request-ID")


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again (when the cause is temporary)",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "the scheme to authenticate with", "required": True,
                                         "schema": {"type": "string", "enum": ["Bearer"]}}}
ALLOW = {"Allow": {"description": "the methods the path takes", "schema": {"type": "string"}}}

WHAT = {
    400: "Bad input: the message names the instance, item or field and what was wrong with it",
    401: "Missing or wrong bearer token (Authorization: Bearer <RTS_ADMIN_TOKEN>)",
    404: "Unknown model, model version or record",
    408: "The request body did not arrive in time (stalled, or slower than 64 KiB/s after the first 10 s)",
    409: "The request conflicts with the state of the versions (nothing was changed)",
    413: "Too large: the body (RTS_LIMITS_MAX_BODY_BYTES), the batch (RTS_LIMITS_MAX_BATCH_ITEMS) or an image",
    415: "Unsupported Content-Type or Content-Encoding",
    422: "The request is not shaped as documented (body, path or query parameters)",
    431: "The request headers are too large (over 100 headers or 16 KiB in all)",
    500: "Internal error; the gateway log has the details",
    502: "Triton failed the request",
    503: "Not available now (Triton, the rollout controller, the Ray Jobs API, or the admin API without a token); "
         "Retry-After says when to try again where the cause is temporary",
}
HEADERS = {401: WWW_AUTHENTICATE, 503: RETRY_AFTER}


def errors(*statuses: int, body: type[BaseModel] = ErrorBody) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status it can fail with, with the body it really sends; 431 and 500
    always (any request can have too many headers or meet a bug)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, 431, 500}):
        out[status] = {"model": body, "description": WHAT[status]}
        if status in HEADERS:
            out[status]["headers"] = HEADERS[status]
    return out


def oip_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return errors(*statuses, body=OipErrorBody)


# ---- bodies of routes that answer with a status of their own -----------------------------------------

class HealthBody(BaseModel):
    status: str = Field(description="ok | unavailable")
    models: list[str] = Field(None, description="the served models (when ok)")
    reason: str = Field(None, description="why not ready (when unavailable)")
    processes: dict[str, Any] = Field(None, description="the processes `rts up` supervises on this machine, if any")


class OipServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipLive(BaseModel):
    live: bool


class OipReady(BaseModel):
    ready: bool
    reason: str = Field(None, description="why not ready (503)")


class OipModelReady(BaseModel):
    name: str
    ready: bool
    reason: str = Field(None, description="why not ready (503)")


class OipTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[OipTensorMetadata]
    outputs: list[OipTensorMetadata]


class OipOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] = Field(None, description="the values, row-major (absent when sent as binary)")
    parameters: dict[str, Any] = Field(None, description="binary_data_size when sent as binary")


class OipInferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str = Field(None, description="the request's id, when it had one")
    outputs: list[OipOutputTensor]


_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array", "description": "the values, row-major, flat or nested; BYTES as (base64) strings"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": {"type": "object"}}}},
    },
}


def infer_openapi() -> dict[str, Any]:
    """The request side of /v2 infer (the route reads the raw body: JSON, or the binary tensor extension)."""
    return {
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": INFER_REQUEST},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "description":
                                         "binary tensor extension: the JSON header (its length in "
                                         "Inference-Header-Content-Length), then each binary tensor"}}},
        "parameters": [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "binary tensor extension: the length of the JSON header at the start of the body"}],
    }


def infer_ok() -> dict[int | str, dict[str, Any]]:
    return {200: {"model": OipInferResponse,
                  "description": "The outputs: JSON, or (binary outputs asked for) the JSON header then the tensors",
                  "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
