"""Concurrent requests reach Triton together (services/serving/batching.py), and nobody waits for it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from services.errors import UpstreamUnavailable
from services.serving.batching import BatchingInference
from services.triton.client import InferResult


class SlowTriton:
    """Answers each row with its own value times ten, after a gate the test opens."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[int, str, dict | None]] = []
        self.gate = asyncio.Event()
        self.fail = fail

    async def infer(self, model, rows, version="", headers=None) -> InferResult:
        self.calls.append((len(rows), version, headers))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return InferResult({"out": rows * 10, "other": rows + 1}, version or "1")

    async def health(self):
        return True, "ok"


def models(max_batch_size: int = 64) -> dict:
    config = SimpleNamespace(max_batch_size=max_batch_size)
    return {"m": SimpleNamespace(family=SimpleNamespace(config=config))}


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def send(batching: BatchingInference, *requests: np.ndarray, version: str = "", headers=None) -> list:
    """Start one request per rows array, and let each reach Triton or its lane's queue."""
    tasks = [asyncio.ensure_future(batching.infer("m", r, version, headers)) for r in requests]
    await settle()
    return tasks


def test_a_request_alone_goes_at_once():
    async def run():
        triton = SlowTriton()
        batching = BatchingInference(triton, models())
        (task,) = await send(batching, rows(1.0))
        assert triton.calls == [(1, "", None)]  # sent before any other request came: no waiting
        triton.gate.set()
        result = await task
        assert result.outputs["out"].tolist() == [[10.0]] and result.version == "1"

    asyncio.run(run())


def test_requests_that_arrive_during_a_call_go_together_and_get_their_own_rows():
    async def run():
        triton = SlowTriton()
        batching = BatchingInference(triton, models())
        (first,) = await send(batching, rows(1.0))
        later = await send(batching, rows(2.0), rows(3.0, 4.0), rows(5.0))
        assert len(triton.calls) == 1  # the three wait for the call that is out
        triton.gate.set()
        answers = await asyncio.gather(first, *later)
        assert [c[0] for c in triton.calls] == [1, 4]  # then one call of their four rows
        assert [a.outputs["out"].ravel().tolist() for a in answers] == [[10.0], [20.0], [30.0, 40.0], [50.0]]
        assert [a.outputs["other"].ravel().tolist() for a in answers] == [[2.0], [3.0], [4.0, 5.0], [6.0]]

    asyncio.run(run())


def test_versions_are_batched_apart():
    async def run():
        triton = SlowTriton()
        batching = BatchingInference(triton, models())
        (a,) = await send(batching, rows(1.0), version="1")
        (b,) = await send(batching, rows(2.0), version="2")
        assert sorted(c[1] for c in triton.calls) == ["1", "2"]  # each version's lane has its own call out
        triton.gate.set()
        assert (await a).version == "1" and (await b).version == "2"

    asyncio.run(run())


def test_a_batch_never_exceeds_the_ensembles_max_batch_size():
    async def run():
        triton = SlowTriton()
        batching = BatchingInference(triton, models(max_batch_size=3), max_rows=64)
        (first,) = await send(batching, rows(0.0))
        later = await send(batching, *(rows(float(i), float(i)) for i in range(1, 5)))
        triton.gate.set()
        await asyncio.gather(first, *later)
        assert max(c[0] for c in triton.calls) <= 3
        assert sum(c[0] for c in triton.calls) == 9  # every row sent once

    asyncio.run(run())


def test_a_failed_call_fails_each_of_its_requests_with_its_error():
    async def run():
        triton = SlowTriton(fail=UpstreamUnavailable("Triton is not reachable", retry_after_s=2))
        batching = BatchingInference(triton, models())
        tasks = await send(batching, *(rows(float(i)) for i in range(3)))
        triton.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, UpstreamUnavailable) for r in results)
        triton.fail = None  # and the lane still works afterwards
        assert (await batching.infer("m", rows(7.0))).outputs["out"].tolist() == [[70.0]]

    asyncio.run(run())


def test_a_traced_request_goes_alone_with_its_trace_context():
    async def run():
        triton = SlowTriton()
        batching = BatchingInference(triton, models())
        (first,) = await send(batching, rows(1.0))
        traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        (second,) = await send(batching, rows(2.0), headers=traced)
        assert [c[2] for c in triton.calls] == [None, traced]  # not queued behind the untraced call
        triton.gate.set()
        await asyncio.gather(first, second)

    asyncio.run(run())


def test_a_cancelled_waiting_request_costs_the_others_nothing():
    async def run():
        triton = SlowTriton()
        batching = BatchingInference(triton, models())
        (first,) = await send(batching, rows(1.0))
        gone, kept = await send(batching, rows(2.0), rows(3.0))
        gone.cancel()
        triton.gate.set()
        assert (await kept).outputs["out"].tolist() == [[30.0]]
        await first
        assert [c[0] for c in triton.calls] == [1, 1]  # the cancelled request's row was never sent
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(run())
