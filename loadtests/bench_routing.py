"""What routing between live versions costs per request, measured in-process (no HTTP, no Triton).

Usage::

    python -m loadtests.bench_routing                 # ~1 minute; writes loadtests/results/routing-<time>/

The real gateway app (``create_app``: middlewares, routes, the real preprocess and postprocess of
the digits model) is called as an ASGI app with one PNG upload, over a pipeline whose Triton stage
is an in-process fake returning fixed scores (``bench_tracing.FakeTriton``), so what is measured is
the gateway's own code. Builds of the same request path, interleaved round by round:

- ``no rollout``: no router and no live statistics (every request to the plain ensemble): the floor,
  the request path as it was before versions were routed;
- ``production only``: the router with a table naming production, live statistics and the
  prediction log kept for feedback (what every request pays once a rollout controller runs);
- ``canary 50%``: a weighted split, sticky by the request id (a hash per request);
- ``A/B by header``: the request carries a cohort header;
- ``bandit``: a Thompson sample over two versions per request;
- ``shadow 100%``: every request mirrored to a second version off the response path (the mirror's
  own work, its disagreement check and its statistics run on the same event loop, so they count; the
  mirrored inference itself costs Triton as much as the answer does, which this does not show).

Reported: the median over rounds of microseconds per request, and the difference to ``no rollout``.
Not a timed test: read the spread column before trusting a delta.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Callable

from loadtests.bench_tracing import FakeTriton, call, request_parts, write_cost_table
from services.modelkit.discovery import load_models
from services.registry.records import Records
from services.rollout.live import LiveStats
from services.rollout.routing import ABRoute, BanditRoute, CanaryRoute, Router, RoutingTable, ShadowRoute
from services.serving.app import create_app
from services.serving.deps import Gateway
from services.serving.pipeline import InferencePipeline
from services.serving.stages import LocalPostprocess, LocalPreprocess, PostprocessStage, PreprocessStage
from services.settings import REPO_ROOT, Settings
from services.storage import open_store
from services.telemetry import metrics

MODEL_PATH = "services.models.digits"


def tables(model: str) -> dict[str, RoutingTable | None]:
    base = {"model": model, "production": 1, "strategy": "progressive"}
    return {
        "no rollout": None,
        "production only": RoutingTable(**base),
        "canary 50%": RoutingTable(**base, canary=CanaryRoute(version=2, weight=0.5)),
        "A/B by header": RoutingTable(**{**base, "strategy": "ab"}, ab=ABRoute(header="x-cohort", cohorts={"b": 2})),
        "bandit": RoutingTable(**{**base, "strategy": "bandit"},
                               bandit=BanditRoute(posteriors={1: (40.0, 3.0), 2: (38.0, 5.0)})),
        "shadow 100%": RoutingTable(**base, shadow=ShadowRoute(version=2, share=1.0)),
    }


def build(name: str, table: RoutingTable | None, records: Records) -> tuple[Callable, LiveStats | None]:
    settings = Settings(models=[MODEL_PATH])
    models = load_models(settings)
    live = None if table is None else LiveStats(replica="bench")
    pipe = InferencePipeline(LocalPreprocess(PreprocessStage(models)), FakeTriton(),
                             LocalPostprocess(PostprocessStage(models)), models=models, live=live)
    router = None
    if table is not None:
        router = Router(records, list(models))  # not started: the table is set here, no refresh thread
        router.tables[table.model] = table
    return create_app(Gateway(settings, models, pipe, router=router, live=live)), live


async def per_request_us(app, scope: dict, body: bytes, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        if await call(app, scope, body) != 200:
            raise RuntimeError("the gateway did not answer 200")
    await asyncio.sleep(0)  # let the last mirrored call finish inside the measurement
    return (time.perf_counter() - started) / n * 1e6


async def run(rounds: int, n: int, records: Records) -> dict[str, list[float]]:
    metrics.reset_metrics("prometheus")
    model = next(iter(load_models(Settings(models=[MODEL_PATH]))))
    scope, body = request_parts()
    with_cohort = {**scope, "headers": [*scope["headers"], (b"x-cohort", b"b")]}
    builds = {name: build(name, table, records) for name, table in tables(model).items()}
    for app, _ in builds.values():
        await per_request_us(app, scope, body, 100)  # warm-up: imports, caches
    samples: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(rounds):
        for name, (app, live) in builds.items():
            samples[name].append(await per_request_us(app, with_cohort if name.startswith("A/B") else scope, body, n))
            if live is not None:
                live.take()  # what the reporter thread does once a second
    return samples


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="per-request cost of routing between versions, in-process")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300, help="requests per build per round")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "loadtests" / "results" / time.strftime("routing-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    records = Records(open_store(f"file://{out / 'bucket'}"))
    samples = asyncio.run(run(args.rounds, args.requests, records))
    floor = statistics.median(samples["no rollout"])
    write_cost_table(out, samples, {name: floor for name in samples}, "request path", "no rollout", args)
    return out


if __name__ == "__main__":
    main()
