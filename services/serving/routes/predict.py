"""``POST /v1/models/<model>/predict`` (one route per served model, documented with its own schema)
and ``POST /v1/predict?model=...`` (the first model by default).

Bodies: ``{"instances": [...]}`` (JSON, each instance as the model's ``Instance``), or multipart
parts named ``file`` for models that take files. Query options are the model's ``Options``
(``top_k`` for classifiers). Answers ``{"predictions": [...], "model": {"name", "version"}, "request_id"}``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Union

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.datastructures import UploadFile

from services.errors import InvalidInput, PayloadTooLarge, ServingError, UnknownModel
from services.modelkit import ModelPackage, invalid_instance
from services.modelkit.discovery import model_named
from services.serving.deps import Gateway, GatewayDep
from services.serving.middleware import error_response
from services.serving.responses import errors
from services.settings import LimitsSettings


class ModelRef(BaseModel):
    name: str
    version: str = Field(description="Triton model version that answered")


@lru_cache(maxsize=None)
def request_body(package: type[ModelPackage]) -> type[BaseModel]:
    return create_model(f"{package.__name__}PredictRequest", __config__=ConfigDict(extra="forbid"),
                        instances=(list[package.Instance], Field(description="one entry per row to predict")))


@lru_cache(maxsize=None)
def response_body(package: type[ModelPackage]) -> type[BaseModel]:
    return create_model(f"{package.__name__}PredictResponse", predictions=(list[package.task.Prediction], ...),
                        model=(ModelRef, ...), request_id=(str, ...))


async def read_inputs(request: Request, package: ModelPackage, limits: LimitsSettings) -> list[Any]:
    """The request's instances (validated) or uploaded files (bytes), in order."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        if not package.accepts_files:
            raise InvalidInput(f"model {package.name!r} takes JSON instances, not file uploads; send "
                               "application/json {\"instances\": [...]}", status=415, code="unsupported_media_type")
        try:
            form = await request.form(max_files=limits.max_batch_items, max_fields=16)
        except ServingError:  # the body's own limits (413 too large, 408 too slow) say so themselves
            raise
        except Exception as exc:  # Starlette's parser errors (an HTTPException from request.form)
            if "Too many files" in str(getattr(exc, "detail", exc)):
                raise PayloadTooLarge(f"the request has more than {limits.max_batch_items} files; the limit is "
                                      f"{limits.max_batch_items}", code="too_many_items") from None
            raise InvalidInput(f"the multipart body could not be parsed: {getattr(exc, 'detail', exc)}",
                               code="bad_multipart") from None
        files = form.getlist("file")
        if not files:
            raise InvalidInput("send the files as multipart parts named 'file'", code="empty_batch")
        _check_count(len(files), limits)
        inputs = []
        for i, part in enumerate(files):
            if not isinstance(part, UploadFile):
                raise InvalidInput(f"part {i} named 'file' is a text field, not a file upload", code="not_a_file")
            inputs.append(await part.read())
        return inputs
    if content_type in ("application/json", ""):
        body = await request.body()
        if not body:
            raise InvalidInput('the request body is empty; send JSON {"instances": [...]}'
                               + (" or multipart files" if package.accepts_files else ""), code="empty_batch")
        try:
            payload = request_body(type(package)).model_validate_json(body)
        except ValidationError as exc:
            raise _body_error(exc) from None
        if not payload.instances:
            raise InvalidInput("'instances' is empty; send at least one", code="empty_batch")
        _check_count(len(payload.instances), limits)
        return payload.instances
    raise InvalidInput(f"unsupported Content-Type {content_type!r}; use application/json"
                       + (" or multipart/form-data" if package.accepts_files else ""),
                       status=415, code="unsupported_media_type")


def _body_error(exc: ValidationError) -> InvalidInput:
    """An instance's problem is a 400 naming it; a body that is not {"instances": [...]} is a 422."""
    first = exc.errors()[0]
    loc = first.get("loc", ())
    if len(loc) >= 2 and loc[0] == "instances" and isinstance(loc[1], int) and first["type"] != "json_invalid":
        inner = [dict(e, loc=tuple(e["loc"][2:])) for e in exc.errors() if tuple(e["loc"][:2]) == tuple(loc[:2])]
        return invalid_instance(inner, loc[1])
    parts = ["/".join(str(p) for p in e.get("loc", ())) + ": " + e.get("msg", "") for e in exc.errors()[:5]]
    return InvalidInput("the JSON body is not a valid predict request: " + "; ".join(parts), status=422,
                        code="invalid_request")


def _check_count(n: int, limits: LimitsSettings) -> None:
    if n > limits.max_batch_items:
        raise PayloadTooLarge(f"the request has {n} items; the limit is {limits.max_batch_items}",
                              code="too_many_items")


def read_options(request: Request, package: ModelPackage, ignore: tuple[str, ...] = ()) -> BaseModel:
    query = {k: v for k, v in request.query_params.items() if k not in ignore}
    try:
        return package.Options.model_validate(query)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error.get("loc", ())) or "option"
        known = list(package.Options.model_fields)
        if error["type"] == "extra_forbidden":
            raise InvalidInput(f"unknown query option {name!r}; model {package.name!r} takes {known or 'none'}",
                               code="unknown_option") from None
        raise InvalidInput(f"query option {name!r}: {error['msg']}", code=f"bad_{name}") from None


async def predict(request: Request, gateway: Gateway, package: ModelPackage, ignore: tuple[str, ...] = ()) -> JSONResponse:
    options = read_options(request, package, ignore)
    request.state.model = package.name
    inputs = await read_inputs(request, package, gateway.settings.limits)
    request.state.batch_size = len(inputs)
    request_id = request.state.request_id
    route = gateway.route(package.name, request.headers, request_id)
    result = await gateway.pipeline.predict(package.name, inputs, options, route, request_id)
    request.state.model_version = result.version
    # Built directly: the shape is ours and fixed, re-validating it through the response model costs
    # CPU on every request. response_model stays on the routes for the docs.
    return JSONResponse({"predictions": result.predictions, "model": {"name": package.name, "version": result.version},
                         "request_id": request_id})


def _inline_refs(schema: dict) -> dict:
    """The schema with its ``#/$defs/...`` references replaced by the definitions (kept in ``$defs`` too).

    Inside an OpenAPI document such a reference points at the document's root, where there is no
    ``$defs``: tools that follow it (client generators, Schemathesis) found no instance schema.
    """
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/") and ref[8:] in defs and ref not in seen:
                return walk({**defs[ref[8:]], **{k: v for k, v in node.items() if k != "$ref"}}, (*seen, ref))
            return {k: (v if k == "$defs" else walk(v, seen)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        return node

    return walk(schema)


def _openapi(package: ModelPackage, model_param: dict[str, ModelPackage] | None = None) -> dict:
    """The request side, as the route reads it by hand: the model's JSON body (the batch limit and "not
    empty" said in the document only: they are checked in read_inputs, with their own codes), file parts
    for models that take files, the model's query options; ``?model=`` on /v1/predict."""
    limit = package.limits.max_batch_items
    body = _inline_refs(request_body(type(package)).model_json_schema())
    body["properties"]["instances"].update(minItems=1, maxItems=limit)
    content: dict[str, Any] = {"application/json": {"schema": body}}
    if package.accepts_files:
        content["multipart/form-data"] = {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "minItems": 1, "maxItems": limit,
                     "items": {"type": "string", "format": "binary"},
                     "description": "one image file per part (PNG, JPEG, BMP)"}}}}
    options = package.Options.model_json_schema().get("properties", {})
    parameters = [{"name": name, "in": "query", "required": False, "schema": schema,
                   "description": schema.get("description", "")} for name, schema in options.items()]
    if model_param is not None:
        parameters.insert(0, {"name": "model", "in": "query", "required": False,
                              "schema": {"type": "string", "enum": list(model_param), "default": package.name},
                              "description": "the model to ask (the body and options are then that model's: see "
                                             "/v1/models/{model}/predict)"})
    return {"requestBody": {"required": True, "content": content}, "parameters": parameters}


def _endpoint(package: ModelPackage) -> Callable:
    async def endpoint(request: Request, gateway: GatewayDep) -> JSONResponse:
        return await predict(request, gateway, package)

    return endpoint


# What a predict route can answer besides 200: bad input (400, 413, 415, 422), a body too slow (408), a
# version Triton does not serve (404), Triton's own failures (502) and absence (503).
PREDICT_ERRORS = errors(400, 404, 408, 413, 415, 422, 502, 503)


def predict_router(models: dict[str, ModelPackage]) -> APIRouter:
    router = APIRouter(tags=["predict"])
    default = next(iter(models))
    answers = tuple(response_body(type(p)) for p in models.values())
    any_answer = Union[answers] if len(answers) > 1 else answers[0]  # noqa: UP007 - a runtime union of models

    @router.post("/v1/predict", summary=f"Predict with the model named by ?model= (default {default!r})",
                 openapi_extra=_openapi(models[default], model_param=models),
                 responses={200: {"model": any_answer, "description": "The predictions of the model asked for"},
                            **PREDICT_ERRORS})
    async def predict_default(request: Request, gateway: GatewayDep) -> JSONResponse:
        package = model_named(gateway.models, request.query_params.get("model", gateway.default_model))
        return await predict(request, gateway, package, ignore=("model",))

    for package in models.values():
        router.add_api_route(f"/v1/models/{package.name}/predict", _endpoint(package), methods=["POST"],
                             response_model=response_body(type(package)), openapi_extra=_openapi(package),
                             responses=PREDICT_ERRORS,
                             summary=f"Predict with {package.name} ({package.task.kind})",
                             name=f"predict_{package.name}")

    @router.post("/v1/models/{model}/predict", include_in_schema=False)
    async def unknown(model: str, gateway: GatewayDep) -> JSONResponse:
        raise UnknownModel(f"no model named {model!r}; served models: {sorted(gateway.models)}")

    return router


class FastPredict:
    """The predict routes, answered without FastAPI's routing, dependency solving and exception layers.

    Plain ASGI, the innermost of the gateway's middlewares (request id, observability and body limits still
    wrap it). ``POST`` to a documented predict path runs the same ``predict`` as the routes above and answers
    the same bodies and errors; the route object goes into the scope, as Starlette's router would put it, for
    the metrics' route label. Every other request, and a model name no route serves, goes on to FastAPI.
    Measured with ``loadtests/bench.py``: see loadtests/README.md.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway, routes: list) -> None:
        self.app, self.gateway = app, gateway
        self._routes = routes  # the predict router's routes
        self._paths: dict[str, tuple[ModelPackage | None, Any]] | None = None

    def _lookup(self) -> dict[str, tuple[ModelPackage | None, Any]]:
        by_path = {getattr(r, "path", None): r for r in self._routes if "POST" in (getattr(r, "methods", None) or ())}
        paths = {"/v1/predict": (None, by_path["/v1/predict"])}
        for name, package in self.gateway.models.items():
            paths[f"/v1/models/{name}/predict"] = (package, by_path[f"/v1/models/{name}/predict"])
        return paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if self._paths is None:
                self._paths = self._lookup()
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root + "/"):  # under a Serve route_prefix, as Starlette's router reads it
                path = path[len(root):]
            hit = self._paths.get(path)
            if hit is not None:
                return await self._predict(scope, receive, send, *hit)
        await self.app(scope, receive, send)

    async def _predict(self, scope: Scope, receive: Receive, send: Send, package: ModelPackage | None,
                       route: Any) -> None:
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            if package is None:  # /v1/predict: ?model= names it, else the first model
                chosen = model_named(self.gateway.models, request.query_params.get("model", self.gateway.default_model))
                response = await predict(request, self.gateway, chosen, ignore=("model",))
            else:
                response = await predict(request, self.gateway, package)
        except ServingError as exc:
            request.state.error_code = exc.code
            response = error_response(exc, getattr(request.state, "request_id", None))
        await response(scope, receive, send)
