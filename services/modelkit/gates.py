"""Gates: checks a candidate version must pass before it is published.

A gate is a function ``gate(ctx) -> GateResult | list[GateResult]``. The platform runs its own
(the primary holdout metric against production, latency) and then each gate a model package returns
from ``gates()``: invariances for images, directional expectations for tabular data, minimum
functionality sets. Gates see the candidate as Triton will serve it: the exported ONNX files run
through the ensemble's steps on onnxruntime (``ctx.candidate``).

Usage (in a model package)::

    def bmi_raises_progression(ctx: GateContext) -> GateResult:
        x = ctx.holdout.x.copy(); x[:, BMI] += 0.02
        share = float((ctx.predict(ctx.features(x)) >= ctx.predict(ctx.holdout_features)).mean())
        return GateResult("directional_bmi", share >= 0.9, share, 0.9, "share of rows not lowered")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np

from services.modelkit.datasets import Dataset

Predictor = Callable[[np.ndarray], np.ndarray]  # ensemble input rows -> the ensemble's first output


@dataclass
class GateResult:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str = ""


@dataclass
class GateContext:
    candidate: Predictor
    production: Predictor | None  # None for a model's first version
    holdout: Dataset  # raw rows, as parse_data returns them
    holdout_features: np.ndarray
    features: Callable[[np.ndarray], np.ndarray]  # raw rows -> ensemble input rows (the serving code)
    predicted: Callable[[np.ndarray], np.ndarray]  # first output -> class index or value per row
    metrics: dict[str, Any]  # the candidate's holdout metrics (the task's)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The candidate's prediction per row (class index, or value)."""
        return self.predicted(self.candidate(features))


Gate = Callable[[GateContext], Union[GateResult, list[GateResult]]]
