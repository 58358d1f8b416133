"""preprocess -> Triton -> postprocess, over typed stage clients (local objects or Serve deployments).

Stage timing lives here, once (``telemetry.instrument.stage``: a span and ``rts_stage_seconds``),
so no model package carries metrics code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel

from services.serving.drift_watch import DriftWatch
from services.serving.stages import Inference, Postprocessor, Preprocessor
from services.telemetry import metrics
from services.telemetry.instrument import stage
from services.telemetry.tracing import triton_headers


@dataclass
class Prediction:
    model: str
    version: str
    outputs: dict[str, np.ndarray]  # the ensemble's raw outputs, by name
    predictions: list[dict]  # postprocessed, one per input


class InferencePipeline:
    def __init__(self, preprocess: Preprocessor, triton: Inference, postprocess: Postprocessor,
                 drift: DriftWatch | None = None) -> None:
        self.preprocess, self.triton, self.postprocess = preprocess, triton, postprocess
        self.drift = drift
        self._served: dict[str, str] = {}  # last version reported to rts_served_version, per model

    async def predict(self, model: str, inputs: Sequence[Any], options: BaseModel, version: str = "") -> Prediction:
        with stage("preprocess", model, batch_size=len(inputs)):
            rows = await self.preprocess.run(model, inputs)
        with stage("triton", model) as span:
            # traceparent rides with the call only for sampled requests: Triton's spans join this trace.
            result = await self.triton.infer(model, rows, version, triton_headers())
            span.set_attribute("rts.model_version", str(result.version))
        with stage("postprocess", model):
            predictions = await self.postprocess.run(model, result.outputs, options)
        if self._served.get(model) != result.version:  # a gauge: set it when it changes, not per request
            self._served[model] = result.version
            metrics.set_served_version(model, result.version)
        if self.drift is not None:
            self.drift.observe(model, result.version, rows, result.outputs)
        return Prediction(model, result.version, result.outputs, predictions)

    async def health(self, timeout_s: float = 3.0) -> tuple[bool, str]:
        try:
            ok, reason = await asyncio.wait_for(self.triton.health(), timeout_s)
            if not ok:
                return False, reason
            for name, client in (("Preprocess", self.preprocess), ("Postprocess", self.postprocess)):
                if not await asyncio.wait_for(client.ready(), timeout_s):
                    return False, f"deployment {name} is not ready"
        except asyncio.TimeoutError:
            return False, f"a pipeline stage did not answer within {timeout_s:g}s"
        except Exception as exc:  # a replica that is down or restarting
            return False, f"a pipeline stage failed its health check: {type(exc).__name__}: {exc}"
        return True, "ok"
