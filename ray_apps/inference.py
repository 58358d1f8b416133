"""The inference application: Serve deployments and the one typed builder that composes them.

Composed layout (``layout: composed``)::

    HTTP :8000 -> Ingress (FastAPI) -> Preprocess -> TritonEnsemble (gRPC aio) -> Postprocess
                                                        |
                                                   tritonserver (ensemble of ONNX models)

Fused layout (``layout: fused``): the same three stages run inside the Ingress replica, saving two
Serve hops per request (about 5 ms each on 2 cores). Replicas scale the whole pipeline together.

Deploy with ``serve deploy ray_apps/configs/inference.yaml`` (replicas, autoscaling, CPUs there),
or ``serve.run(build_app({...}))`` from Python.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from services.common.settings import get_settings
from services.gateway.app import create_app
from services.models.base import load_specs
from services.pipeline.pipeline import HandleStage, InferencePipeline, LocalStage
from services.pipeline.stages import PostprocessStage, PreprocessStage, TritonStage

DEFAULT_MODELS = ["services.models.digits.spec:DIGITS"]


class InferenceAppArgs(BaseModel):
    """Arguments of the inference application (the ``args`` block of a Serve config)."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        description="Import paths of ModelSpec objects; the first is the default model of /v1/predict",
    )
    triton_url: str | None = Field(
        None, description="grpc://host:port of Triton; unset means the RTS_TRITON_URL / bundled default")
    triton_http_url: str | None = Field(
        None, description="http://host:port of Triton for traced requests; unset: RTS_TRITON_HTTP_URL / bundled")
    triton_timeout_s: float | None = Field(None, description="Deadline for one Triton call; unset: settings")
    layout: Literal["composed", "fused"] = Field(
        "composed", description="composed: one deployment per stage; fused: all stages in the ingress replica")


def _observability(service: str) -> None:
    """Once per replica process: OTEL_* env decides tracing; metrics go to Ray and /metrics."""
    from services.observability.metrics import configure_metrics
    from services.observability.tracing import configure_tracing

    configure_tracing(service)
    configure_metrics("ray", also_local=True)


@serve.deployment(name="Preprocess")
class Preprocess(PreprocessStage):
    """Decodes and normalizes user inputs into model rows (CPU-bound; scale it on its own)."""

    def __init__(self, *args, **kwargs) -> None:
        _observability("rts-preprocess")
        super().__init__(*args, **kwargs)


@serve.deployment(name="Postprocess")
class Postprocess(PostprocessStage):
    """Turns class scores into labels, confidences and top-k."""

    def __init__(self, *args, **kwargs) -> None:
        _observability("rts-postprocess")
        super().__init__(*args, **kwargs)


@serve.deployment(name="TritonEnsemble")
class TritonEnsemble(TritonStage):
    """Async client to Triton, one reused gRPC channel per replica (HTTP for traced requests)."""

    def __init__(self, *args, **kwargs) -> None:
        _observability("rts-triton-client")
        super().__init__(*args, **kwargs)


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """FastAPI gateway: /v1/predict, OIP /v2, /healthz. Stages are handles (composed) or local (fused)."""

    def __init__(self, args: InferenceAppArgs, preprocess: DeploymentHandle | None = None,
                 triton: DeploymentHandle | None = None, postprocess: DeploymentHandle | None = None) -> None:
        _observability("rts-gateway")
        self.settings = get_settings()
        self.specs = load_specs(args.models)
        if args.layout == "fused":
            stages = (LocalStage(PreprocessStage(args.models)), LocalStage(_triton_stage(args)),
                      LocalStage(PostprocessStage(args.models)))
        else:
            stages = (HandleStage(preprocess), HandleStage(triton), HandleStage(postprocess))
        drift = None
        if self.settings.drift_watch:
            from services.pipeline.drift_watch import DriftWatch

            drift = DriftWatch(self.settings.data_uri, window=self.settings.drift_window,
                               cooldown_s=self.settings.drift_cooldown_s)
        self.pipeline = InferencePipeline(*stages, drift=drift)

    def __serve_build_asgi_app__(self):
        return create_app(self.pipeline, self.specs, self.settings)


def _triton_stage(args: InferenceAppArgs) -> TritonStage:
    settings = get_settings()
    return TritonStage(args.triton_url or settings.effective_triton_url, args.models,
                       args.triton_timeout_s or settings.triton_timeout_s,
                       http_url=args.triton_http_url or settings.effective_triton_http_url)


def build_app(args: dict) -> Application:
    """Serve application builder (``import_path: ray_apps.inference:build_app``)."""
    cfg = InferenceAppArgs.model_validate(args or {})
    if cfg.layout == "fused":
        return Ingress.bind(cfg)
    settings = get_settings()
    return Ingress.bind(
        cfg,
        Preprocess.bind(cfg.models),
        TritonEnsemble.bind(cfg.triton_url or settings.effective_triton_url, cfg.models,
                            cfg.triton_timeout_s or settings.triton_timeout_s,
                            http_url=cfg.triton_http_url or settings.effective_triton_http_url),
        Postprocess.bind(cfg.models),
    )
