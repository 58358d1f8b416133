"""``POST /v1/feedback``: the truth about an answer, joined to the logged prediction by its request id.

Body: ``{"request_id": "...", "label": 7}`` for classifiers (``"labels": [...]`` for a batch),
``{"request_id": "...", "value": 151.0}`` for regressors (``"values": [...]``). The rollout
controller joins it to what the version that answered predicted: live accuracy (or error) per
version, the bandit's rewards. 200 when joined, 202 when the prediction has not reached the
controller yet (it waits a minute for it); feedback for a request already joined is 200 ``duplicate``
(a retry counts once).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.errors import InvalidInput, ServingError
from services.modelkit.discovery import model_named
from services.serving.controller import call
from services.serving.deps import GatewayDep
from services.serving.middleware import REQUEST_ID_PATTERN
from services.serving.responses import errors

router = APIRouter(tags=["feedback"])


# "exactly one of label, labels, value, values" (the validator below), for the OpenAPI document too
_ONE_TRUTH = {"oneOf": [{"required": [k], "properties": {k: {"not": {"type": "null"}}}}
                        for k in ("label", "labels", "value", "values")]}


class FeedbackBody(BaseModel):
    # strict: a value is a JSON number (true is not 1.0), a request id a string
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_ONE_TRUTH)

    request_id: str = Field(min_length=1, max_length=200, pattern=REQUEST_ID_PATTERN,
                            description="the X-Request-ID of the answered request (as the answer's request_id says)")
    model: str | None = Field(None, description="the model that answered (checked when given)")
    label: Any = Field(None, description="the true class of a one-row request")
    labels: list[Any] | None = Field(None, description="the true classes of a batch, in order")
    value: float | None = Field(None, description="the true value of a one-row request (regression)")
    values: list[float] | None = Field(None, description="the true values of a batch, in order (regression)")

    @model_validator(mode="after")
    def _one_truth(self) -> "FeedbackBody":
        given = [k for k in ("label", "labels", "value", "values") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"send exactly one of label, labels, value or values; got {given or 'none'}")
        return self

    @property
    def truth(self) -> Any:
        for key in ("label", "labels", "value", "values"):
            if getattr(self, key) is not None:
                return getattr(self, key)


@router.post("/v1/feedback", summary="Join the truth to an answered request (live accuracy per version)",
             responses={202: {"description": "Pending: the prediction has not reached the rollout controller yet"},
                        **errors(400, 404, 408, 413, 422, 503)})
async def feedback(body: FeedbackBody, gateway: GatewayDep) -> JSONResponse:
    if body.model is not None:
        model_named(gateway.models, body.model)
    record = gateway.live.recent(body.request_id) if gateway.live is not None else None
    if record is not None and body.model is not None and record[0] != body.model:
        raise InvalidInput(f"request {body.request_id!r} was answered by {record[0]!r}, not {body.model!r}",
                           code="wrong_model")
    if record is not None:
        package = gateway.models[record[0]]
        kind = "label" if package.task.kind == "classification" else "value"
        if (kind == "label") != (body.label is not None or body.labels is not None):
            raise InvalidInput(f"model {record[0]!r} is a {package.task.kind} model: send {kind}/{kind}s",
                               code="wrong_truth")
    if gateway.controller is None:
        raise ServingError("feedback needs the rollout controller, which runs in the Ray cluster",
                           status=503, code="no_controller")
    result = await call(gateway.controller.feedback.remote(body.request_id, body.truth, body.model, record))
    return JSONResponse(result, status_code=202 if result["status"] == "pending" else 200)
