"""Iris species from four measurements: a logistic regression and a random forest, averaged by Triton.

Everything the platform needs is here and in ``triton/`` next to this file; nothing else names it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from services.errors import InvalidInput
from services.modelkit import (Classification, DataRejected, Dataset, GateContext, GateResult, ModelPackage, Split,
                               TensorSpec, Worker, instances_from_columns, instances_matrix, numeric_instance,
                               read_numeric_csv)
from services.modelkit.onnx import export_ensemble, keep_outputs, rename_output

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
FIELDS = {name: (0.0, 10.0, f"{name.replace('_', ' ')} in cm") for name in FEATURES}
SPECIES = ("setosa", "versicolor", "virginica")


@lru_cache(maxsize=1)
def split() -> Split:
    data = load_iris()
    xtr, xho, ytr, yho = train_test_split(data.data, data.target, test_size=0.3, random_state=3, stratify=data.target)
    return Split(Dataset(xtr, ytr.astype(np.int64)), Dataset(xho, yho.astype(np.int64)), "sklearn load_iris, 70%")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0)
    trees: int = Field(30, ge=1)


def setosa_is_easy(ctx: GateContext) -> GateResult:
    """Every setosa in the holdout is recognised (the one species a botanist never confuses)."""
    rows = ctx.holdout.y == 0
    share = float((ctx.predict(ctx.holdout_features[rows]) == 0).mean())
    return GateResult("setosa_recall", share == 1.0, share, 1.0, "holdout setosa recognised")


class Iris(ModelPackage):
    name = "iris"
    task = Classification(SPECIES, default_top_k=2)
    triton_sources = Path(__file__).parent / "triton"
    Instance = numeric_instance("IrisInstance", FIELDS, doc="One flower's measurements in centimetres")
    Options = task.options()
    oip_inputs = tuple(TensorSpec(name, "FP32", (), accepts=("FP32", "FP64")) for name in FEATURES)
    TrainParams = Params
    drift_features = FEATURES

    def preprocess(self, inputs: Sequence[Any]) -> np.ndarray:
        return instances_matrix(inputs, FEATURES)

    def from_tensors(self, tensors: dict[str, Any]) -> list[Any]:
        return instances_from_columns(self.Instance, tensors)

    def parse_data(self, name: str, data: bytes) -> Dataset:
        table = read_numeric_csv(data, columns=FEATURES, target="species")
        if not np.isin(table.y, range(len(SPECIES))).all():
            raise DataRejected([f"species must be 0..{len(SPECIES) - 1} ({', '.join(SPECIES)})"])
        if (table.x < 0).any() or (table.x > 10).any():
            raise DataRejected(["measurements must be 0..10 cm"])
        return Dataset(table.x, table.y.astype(np.int64))

    def base_data(self) -> Split:
        return split()

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def fit(self, features: np.ndarray, targets: np.ndarray, params: Params, worker: Worker) -> Any:
        linear = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
        forest = RandomForestClassifier(n_estimators=params.trees, max_depth=4, random_state=params.seed)
        return {"iris_linear": linear.fit(features, targets), "iris_forest": forest.fit(features, targets)}

    def export(self, trained: Any) -> dict[str, bytes]:
        def convert(model, config) -> bytes:
            (inp,), (out,) = config.inputs, config.outputs
            onx = to_onnx(model, initial_types=[(inp.name, FloatTensorType([None, *inp.dims]))],
                          options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
            keep_outputs(onx, ["probabilities"])
            rename_output(onx, "probabilities", out.name)
            onnx.checker.check_model(onx)
            return onx.SerializeToString()

        return export_ensemble(trained, self.family, convert)

    def gates(self):
        return (setosa_is_easy,)

    def drift_values(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float32)
