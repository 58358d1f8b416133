"""Requests that arrive together reach Triton together: one call for many requests, with no waiting.

``BatchingInference`` wraps the pipeline's Triton client. A request goes out at once while fewer than
``in_flight`` calls for its model version are on their way, so one request at a time is never held back.
Requests that arrive while those calls are out queue up, and each call that comes back sends everything
that queued meanwhile as one call, up to the ensemble's ``max_batch_size`` rows. Under load, batches form
by themselves and grow with the load; with no load nothing changes.

What a batch saves, per request: the gRPC call (about 0.1 ms of the replica's CPU on 2 cores) and
Triton's own per-call work (its scheduler and each Python-backend step), which cost more than the rows.
A batch's outputs are cut back into each request's rows; a failed call fails each request of it with the
same error (Triton's errors are about the model or the server, never about one request's rows: those
are checked before). Requests that carry a sampled trace context go alone: Triton traces a call under
one parent only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from services.modelkit import ModelPackage
from services.serving.stages import Inference
from services.telemetry import metrics
from services.telemetry.tracing import sampled
from services.triton.client import InferResult

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    rows: np.ndarray
    answer: asyncio.Future


@dataclass
class _Lane:
    """The calls of one model version: how many are out, and the requests waiting for the next one."""

    in_flight: int = 0
    waiting: deque[_Waiting] = field(default_factory=deque)


class BatchingInference:
    def __init__(self, inner: Inference, models: Mapping[str, ModelPackage], *, max_rows: int = 64,
                 in_flight: int = 1) -> None:
        self.inner, self.in_flight = inner, max(1, in_flight)
        # Never more rows in one call than the ensemble takes (its config.pbtxt max_batch_size).
        self.max_rows = {name: max(1, min(max_rows, p.family.config.max_batch_size or max_rows))
                         for name, p in models.items()}
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._tasks: set[asyncio.Task] = set()

    async def infer(self, model: str, rows: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> InferResult:
        if headers and sampled(headers):
            return await self.inner.infer(model, rows, version, headers)
        lane = self._lanes.setdefault((model, version), _Lane())
        if lane.in_flight < self.in_flight and not lane.waiting:
            lane.in_flight += 1
            metrics.record_triton_batch(model, 1)
            try:
                return await self.inner.infer(model, rows, version, headers)
            finally:
                lane.in_flight -= 1
                self._send_waiting(model, version, lane)
        answer = asyncio.get_running_loop().create_future()
        lane.waiting.append(_Waiting(rows, answer))
        return await answer

    async def health(self) -> tuple[bool, str]:
        return await self.inner.health()

    def _send_waiting(self, model: str, version: str, lane: _Lane) -> None:
        limit = self.max_rows.get(model, 1)
        while lane.waiting and lane.in_flight < self.in_flight:
            batch, rows = [], 0
            while lane.waiting and (not batch or rows + len(lane.waiting[0].rows) <= limit):
                item = lane.waiting.popleft()
                if item.answer.done():  # its request was cancelled (the client went away)
                    continue
                batch.append(item)
                rows += len(item.rows)
            if not batch:
                continue
            lane.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(model, version, lane, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, model: str, version: str, lane: _Lane, batch: list[_Waiting]) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
            metrics.record_triton_batch(model, len(batch))
            result = await self.inner.infer(model, rows, version, None)
        except BaseException as exc:  # noqa: BLE001 - every waiting request gets the call's own error
            for item in batch:
                if not item.answer.done():
                    item.answer.set_exception(exc) if isinstance(exc, Exception) else item.answer.cancel()
            if not isinstance(exc, Exception):
                raise
        else:
            start = 0
            for item in batch:
                end = start + len(item.rows)
                if not item.answer.done():
                    item.answer.set_result(InferResult({name: out[start:end] for name, out in result.outputs.items()},
                                                       result.version))
                start = end
        finally:
            lane.in_flight -= 1
            self._send_waiting(model, version, lane)
