"""preprocess -> Triton (the version the route names) -> postprocess, over typed stage clients.

Stage timing lives here, once (``telemetry.instrument.stage``: a span and ``rts_stage_seconds``),
so no model package carries metrics code. So does what the rollout needs to know of each request:
which version answered, how long it took, whether it failed, what it predicted (for feedback), and,
for a request mirrored to a shadow version, that version's answer: off the response path, in a task
of its own, bounded in number, so the shadow never delays or fails the user's answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel

from services.errors import ServingError
from services.modelkit import ModelPackage
from services.rollout.live import LiveStats
from services.rollout.routing import PLAIN, Fault, Route
from services.serving.drift_watch import DriftWatch
from services.serving.stages import Inference, Postprocessor, Preprocessor
from services.telemetry import metrics
from services.telemetry.instrument import stage
from services.telemetry.tracing import TraceBudget, triton_headers

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    model: str
    version: str
    outputs: dict[str, np.ndarray]  # the ensemble's raw outputs, by name
    predictions: list[dict]  # postprocessed, one per input


class InjectedFault(ServingError):
    status = 503
    code = "injected_fault"


class InferencePipeline:
    def __init__(self, preprocess: Preprocessor, triton: Inference, postprocess: Postprocessor,
                 models: dict[str, ModelPackage], drift: DriftWatch | None = None,
                 live: LiveStats | None = None, triton_traces: TraceBudget | None = None) -> None:
        self.preprocess, self.triton, self.postprocess = preprocess, triton, postprocess
        self.models, self.drift, self.live = models, drift, live
        self.triton_traces = triton_traces  # how many sampled requests a second Triton traces too
        self._served: dict[str, str] = {}  # last version reported to rts_served_version, per model
        self._mirrors: set[asyncio.Task] = set()

    async def predict(self, model: str, inputs: Sequence[Any], options: BaseModel, route: Route = PLAIN,
                      request_id: str = "") -> Prediction:
        with stage("preprocess", model, batch_size=len(inputs)):
            rows = await self.preprocess.run(model, inputs)
        started = time.perf_counter()
        try:
            if route.fault is not None:
                await _inject(route.fault)
            with stage("triton", model) as span:
                # traceparent rides with the call only for sampled requests: Triton's spans join this trace.
                headers = triton_headers(budget=self.triton_traces)
                try:
                    result = await self.triton.infer(model, rows, route.version, headers)
                except ServingError as exc:
                    if not (route.version and not route.pinned and exc.code == "unknown_model"):
                        raise
                    # The version this replica's table routed to was retired and unloaded since (the table is
                    # refreshed once a second): production answers instead of failing the request.
                    log.info("%s version %s is gone; production answers", model, route.version)
                    metrics.record_route_fallback(model)
                    result = await self.triton.infer(model, rows, "", headers)
                span.set_attribute("rts.model_version", str(result.version))
        except ServingError as exc:
            if self.live is not None and exc.status >= 500 and route.version:
                self.live.request(model, route.version, ok=False, latency_s=time.perf_counter() - started)
            raise
        with stage("postprocess", model):
            predictions = await self.postprocess.run(model, result.outputs, options)
        if self._served.get(model) != result.version:  # a gauge: set it when it changes, not per request
            self._served[model] = result.version
            metrics.set_served_version(model, result.version)
        if self.live is not None:
            self.live.request(model, result.version, ok=True, latency_s=time.perf_counter() - started)
            if request_id:
                self.live.prediction(request_id, model, result.version, self._predicted(model, result.outputs), rows)
        if route.shadow is not None and route.shadow != result.version:
            self._mirror(model, rows, route, result.outputs)
        if self.drift is not None:
            self.drift.observe(model, result.version, rows, result.outputs)
        return Prediction(model, result.version, result.outputs, predictions)

    def _predicted(self, model: str, outputs: dict[str, np.ndarray]) -> list:
        """The answer per row, as feedback names it: class labels, or values."""
        package = self.models[model]
        values = package.task.predicted(outputs[package.family.config.outputs[0].name])
        if package.task.kind == "classification":
            labels = package.task.labels
            return [labels[int(i)] for i in values]
        return [round(float(v), 6) for v in values]

    # ---- shadow ---------------------------------------------------------------------------------
    def _mirror(self, model: str, rows: np.ndarray, route: Route, primary: dict[str, np.ndarray]) -> None:
        if len(self._mirrors) >= route.max_in_flight:
            if self.live is not None:
                self.live.shadow_skipped(model, route.shadow)
            return
        task = asyncio.get_running_loop().create_task(self._shadow(model, rows, route, primary))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow(self, model: str, rows: np.ndarray, route: Route, primary: dict[str, np.ndarray]) -> None:
        version = route.shadow
        started = time.perf_counter()
        ok, disagree = True, None
        try:
            if route.shadow_fault is not None:
                await _inject(route.shadow_fault)
            result = await self.triton.infer(model, rows, version, {})
            disagree = self._disagree(model, primary, result.outputs, route.tolerance)
            if self.drift is not None:
                self.drift.observe(model, version, rows, result.outputs, answered=False)
        except Exception:  # noqa: BLE001 - the shadow's failure is evidence about it, never the user's problem
            ok = False
        if self.live is not None:
            self.live.shadow(model, version, ok, time.perf_counter() - started, disagree)

    def _disagree(self, model: str, primary: dict[str, np.ndarray], shadow: dict[str, np.ndarray],
                  tolerance: float) -> bool:
        package = self.models[model]
        name = package.family.config.outputs[0].name
        a, b = package.task.predicted(primary[name]), package.task.predicted(shadow[name])
        if package.task.kind == "classification":
            return bool((a != b).any())
        scale = np.maximum(np.abs(a), 1e-9)
        return bool((np.abs(a - b) / scale > tolerance).any())

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


async def _inject(fault: Fault) -> None:
    """A fault an operator injected on purpose (rts models fault): extra latency, or a share of failures."""
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.error_rate and random.random() < fault.error_rate:
        raise InjectedFault("injected fault: this version fails a share of requests on purpose "
                            "(rts models fault ... --error-rate 0 ends it)", retry_after_s=1)
