"""Operator endpoints behind a bearer token: versions and lineage, start a run, roll back.

Set ``RTS_ADMIN_TOKEN`` (``make up`` makes one and prints it); without it these routes answer 503.
``Authorization: Bearer <token>`` on every call; wrong or missing token is 401.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, Field

from services.common.errors import InvalidInput, ServingError
from services.common.settings import Settings


class RollbackRequest(BaseModel):
    version: int = Field(ge=1, description="a complete published version to serve again")


class RetrainRequest(BaseModel):
    reason: str = Field("requested over the admin API", max_length=500)


def admin_router(settings: Settings) -> APIRouter:
    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        expected = settings.admin_token.get_secret_value() if settings.admin_token else ""
        if not expected:
            raise ServingError("the admin API is disabled: set RTS_ADMIN_TOKEN", status=503, code="admin_disabled")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            raise ServingError("missing or wrong bearer token", status=401, code="unauthorized")

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_token)])

    @router.get("/models", summary="Model versions with metrics and lineage; which one serves")
    def models() -> dict:
        from services.retraining.operations import list_versions

        return list_versions(settings)

    @router.post("/retrain", status_code=202, summary="Start a retraining run (a Ray Job) now")
    def retrain(body: RetrainRequest | None = None) -> dict:
        from services.retraining.operations import start_run

        return start_run(settings, (body or RetrainRequest()).reason, wait=False)

    @router.get("/runs/{run_id}", summary="A run's record: stages, timings, gates, outcome")
    def run(run_id: str) -> dict:
        from services.retraining.records import Records
        from services.storage import open_store

        record = Records(open_store(settings.data_uri)).run(run_id)
        if record is None:
            raise ServingError(f"no run {run_id!r}", status=404, code="unknown_run")
        return record

    @router.post("/rollback", summary="Serve an earlier version again, without a restart")
    def rollback(body: RollbackRequest) -> dict:
        from services.retraining.operations import rollback_to

        try:
            return rollback_to(settings, body.version)
        except ValueError as exc:
            raise InvalidInput(str(exc), status=409, code="bad_version") from None

    return router
