"""The inference application: Serve deployments and the one typed builder that composes them.

Composed layout (``layout: composed``)::

    HTTP :8000 -> Ingress (FastAPI) -> Preprocess -> TritonEnsemble (gRPC aio) -> Postprocess
                                                        |
                                                   tritonserver (one ensemble per model)

Fused layout (``layout: fused``): the same three stages run inside the Ingress replica, saving two
Serve hops per request (about 5 ms each on 2 cores). Replicas scale the whole pipeline together.

Which models are served, where Triton is and every limit come from the process settings
(``RTS_*``, ``services/settings.py``), the same for every process of the stack; the Serve config
says only how the application is laid out and scaled.

Deploy with ``serve deploy ray_apps/configs/inference.yaml`` (replicas, autoscaling, CPUs there),
or ``serve.run(build_app({...}))`` from Python.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ray_apps.stages import Postprocess, Preprocess, TritonEnsemble, observability

from services.modelkit.discovery import load_models
from services.registry.records import Records
from services.rollout.controller import ensure_controller
from services.rollout.live import LiveStats, Reporter
from services.rollout.routing import Router
from services.serving.app import create_app
from services.serving.batching import BatchingInference
from services.serving.deps import Gateway
from services.serving.drift_watch import DriftWatch
from services.serving.pipeline import InferencePipeline
from services.serving.stages import (LocalInference, LocalPostprocess, LocalPreprocess, PostprocessStage,
                                     PreprocessStage, RemoteInference, RemotePostprocess, RemotePreprocess,
                                     TritonStage)
from services.settings import get_settings
from services.storage import data_store
from services.telemetry.tracing import TraceBudget


class InferenceAppArgs(BaseModel):
    """Arguments of the inference application (the ``args`` block of a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["composed", "fused"] = Field(
        "composed", description="composed: one deployment per stage; fused: all stages in the ingress replica")


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """FastAPI gateway: /v1, OIP /v2, /healthz, /admin. Stages are handles (composed) or local (fused).

    Each replica routes requests between a model's live versions as the rollout controller's
    routing table says, and reports what it saw to the controller (made here if the cluster has none).
    """

    def __init__(self, args: InferenceAppArgs, preprocess: DeploymentHandle | None = None,
                 triton: DeploymentHandle | None = None, postprocess: DeploymentHandle | None = None) -> None:
        observability("rts-gateway")
        settings = get_settings()
        models = load_models(settings)
        if args.layout == "fused":
            stages = (LocalPreprocess(PreprocessStage(models)), LocalInference(TritonStage(models, settings.triton)),
                      LocalPostprocess(PostprocessStage(models)))
        else:
            stages = (RemotePreprocess(preprocess), RemoteInference(triton), RemotePostprocess(postprocess))
        if settings.triton.batch_in_flight:  # concurrent requests reach Triton together (services/serving/batching.py)
            stages = (stages[0], BatchingInference(stages[1], models, max_rows=settings.triton.batch_max_rows,
                                                   in_flight=settings.triton.batch_in_flight), stages[2])
        records = Records(data_store(settings))
        router = Router(records, list(models)).start()
        drift = None
        if settings.drift.enabled:
            drift = DriftWatch(records, models, window=settings.drift.window, cooldown_s=settings.drift.cooldown_s,
                               is_production=router.is_production)
        live = LiveStats(replica=f"{socket.gethostname()}-{os.getpid()}")
        controller = ensure_controller()
        Reporter(live, send=lambda snapshot: controller.report.remote(snapshot), watched=router.judged,
                 drift_of=drift.max_psi if drift is not None else (lambda model, version: None)).start()
        pipeline = InferencePipeline(*stages, models=models, drift=drift, live=live,
                                     triton_traces=TraceBudget(settings.triton.trace_max_per_s))
        self.gateway = Gateway(settings, models, pipeline, router=router, live=live, controller=controller)

    def __serve_build_asgi_app__(self):
        return create_app(self.gateway)


def build_app(args: dict) -> Application:
    """Serve application builder (``import_path: ray_apps.inference:build_app``)."""
    cfg = InferenceAppArgs.model_validate(args or {})
    if cfg.layout == "fused":
        return Ingress.bind(cfg)
    return Ingress.bind(cfg, Preprocess.bind(), TritonEnsemble.bind(), Postprocess.bind())
