"""The pipeline answers with the version the route names, and never fails a request for a version that
was retired and unloaded between a routing-table refresh and the call: production answers instead."""

from __future__ import annotations

import asyncio

import numpy as np

from services.errors import UnknownModel
from services.modelkit.discovery import load_package
from services.rollout.live import LiveStats
from services.rollout.routing import Route
from services.serving.pipeline import InferencePipeline
from services.serving.stages import LocalPostprocess, LocalPreprocess, PostprocessStage, PreprocessStage
from services.telemetry import metrics
from services.triton.client import InferResult

DIGITS = load_package("services.models.digits")
MODELS = {"digits": DIGITS}


class Triton:
    """Versions 1 (production, also the plain ensemble) and 2 are loaded; 3 was unloaded."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def infer(self, model, rows, version="", headers=None) -> InferResult:
        self.calls.append(version)
        if version == "3":
            raise UnknownModel(f"model 'digits__v3' version 3 is not served")
        scores = np.zeros((len(rows), 10), np.float32)
        scores[:, 4] = 1.0
        return InferResult({"probabilities": scores}, version or "1")


def predict(pipeline: InferencePipeline, version: str, pinned: bool = False):
    rows = [{"pixels": DIGITS.base_data().holdout.x[0].tolist()}]
    options = DIGITS.Options()
    instances = [DIGITS.Instance.model_validate(r) for r in rows]
    return asyncio.run(pipeline.predict("digits", instances, options, Route(version, pinned=pinned),
                                        request_id="r1"))


def test_a_routed_version_answers_and_a_gone_one_falls_back_to_production():
    metrics.reset_metrics("prometheus")
    triton, live = Triton(), LiveStats("test")
    pipeline = InferencePipeline(LocalPreprocess(PreprocessStage(MODELS)), triton,
                                 LocalPostprocess(PostprocessStage(MODELS)), models=MODELS, live=live)
    assert predict(pipeline, "2").version == "2" and triton.calls == ["2"]
    answer = predict(pipeline, "3")
    assert answer.version == "1" and triton.calls[1:] == ["3", ""]  # asked 3, production answered
    assert metrics.sample_value("rts_route_fallbacks_total", {"model": "digits"}) == 1
    taken = live.take()
    assert taken["versions"]["digits"]["1"]["requests"] == 1 and "3" not in taken["versions"]["digits"]


def test_a_version_the_caller_asked_for_is_never_answered_by_another():
    metrics.reset_metrics("prometheus")
    triton = Triton()
    pipeline = InferencePipeline(LocalPreprocess(PreprocessStage(MODELS)), triton,
                                 LocalPostprocess(PostprocessStage(MODELS)), models=MODELS)
    try:
        predict(pipeline, "3", pinned=True)
    except UnknownModel as exc:
        assert "version 3 is not served" in str(exc)
    else:
        raise AssertionError("a pinned version that is gone must be a 404, not production's answer")
    assert triton.calls == ["3"]
