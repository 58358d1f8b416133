"""The stage deployments of the composed layout: Preprocess, TritonEnsemble, Postprocess.

Their own module, apart from the ingress (``ray_apps/inference.py``): a stage replica imports only this and the
stage code, not the gateway's HTTP app, rollout and registry, so one that starts from zero (``inference-autoscale.yaml``
scales Preprocess to zero) answers sooner: ``make bench-freshness`` measures that cold start beside Serve's own.
"""

from __future__ import annotations

from ray import serve

from services.modelkit import ModelPackage
from services.modelkit.discovery import load_models
from services.serving.stages import PostprocessStage, PreprocessStage, TritonStage
from services.settings import Settings, get_settings
from services.telemetry.metrics import configure_metrics
from services.telemetry.tracing import configure_tracing


def observability(service: str) -> None:
    """Once per replica process: OTEL_* env decides tracing; metrics go to Ray and /metrics."""
    configure_tracing(service)
    configure_metrics("ray", also_local=True)


def _models(settings: Settings) -> dict[str, ModelPackage]:
    return load_models(settings)


@serve.deployment(name="Preprocess")
class Preprocess(PreprocessStage):
    """Decodes and checks user inputs into model rows (CPU-bound; scale it on its own)."""

    def __init__(self) -> None:
        observability("rts-preprocess")
        super().__init__(_models(get_settings()))


@serve.deployment(name="Postprocess")
class Postprocess(PostprocessStage):
    """Turns model outputs into labels, confidences, top-k or values."""

    def __init__(self) -> None:
        observability("rts-postprocess")
        super().__init__(_models(get_settings()))


@serve.deployment(name="TritonEnsemble")
class TritonEnsemble(TritonStage):
    """Async client to Triton, one reused gRPC channel per replica (HTTP for traced requests)."""

    def __init__(self) -> None:
        observability("rts-triton-client")
        settings = get_settings()
        super().__init__(_models(settings), settings.triton)
