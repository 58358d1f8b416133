"""preprocess -> Triton -> postprocess, over stages that are local objects or Serve deployments."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from services.common.errors import ServingError
from services.observability import metrics
from services.observability.instrument import stage
from services.observability.tracing import triton_headers
from services.pipeline.stages import Item


class Stage(Protocol):
    async def call(self, method: str, *args: Any) -> Any: ...


class LocalStage:
    """Runs a stage object in this process (fused layout: no Serve hop)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    async def call(self, method: str, *args: Any) -> Any:
        result = getattr(self.target, method)(*args)
        return await result if inspect.isawaitable(result) else result


class HandleStage:
    """Calls a stage through a Serve DeploymentHandle (composed layout)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except ServingError:
            raise
        except Exception as exc:
            # Ray wraps a replica's exception; hand the user-facing one through unchanged.
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ServingError):
                raise cause from None
            raise


@dataclass
class Prediction:
    model: str
    version: str
    scores: np.ndarray
    predictions: list[dict]


class InferencePipeline:
    def __init__(self, preprocess: Stage, triton: Stage, postprocess: Stage, drift: Any = None) -> None:
        self.preprocess, self.triton, self.postprocess = preprocess, triton, postprocess
        self.drift = drift  # services.pipeline.drift_watch.DriftWatch, or None
        self._served: dict[str, str] = {}  # last version reported to rts_served_version, per model

    async def predict(self, model: str, items: Sequence[Item], top_k: int, version: str = "") -> Prediction:
        with stage("preprocess", model, batch_size=len(items)):
            features = await self.preprocess.call("run", model, list(items))
        with stage("triton", model) as span:
            # traceparent rides as gRPC metadata: Triton's own spans join this trace under this span.
            result = await self.triton.call("infer", model, features, version, triton_headers())
            span.set_attribute("rts.model_version", str(result["version"]))
        with stage("postprocess", model):
            predictions = await self.postprocess.call("run", model, result["scores"], top_k)
        if self._served.get(model) != result["version"]:  # a gauge: set it when it changes, not per request
            self._served[model] = result["version"]
            metrics.set_served_version(model, result["version"])
        if self.drift is not None:
            self.drift.observe(model, result["version"], features, result["scores"])
        return Prediction(model=result["model"], version=result["version"], scores=result["scores"],
                          predictions=predictions)

    async def health(self, timeout_s: float = 3.0) -> tuple[bool, str]:
        try:
            ok, reason = await asyncio.wait_for(self.triton.call("health"), timeout_s)
            if not ok:
                return False, reason
            for name, stage in (("Preprocess", self.preprocess), ("Postprocess", self.postprocess)):
                if not await asyncio.wait_for(stage.call("ready"), timeout_s):
                    return False, f"deployment {name} is not ready"
        except asyncio.TimeoutError:
            return False, f"a pipeline stage did not answer within {timeout_s:g}s"
        except Exception as exc:  # a replica that is down or restarting
            return False, f"a pipeline stage failed its health check: {type(exc).__name__}: {exc}"
        return True, "ok"
