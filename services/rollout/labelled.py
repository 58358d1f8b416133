"""Feedback as labelled data: the rows a model was given, with the truth users sent back, as dataset files.

The rollout controller joins feedback to what each version predicted; the same join knows the rows
the model was given (the ensemble's input, as preprocessing made it) and their truth. When those
rows are rows the model package can train on, the controller writes them, in batches, to::

    datasets/<model>/feedback/<time>-<n>.npz      x: rows (shaped as the package's training rows), y: targets

which a retraining run reads like accepted files (lineage with their hashes, the holdout kept out,
quarantined with the rest when a gate fails or the version they made is rolled back live).

Whether rows can be training rows is checked, not assumed: ``trainable_shape`` reshapes a few
preprocessed holdout rows to the shape of the package's training rows and asks whether its
``features`` gives them back unchanged (true of a normalised pixel grid, or of numeric fields taken
as they are). A package whose features are not idempotent (say, a tokenizer) gets no feedback
files; feedback still drives its rollout.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np

from services.modelkit import ModelPackage
from services.storage import ObjectStore


def feedback_prefix(model: str) -> str:
    return f"datasets/{model}/feedback/"


def trainable_shape(package: ModelPackage, probe: int = 16) -> tuple[int, ...] | None:
    """The shape of one training row when the ensemble's input rows can be trained on as they are, else None."""
    try:
        raw = package.base_data().holdout.x[:probe]
        rows = np.asarray(package.features(raw))
        shape = tuple(np.asarray(raw).shape[1:])
        if int(np.prod(shape)) != int(np.prod(rows.shape[1:])):
            return None
        again = np.asarray(package.features(rows.reshape(len(rows), *shape)))
        return shape if again.shape == rows.shape and np.allclose(again, rows, atol=1e-5) else None
    except Exception:  # noqa: BLE001 - a package that cannot say: its feedback is not training data
        return None


def target_of(package: ModelPackage, truth: Any) -> float | int:
    """The training target of one truth: a class index (classifiers), or the value (regressors)."""
    if package.task.kind == "classification":
        labels = [str(label) for label in package.task.labels]
        if str(truth) not in labels:
            raise ValueError(f"{truth!r} is not a label of {package.name}; its labels are {package.task.labels}")
        return labels.index(str(truth))
    value = float(truth)
    if not np.isfinite(value):
        raise ValueError(f"{truth!r} is not a finite value")
    return value


def write_file(store: ObjectStore, model: str, x: np.ndarray, y: np.ndarray) -> str:
    """One feedback data file (written whole: readers never see half of it). Returns its key."""
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    key = f"{feedback_prefix(model)}{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns()}-{len(y)}.npz"
    store.put_bytes(key, buf.getvalue())
    return key


def read_file(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["x"], npz["y"]
