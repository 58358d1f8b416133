"""The contract a model package implements: what the platform may ask of a model, and nothing else.

A model package is a Python package (``services/models/<name>/`` for the bundled ones, anywhere on
``sys.path`` for yours) whose ``__init__.py`` exports ``MODEL``, a subclass of ``ModelPackage``,
plus its Triton folders (``triton_models/<name>/`` and one folder per ensemble member). The
platform (gateway, pipeline, retraining, registry, drift, CLI) imports packages by the import paths
in ``RTS_MODELS`` and never names one: everything model-specific is answered here.

What a package says, grouped by who asks:

- serving: ``Instance`` (one JSON instance of ``/v1``, a pydantic model), ``Options`` (query
  options such as ``top_k``), ``accepts_files`` (multipart uploads), ``preprocess`` (inputs ->
  the ensemble's input rows), ``postprocess`` (the ensemble's outputs -> one dict per row);
- the Open Inference Protocol: ``oip_inputs`` / ``oip_input_sets`` / ``oip_outputs``,
  ``from_tensors`` and ``to_tensors``;
- retraining: ``parse_data`` (one data file -> rows, or ``DataRejected`` with reasons),
  ``base_data`` (the bundled training data and the fixed holdout), ``features`` (rows -> the
  ensemble's input, the same code serving runs), ``training_set`` (may add augmented rows), ``fit``
  (runs on every Ray Train worker), ``export`` (ONNX bytes per Triton member), ``gates`` (its own
  behavioural checks), ``drift_features`` / ``drift_values``.

Tensor names, datatypes and the ensemble's steps are read from its ``config.pbtxt`` (``family``).
See the README's "Bring your own model", and the bundled packages under ``services/models/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from services.modelkit.datasets import Dataset, Split
from services.modelkit.gates import Gate
from services.modelkit.tasks import Task
from services.modelkit.tensors import TensorSpec
from services.settings import REPO_ROOT, LimitsSettings
from services.triton.config import EnsembleFamily

TRITON_MODELS = REPO_ROOT / "triton_models"

Input = Any  # one instance as preprocess receives it: a validated ``Instance``, or the bytes of an uploaded file


class NoOptions(BaseModel):
    """A model with no per-request options."""

    model_config = ConfigDict(extra="forbid")


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Worker:
    """What a training function knows of its place in a data-parallel run (Ray Train, or one local worker)."""

    rank: int = 0
    world_size: int = 1
    average: Callable[[dict[str, list[np.ndarray]]], dict[str, list[np.ndarray]]] = field(
        default=lambda params: params)  # all-reduce mean of named weight lists across workers
    report: Callable[[dict[str, float]], None] = field(default=lambda metrics: None)  # per-epoch metrics


class ModelPackage(ABC):
    name: ClassVar[str]  # public name: /v1/models/<name>, /v2/models/<name>, datasets/<name>/
    task: ClassVar[Task]
    ensemble: ClassVar[str | None] = None  # the Triton ensemble serving it; default: `name`
    triton_sources: ClassVar[Path] = TRITON_MODELS  # folder holding the ensemble's and members' Triton folders

    Instance: ClassVar[type[BaseModel]]
    Options: ClassVar[type[BaseModel]] = NoOptions
    accepts_files: ClassVar[bool] = False  # multipart parts named "file" (images, documents)

    oip_inputs: ClassVar[tuple[TensorSpec, ...]]
    oip_input_sets: ClassVar[tuple[frozenset[str], ...]] = ()  # alternatives; default: all of oip_inputs
    oip_outputs: ClassVar[tuple[TensorSpec, ...]] = ()  # default: the task's

    data_suffixes: ClassVar[tuple[str, ...]] = (".csv",)
    data_format: ClassVar[str] = ""  # one sentence on what a data file holds (docs and error messages)
    TrainParams: ClassVar[type[BaseModel]] = NoParams
    metric_tolerance: ClassVar[float | None] = None  # the holdout gate's allowed relative loss; None: the setting
    drift_features: ClassVar[tuple[str, ...]]

    import_path: str = ""  # set by discovery: the path this package was loaded from (RTS_MODELS)

    def __init__(self, limits: LimitsSettings | None = None) -> None:
        self.limits = limits or LimitsSettings()

    @cached_property
    def family(self) -> EnsembleFamily:
        return EnsembleFamily.load(self.triton_sources, self.ensemble or self.name)

    @property
    def input_sets(self) -> tuple[frozenset[str], ...]:
        return self.oip_input_sets or (frozenset(t.name for t in self.oip_inputs),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.oip_outputs or self.task.oip_outputs()

    # ---- serving ---------------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, inputs: Sequence[Input]) -> np.ndarray:
        """Inputs -> rows of the ensemble's input. Raise ``InvalidInput`` (see ``modelkit.rows``) for bad ones."""

    def postprocess(self, outputs: dict[str, np.ndarray], options: BaseModel) -> list[dict]:
        """The ensemble's outputs (by name) -> one JSON-ready dict per row."""
        return self.task.postprocess(outputs[self.family.config.outputs[0].name], options)

    @abstractmethod
    def from_tensors(self, tensors: dict[str, Any]) -> list[Input]:
        """OIP input tensors (already checked against ``oip_inputs``; N rows each) -> preprocess inputs."""

    def to_tensors(self, predictions: list[dict], outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Postprocessed rows and raw outputs -> the OIP output tensors named in ``outputs``."""
        return self.task.to_tensors(predictions, outputs[self.family.config.outputs[0].name])

    # ---- retraining ------------------------------------------------------------------------------
    @abstractmethod
    def parse_data(self, name: str, data: bytes) -> Dataset:
        """One data file -> its rows and targets. Raise ``DataRejected`` with every reason it is unusable."""

    @abstractmethod
    def base_data(self) -> Split:
        """The bundled training data and the fixed holdout that never enters training."""

    @abstractmethod
    def features(self, x: np.ndarray) -> np.ndarray:
        """Raw rows (as ``parse_data`` returns them) -> the ensemble's input rows, exactly as serving computes them."""

    def training_set(self, data: Dataset, params: BaseModel) -> Dataset:
        """What training sees: ``features`` of every row; override to add augmented rows."""
        return Dataset(self.features(data.x), data.y)

    @abstractmethod
    def fit(self, features: np.ndarray, targets: np.ndarray, params: BaseModel, worker: Worker) -> Any:
        """Train on this worker's share; call ``worker.average`` to combine weights. Returns what ``export`` takes."""

    @abstractmethod
    def export(self, trained: Any) -> dict[str, bytes]:
        """ONNX bytes for every member of the ensemble, keyed by Triton model name."""

    def gates(self) -> Sequence[Gate]:
        """The model's own behavioural gates (invariances, directional expectations...), beside the platform's."""
        return ()

    @abstractmethod
    def drift_values(self, features: np.ndarray) -> np.ndarray:
        """Ensemble input rows -> one column per name in ``drift_features`` (what drift is watched on)."""

    # ---- helpers ---------------------------------------------------------------------------------
    def holdout_features(self) -> np.ndarray:
        return self.features(self.base_data().holdout.x)

    def describe(self) -> dict[str, Any]:
        """What /v1/models shows of it."""
        return {"name": self.name, "task": self.task.kind, **self.task.describe(), "accepts_files": self.accepts_files,
                "instance_schema": self.Instance.model_json_schema(),
                "options_schema": self.Options.model_json_schema(), "data_format": self.data_format}
