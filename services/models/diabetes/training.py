"""Train the two diabetes regressors and export them, and the averaging combiner, to ONNX.

Members (names as in ``triton_models/diabetes/config.pbtxt``):

- ``diabetes_linear``: a Ridge regression behind a StandardScaler;
- ``diabetes_trees``: a gradient-boosted tree ensemble (GradientBoostingRegressor);
- ``diabetes_combine``: the mean of the two (nobody trains it; ``export`` builds it).

Usage::

    trained = fit_members(features, targets, TrainParams(), Worker())   # {member name: fitted estimator}
    files = export_family(trained, family)                              # {member name: ONNX bytes}

Neither model learns by epochs, so there are no weights to average between Ray Train workers:
every worker fits on all rows with the same seed (a few hundred rows take well under a second) and
gets the same models; the platform keeps rank 0's. Tensor names come from the members' config.pbtxt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.modelkit import Worker
from services.modelkit.onnx import export_ensemble, rename_output
from services.triton.config import EnsembleFamily, ModelConfig

# The training stack (scikit-learn, skl2onnx) is imported where it is used: serving replicas import this module for
# TrainParams only, and sklearn's import is a second of every new replica's cold start.

LINEAR, TREES = "diabetes_linear", "diabetes_trees"
SKL2ONNX_OUTPUT = "variable"  # what skl2onnx names a regressor's output
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seeds the trees' row subsampling")
    ridge_alpha: float = Field(10.0, ge=0, description="L2 penalty of the linear member (on standardised features)")
    trees: int = Field(200, ge=1, description="boosting rounds of the tree member")
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_depth: int = Field(2, ge=1, description="depth of each tree: 2 lets pairs of features interact")
    subsample: float = Field(0.8, gt=0, le=1, description="share of rows each tree sees")


def fit_members(features: np.ndarray, targets: np.ndarray, params: TrainParams, worker: Worker) -> dict[str, Any]:
    """Both members on all rows. The same on every worker (deterministic), so ``worker`` is not needed:
    sharding 350 rows would only make each worker's models worse, and trees cannot be averaged."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(targets, dtype=np.float64)
    linear = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=params.ridge_alpha))]).fit(x, y)
    trees = GradientBoostingRegressor(n_estimators=params.trees, learning_rate=params.learning_rate,
                                      max_depth=params.max_depth, subsample=params.subsample,
                                      random_state=params.seed).fit(x, y)
    return {LINEAR: linear, TREES: trees}


def member_onnx(model: Any, config: ModelConfig) -> bytes:
    """A scikit-learn regressor as ONNX with the input and output its config.pbtxt names."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    (inp,), (out,) = config.inputs, config.outputs
    onx = to_onnx(model, initial_types=[(inp.name, FloatTensorType([None, *inp.dims]))], target_opset=TARGET_OPSET)
    names = [o.name for o in onx.graph.output]
    if names != [SKL2ONNX_OUTPUT]:
        raise RuntimeError(f"skl2onnx produced outputs {names}, expected just {SKL2ONNX_OUTPUT!r}")
    rename_output(onx, SKL2ONNX_OUTPUT, out.name)
    onnx.checker.check_model(onx)
    return onx.SerializeToString()


def export_family(trained: dict[str, Any], family: EnsembleFamily) -> dict[str, bytes]:
    """ONNX bytes for every member: the trained models, and the combiner (the member nobody trains)."""
    return export_ensemble(trained, family, member_onnx)
