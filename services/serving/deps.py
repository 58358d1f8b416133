"""What a route gets from the gateway, as typed dependencies.

Usage::

    @router.get("/v1/models/{model}")
    def describe(package: ModelDep, gateway: GatewayDep) -> dict: ...
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Mapping

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.errors import ServingError
from services.modelkit import ModelPackage
from services.modelkit.discovery import model_named
from services.registry.publish import Registry
from services.rollout.live import LiveStats
from services.rollout.routing import PLAIN, Route, Router
from services.serving.pipeline import InferencePipeline
from services.settings import Settings
from services.triton.client import TritonClient


@dataclass
class Gateway:
    """Everything the routes share: settings, the served model packages, the pipeline, the registry, and
    the rollout side (the router that picks a version per request, the live stats, the controller)."""

    settings: Settings
    models: dict[str, ModelPackage]
    pipeline: InferencePipeline
    router: Router | None = None  # None: every request goes to the plain (production) ensemble
    live: LiveStats | None = None
    controller: Any = None  # the rollout controller's actor handle, when running in a Ray cluster
    default_model: str = field(init=False)

    def __post_init__(self) -> None:
        self.default_model = next(iter(self.models))

    @cached_property
    def registry(self) -> Registry:
        """Versions and rollbacks (admin, /v1/models); made on first use, off the predict path."""
        return Registry.open(self.settings, TritonClient(self.settings.triton.grpc_address))

    def route(self, model: str, headers: Mapping[str, str], request_id: str) -> Route:
        return self.router.choose(model, headers, request_id) if self.router is not None else PLAIN


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool,
# a thread hop that cost about 200 us per request here.
async def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _model(model: str, gateway: GatewayDep) -> ModelPackage:
    return model_named(gateway.models, model)


ModelDep = Annotated[ModelPackage, Depends(_model)]


# Documented as an HTTP bearer security scheme (Swagger's "Authorize"); checked by require_admin_token,
# never by FastAPI itself (auto_error=False: our 401 body, not FastAPI's 403).
admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                          description="RTS_ADMIN_TOKEN (`make up` makes one and prints it)")


async def require_admin_token(gateway: GatewayDep,
                              credentials: Annotated[HTTPAuthorizationCredentials | None, Security(admin_bearer)]) -> None:
    """Every /admin route: 503 while no token is set, 401 for a missing or wrong one.

    The token is compared in constant time, as bytes (hmac.compare_digest), and is never logged nor echoed.
    """
    token = gateway.settings.admin.token
    expected = token.get_secret_value() if token else ""
    if not expected:
        raise ServingError("the admin API is disabled: set RTS_ADMIN_TOKEN", status=503, code="admin_disabled")
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ServingError("missing or wrong bearer token", status=401, code="unauthorized")
