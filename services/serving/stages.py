"""The three stages of an inference request, as plain classes with no Ray in them, and typed clients for them.

``ray_apps/inference.py`` runs each stage as its own Serve deployment (composed layout) or all of
them inside the ingress replica (fused layout); the stage code is the same either way. The
pipeline talks to a stage through a typed client: ``Local*`` calls the object in this process,
``Remote*`` calls a Serve DeploymentHandle and hands a user-facing error raised in the other
replica through unchanged.
"""

from __future__ import annotations

from typing import Any, Awaitable, Protocol, Sequence

import numpy as np
from pydantic import BaseModel

from services.errors import ServingError
from services.modelkit import ModelPackage
from services.modelkit.discovery import model_named
from services.registry.repository import version_ensemble
from services.settings import TritonSettings
from services.triton.client import InferResult, TritonClient
from services.triton.onnx_ensemble import as_inputs


class PreprocessStage:
    def __init__(self, models: dict[str, ModelPackage]) -> None:
        self.models = models

    def run(self, model: str, inputs: Sequence[Any]) -> np.ndarray:
        return model_named(self.models, model).preprocess(inputs)

    def ready(self) -> bool:
        return True


class PostprocessStage:
    def __init__(self, models: dict[str, ModelPackage]) -> None:
        self.models = models

    def run(self, model: str, outputs: dict[str, np.ndarray], options: BaseModel) -> list[dict]:
        return model_named(self.models, model).postprocess(outputs, options)

    def ready(self) -> bool:
        return True


class TritonStage:
    """Calls each model's ensemble on Triton: inputs named from its config.pbtxt, every output asked for."""

    def __init__(self, models: dict[str, ModelPackage], triton: TritonSettings) -> None:
        self.models = models
        self.client = TritonClient(triton.grpc_address, http_url=triton.http_address, timeout_s=triton.timeout_s)
        self._outputs = {name: [t.name for t in p.family.config.outputs] for name, p in models.items()}

    async def infer(self, model: str, rows: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> InferResult:
        """`version` "": the plain ensemble (production as pinned); else that version's own ensemble, which
        stays loaded while the version is in play: routing between versions reloads nothing."""
        family = model_named(self.models, model).family
        name = version_ensemble(family.ensemble, version) if version else family.ensemble
        return await self.client.infer(name, as_inputs(family, rows), self._outputs[model], version, headers)

    async def health(self) -> tuple[bool, str]:
        """(ready, reason): Triton is up and every model's ensemble is loaded."""
        return await self.client.ready([p.family.ensemble for p in self.models.values()])

    def ready(self) -> bool:
        return True


# ---- typed clients --------------------------------------------------------------------------------

class Preprocessor(Protocol):
    async def run(self, model: str, inputs: Sequence[Any]) -> np.ndarray: ...

    async def ready(self) -> bool: ...


class Inference(Protocol):
    async def infer(self, model: str, rows: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> InferResult: ...

    async def health(self) -> tuple[bool, str]: ...


class Postprocessor(Protocol):
    async def run(self, model: str, outputs: dict[str, np.ndarray], options: BaseModel) -> list[dict]: ...

    async def ready(self) -> bool: ...


class LocalPreprocess:
    def __init__(self, stage: PreprocessStage) -> None:
        self.stage = stage

    async def run(self, model: str, inputs: Sequence[Any]) -> np.ndarray:
        return self.stage.run(model, inputs)

    async def ready(self) -> bool:
        return self.stage.ready()


class LocalInference:
    def __init__(self, stage: TritonStage) -> None:
        self.stage = stage

    async def infer(self, model: str, rows: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> InferResult:
        return await self.stage.infer(model, rows, version, headers)

    async def health(self) -> tuple[bool, str]:
        return await self.stage.health()


class LocalPostprocess:
    def __init__(self, stage: PostprocessStage) -> None:
        self.stage = stage

    async def run(self, model: str, outputs: dict[str, np.ndarray], options: BaseModel) -> list[dict]:
        return self.stage.run(model, outputs, options)

    async def ready(self) -> bool:
        return self.stage.ready()


async def _remote(call: Awaitable) -> Any:
    try:
        return await call
    except ServingError:
        raise
    except Exception as exc:
        # Ray wraps a replica's exception; hand the user-facing one through unchanged.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ServingError):
            raise cause from None
        raise


class RemotePreprocess:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def run(self, model: str, inputs: Sequence[Any]) -> np.ndarray:
        return await _remote(self.handle.run.remote(model, list(inputs)))

    async def ready(self) -> bool:
        return await _remote(self.handle.ready.remote())


class RemoteInference:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def infer(self, model: str, rows: np.ndarray, version: str = "",
                    headers: dict[str, str] | None = None) -> InferResult:
        return await _remote(self.handle.infer.remote(model, rows, version, headers))

    async def health(self) -> tuple[bool, str]:
        return await _remote(self.handle.health.remote())


class RemotePostprocess:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def run(self, model: str, outputs: dict[str, np.ndarray], options: BaseModel) -> list[dict]:
        return await _remote(self.handle.run.remote(model, outputs, options))

    async def ready(self) -> bool:
        return await _remote(self.handle.ready.remote())
