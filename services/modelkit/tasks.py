"""What kind of answer a model gives, and what follows from it: metrics, postprocessing, OIP outputs.

Usage (in a model package)::

    task = Classification(labels=range(10))      # ensemble's first output: class scores (n, k)
    task = Regression(unit="disease progression") # ensemble's first output: values (n,) or (n, 1)

The platform's holdout gate compares ``primary_metric`` with production's, in the direction
``higher_is_better`` says; drift compares the predicted class mix and confidence (classification)
or the predicted values (regression) with those at training time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from services.modelkit.tensors import TensorSpec


class Task(ABC):
    kind: str
    primary_metric: str
    higher_is_better: bool
    Prediction: type[BaseModel]  # one postprocessed row, for the API docs

    @abstractmethod
    def predicted(self, output: np.ndarray) -> np.ndarray:
        """The ensemble's first output -> one prediction per row (class index, or value)."""

    @abstractmethod
    def metrics(self, output: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Holdout metrics of an output against the true targets; includes ``primary_metric``."""

    @abstractmethod
    def postprocess(self, output: np.ndarray, options: BaseModel) -> list[dict]: ...

    @abstractmethod
    def oip_outputs(self) -> tuple[TensorSpec, ...]: ...

    @abstractmethod
    def to_tensors(self, predictions: list[dict], output: np.ndarray) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]:
        """What /v1/models says about the answers, beside the task's kind."""
        return {}

    def better(self, candidate: float, production: float, tolerance: float) -> tuple[bool, float]:
        """(passes, threshold): the candidate's primary metric may be at most `tolerance` (relative) worse."""
        if self.higher_is_better:
            floor = production * (1 - tolerance)
            return candidate >= floor, floor
        ceiling = production * (1 + tolerance)
        return candidate <= ceiling, ceiling


class Classification(Task):
    kind = "classification"
    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, labels: Sequence[Any], default_top_k: int = 3) -> None:
        self.labels = list(labels)
        self.default_top_k = min(default_top_k, len(self.labels))
        self.int_labels = all(isinstance(label, (int, np.integer)) for label in self.labels)

    def describe(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def options(self) -> type[BaseModel]:
        """Query options of /v1: how many of the most likely classes to return."""
        return create_model(
            "ClassificationOptions", __config__=ConfigDict(extra="forbid"),
            top_k=(int, Field(self.default_top_k, ge=1, le=len(self.labels),
                              description=f"how many of the most likely classes to return (1..{len(self.labels)})")))

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise ValueError(f"expected scores of shape (n, {len(self.labels)}), got {scores.shape}")
        total = scores.sum(axis=1, keepdims=True)
        return np.divide(scores, total, out=np.zeros_like(scores), where=total > 0)

    def predicted(self, output: np.ndarray) -> np.ndarray:
        return np.asarray(output).argmax(axis=1)

    def metrics(self, output: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        pred = self.predicted(output)
        targets = np.asarray(targets)
        recall = {str(self.labels[c]): float((pred[targets == c] == c).mean())
                  for c in range(len(self.labels)) if (targets == c).any()}
        return {"accuracy": float((pred == targets).mean()), "class_recall": recall, "rows": int(len(targets))}

    def postprocess(self, output: np.ndarray, options: BaseModel) -> list[dict]:
        probs = self.probabilities(output)
        k = max(1, min(int(getattr(options, "top_k", 1)), len(self.labels)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, idx in zip(probs, order):
            top = [{"label": self.labels[i], "score": round(float(row[i]), 6)} for i in idx]
            out.append({"label": top[0]["label"], "confidence": top[0]["score"], "top_k": top})
        return out

    def oip_outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("label", "INT64" if self.int_labels else "BYTES"),
                TensorSpec("confidence", "FP32"),
                TensorSpec("probabilities", "FP32", (len(self.labels),)))

    def to_tensors(self, predictions: list[dict], output: np.ndarray) -> dict[str, Any]:
        labels = [p["label"] for p in predictions]
        return {
            "label": np.asarray(labels, dtype=np.int64) if self.int_labels else [str(v).encode() for v in labels],
            "confidence": np.asarray([p["confidence"] for p in predictions], dtype=np.float32),
            "probabilities": self.probabilities(output).astype(np.float32),
        }


class Regression(Task):
    kind = "regression"
    primary_metric = "rmse"
    higher_is_better = False

    def __init__(self, unit: str = "", decimals: int = 4) -> None:
        self.unit, self.decimals = unit, decimals

    def describe(self) -> dict[str, Any]:
        return {"unit": self.unit}

    def predicted(self, output: np.ndarray) -> np.ndarray:
        return np.asarray(output, dtype=np.float64).reshape(len(output), -1)[:, 0]

    def metrics(self, output: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        pred, y = self.predicted(output), np.asarray(targets, dtype=np.float64)
        err = pred - y
        total = float(((y - y.mean()) ** 2).sum())
        return {"rmse": float(np.sqrt((err ** 2).mean())), "mae": float(np.abs(err).mean()),
                "r2": 1.0 - float((err ** 2).sum()) / total if total > 0 else 0.0, "rows": int(len(y))}

    def postprocess(self, output: np.ndarray, options: BaseModel) -> list[dict]:
        return [{"value": round(float(v), self.decimals)} for v in self.predicted(output)]

    def oip_outputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("value", "FP32"),)

    def to_tensors(self, predictions: list[dict], output: np.ndarray) -> dict[str, Any]:
        return {"value": self.predicted(output).astype(np.float32)}


class ClassPrediction(BaseModel):
    label: Any = Field(description="Most likely class")
    confidence: float = Field(description="Probability of that class")
    top_k: list[dict] = Field(description="The k most likely classes with their probabilities")


class ValuePrediction(BaseModel):
    value: float = Field(description="The predicted value")


Classification.Prediction = ClassPrediction
Regression.Prediction = ValuePrediction
