"""What the platform needs to know about a served model, and nothing digit-specific.

A model is its Triton repository folder (``triton_models/<name>/``) plus a `ModelSpec` naming its
pre/postprocessing code. The gateway serves every spec listed in the Serve config's ``models``
argument; adding a model means adding a spec and a Triton folder, not editing the gateway.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np


class Preprocessor(Protocol):
    """Turns one user input into the model's input row. Raises InvalidInput for bad input."""

    def from_image(self, data: bytes) -> np.ndarray: ...

    def from_array(self, array: np.ndarray) -> np.ndarray: ...


class Postprocessor(Protocol):
    def __call__(self, scores: np.ndarray, top_k: int) -> list[dict]: ...


@dataclass(frozen=True)
class ModelSpec:
    name: str  # public name in /v1 and /v2 routes
    triton_model: str  # Triton model (usually an ensemble) that serves it
    triton_input: str  # Triton input tensor fed with preprocessed rows
    triton_output: str  # Triton output tensor handed to postprocessing
    feature_shape: tuple[int, ...]  # one preprocessed row
    array_input: str  # name of the raw-array input users may send instead of an image, e.g. "pixels"
    array_shape: tuple[int, ...]  # shape of one raw-array instance, e.g. (8, 8)
    preprocessor: str  # import path "module:attr" of a zero-arg factory returning a Preprocessor
    postprocessor: str  # import path of a zero-arg factory returning a Postprocessor
    labels: Sequence[object] = field(default_factory=tuple)
    default_top_k: int = 3

    def load_preprocessor(self) -> Preprocessor:
        return import_object(self.preprocessor)()

    def load_postprocessor(self) -> Postprocessor:
        return import_object(self.postprocessor)()


def import_object(path: str):
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"import path must look like 'package.module:name', got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def load_specs(paths: Sequence[str]) -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for path in paths:
        spec = import_object(path)
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"{path} is a {type(spec).__name__}, not a ModelSpec")
        if spec.name in specs:
            raise ValueError(f"two model specs are named {spec.name!r}")
        specs[spec.name] = spec
    return specs
