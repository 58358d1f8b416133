"""Triton's own model configuration (``config.pbtxt``), read once and never repeated in Python.

Usage::

    family = EnsembleFamily.load(Path("triton_models"), "churn")
    family.config.inputs[0].name, family.config.inputs[0].datatype     # "features", "FP32"
    family.members                                                     # ("churn_linear", "churn_gbm", ...)
    family.member_configs["churn_gbm"].outputs

Tensor names, datatypes, shapes and the ensemble's steps live in each model's ``config.pbtxt``
under ``triton_models/`` (or wherever a model package keeps its Triton folders), as Triton's own
python_backend reads them; the platform asks this module instead of restating them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

CONFIG_NAME = "config.pbtxt"


def _protos():
    """tritonclient's ModelConfig messages, imported on first use: a process that only names model packages
    (the serverless adapters deciding which model an event is for) does without tritonclient and grpc."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(text, _protos().ModelConfig())


def format_config(config: model_config_pb2.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def _datatype(data_type: int) -> str:
    """TYPE_FP32 -> "FP32", the name the inference protocols use."""
    return _protos().DataType.Name(data_type).removeprefix("TYPE_").replace("STRING", "BYTES")


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # "FP32", "INT64", "BYTES" ...
    dims: tuple[int, ...]  # one row's shape (Triton's dims; the batch dimension is not included)


@dataclass(frozen=True)
class Step:
    model_name: str
    input_map: dict[str, str]  # member input -> ensemble tensor
    output_map: dict[str, str]  # member output -> ensemble tensor


@dataclass(frozen=True)
class ModelConfig:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    steps: tuple[Step, ...]  # empty unless it is an ensemble

    @classmethod
    def from_proto(cls, config: model_config_pb2.ModelConfig) -> "ModelConfig":
        def tensors(items) -> tuple[Tensor, ...]:
            return tuple(Tensor(t.name, _datatype(t.data_type), tuple(int(d) for d in t.dims)) for t in items)

        steps = tuple(Step(s.model_name, dict(s.input_map), dict(s.output_map))
                      for s in config.ensemble_scheduling.step)
        return cls(config.name, config.platform or config.backend, int(config.max_batch_size),
                   tensors(config.input), tensors(config.output), steps)

    @classmethod
    def read(cls, path: Path) -> "ModelConfig":
        return cls.from_proto(parse_config(path.read_text()))

    @property
    def is_ensemble(self) -> bool:
        return self.platform == "ensemble"

    def input(self, name: str) -> Tensor:
        return _by_name(self.inputs, name, f"input of {self.name}")

    def output(self, name: str) -> Tensor:
        return _by_name(self.outputs, name, f"output of {self.name}")


def _by_name(tensors: tuple[Tensor, ...], name: str, what: str) -> Tensor:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise KeyError(f"no {what} named {name!r}; there are {[t.name for t in tensors]}")


@dataclass(frozen=True)
class EnsembleFamily:
    """An ensemble and the models its steps call: published, loaded and switched together."""

    sources: Path  # the folder holding <ensemble>/ and every member's folder
    config: ModelConfig
    member_configs: dict[str, ModelConfig]

    @classmethod
    def load(cls, sources: Path, ensemble: str) -> "EnsembleFamily":
        path = sources / ensemble / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no Triton config {path}: a model's Triton folders hold <name>/config.pbtxt")
        config = ModelConfig.read(path)
        if not config.is_ensemble:
            raise ValueError(f"{path} is not an ensemble (platform {config.platform!r}); the platform serves "
                             "each model as a Triton ensemble so that its steps switch versions together")
        members = {}
        for step in config.steps:
            if step.model_name not in members:
                members[step.model_name] = ModelConfig.read(sources / step.model_name / CONFIG_NAME)
        return cls(sources, config, members)

    @property
    def ensemble(self) -> str:
        return self.config.name

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self.member_configs)

    @property
    def models(self) -> tuple[str, ...]:
        """The ensemble and its members, the unit a version is published for."""
        return (self.ensemble, *self.members)
