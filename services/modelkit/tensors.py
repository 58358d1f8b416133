"""The tensors of a model's Open Inference Protocol interface, as the gateway exposes them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model's Open Inference Protocol interface (the gateway's, not Triton's)."""

    name: str
    datatype: str  # what metadata advertises: "FP32", "BYTES", "INT64"
    shape: tuple[int, ...] = ()  # one row's shape; () is one value per row
    accepts: tuple[str, ...] = ()  # datatypes accepted on input (default: just `datatype`)
    alternative_shapes: tuple[tuple[int, ...], ...] = ()  # e.g. (64,) beside (8, 8)

    @property
    def accepted_datatypes(self) -> tuple[str, ...]:
        return self.accepts or (self.datatype,)
