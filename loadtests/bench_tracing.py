"""What tracing costs per request, measured in-process (no HTTP, no Triton): off, untraced, on.

Usage::

    python -m loadtests.bench_tracing                 # ~1 minute; writes loadtests/results/tracing-<time>/

The real gateway app (``create_app``: middlewares, routing, multipart parsing, the real preprocess
and postprocess of the digits model) is called as an ASGI app with one PNG upload, over a pipeline
whose Triton stage is an in-process fake returning fixed scores. Three builds of the same request
path, interleaved round by round so they share the machine's state:

- ``untraced``: the tracing code taken out (the middleware's metrics path only, stages time
  themselves with the metrics timer only): the floor;
- ``off``: as shipped, with no tracer provider installed (no OTEL_* endpoint);
- ``on``: as shipped, with an SDK TracerProvider, every request sampled, spans handed to a
  BatchSpanProcessor whose exporter drops them (the in-process cost; exporting over OTLP happens
  on the processor's own thread and is measured end to end by ``loadtests.bench``).

"off" and "untraced" run before a provider is installed (OpenTelemetry allows one per process);
"on" and "untraced" run after. Reported: the median over rounds of microseconds per request, and
the difference to ``untraced``. Not a timed test: read the spread column before trusting a delta.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid
from pathlib import Path

from opentelemetry import trace

import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services.modelkit.discovery import load_models
from services.models.digits.data import FileVariant, load_split, render
from services.serving import pipeline as pipeline_module
from services.serving.app import create_app
from services.serving.deps import Gateway
from services.serving.pipeline import InferencePipeline
from services.serving.stages import LocalPostprocess, LocalPreprocess, PostprocessStage, PreprocessStage
from services.settings import REPO_ROOT, Settings
from services.telemetry import instrument, metrics
from services.triton.client import InferResult


class FakeTriton:
    """Stands in for the Triton call so the measurement is the gateway's own code."""

    def __init__(self) -> None:
        self.scores = np.full((1, 10), 0.01, dtype=np.float32)
        self.scores[0, 3] = 0.91

    async def infer(self, model, rows, version="", headers=None) -> InferResult:
        return InferResult({"probabilities": self.scores[: len(rows)]}, "1")

    async def health(self) -> tuple[bool, str]:
        return True, "ok"


def build_app():
    settings = Settings(models=["services.models.digits"])
    models = load_models(settings)
    pipe = InferencePipeline(LocalPreprocess(PreprocessStage(models)), FakeTriton(),
                             LocalPostprocess(PostprocessStage(models)), models=models)
    return create_app(Gateway(settings, models, pipe))


def request_parts() -> tuple[dict, bytes]:
    png = render(load_split().holdout.x[0], FileVariant(28, "PNG", dark_ink=True))
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
             "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                         (b"content-length", str(len(body)).encode())]}
    return scope, body


async def call(app, scope: dict, body: bytes) -> int:
    sent = False
    status = 0

    async def receive():
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app({**scope, "headers": list(scope["headers"])}, receive, send)
    return status


@contextlib.contextmanager
def untraced():
    """The request path with its tracing code taken out (metrics kept)."""
    original_call, original_stage = instrument.ObservabilityMiddleware.__call__, pipeline_module.stage

    async def middleware_call(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            return await self.app(scope, receive, send)
        await self._handle(scope, receive, send, trace.INVALID_SPAN, 0)

    def timer_only(name, model, **_):
        return instrument.TimedStage(name, model)

    instrument.ObservabilityMiddleware.__call__, pipeline_module.stage = middleware_call, timer_only
    try:
        yield
    finally:
        instrument.ObservabilityMiddleware.__call__, pipeline_module.stage = original_call, original_stage


async def per_request_us(app, scope, body, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        if await call(app, scope, body) != 200:
            raise RuntimeError("the gateway did not answer 200")
    return (time.perf_counter() - started) / n * 1e6


async def compare(app, scope, body, rounds: int, n: int, conditions) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name, _ in conditions}
    for _ in range(rounds):
        for name, ctx in conditions:
            with ctx():
                samples[name].append(await per_request_us(app, scope, body, n))
    return samples


def install_sdk_provider() -> None:
    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


async def run(rounds: int, n: int) -> dict[str, list[float]]:
    metrics.reset_metrics("prometheus")
    app = build_app()
    scope, body = request_parts()
    await per_request_us(app, scope, body, 200)  # warm-up: imports, caches
    before = await compare(app, scope, body, rounds, n,
                           [("untraced", untraced), ("off", contextlib.nullcontext)])
    install_sdk_provider()
    assert instrument.spans_recorded()
    after = await compare(app, scope, body, rounds, n,
                          [("untraced (provider installed)", untraced), ("on", contextlib.nullcontext)])
    return {**before, **after}


def write_cost_table(out: Path, samples: dict[str, list[float]], floors: dict[str, float], what: str, versus: str,
                     args: argparse.Namespace) -> str:
    """results.md (median us/request per build, its spread over rounds, the difference to its floor) and
    results.json (every round); printed too."""
    lines = [f"| {what} | median us/request | spread (p10-p90 of rounds) | vs {versus} |", "|---|---:|---:|---:|"]
    for name, values in samples.items():
        med = statistics.median(values)
        deciles = statistics.quantiles(values, n=10)
        delta = med - floors[name]
        lines.append(f"| {name} | {med:.1f} | {deciles[0]:.1f}-{deciles[-1]:.1f} | "
                     f"{delta:+.1f} us ({delta / floors[name] * 100:+.1f}%) |")
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(samples, indent=2))
    print(table + f"\n{args.rounds} rounds x {args.requests} requests per build; written to {out}")
    return table


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="per-request cost of tracing off / on vs no tracing code")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300, help="requests per condition per round")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("tracing-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    samples = asyncio.run(run(args.rounds, args.requests))
    floors = {"untraced": statistics.median(samples["untraced"]),
              "off": statistics.median(samples["untraced"]),
              "untraced (provider installed)": statistics.median(samples["untraced (provider installed)"]),
              "on": statistics.median(samples["untraced (provider installed)"])}
    write_cost_table(out, samples, floors, "build", "untraced", args)
    return out


if __name__ == "__main__":
    main()
