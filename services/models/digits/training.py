"""Train the digits ensemble members and export them, and the averaging combiner, to ONNX.

Both members (a logistic regression and an MLP, each behind a StandardScaler) learn by mini-batch
epochs (``partial_fit``). With several Ray Train workers each trains on its shard and the workers
average their weights after every epoch (local SGD); one worker is the same code with nothing to
average. Seeded and reproducible. Tensor names come from the members' config.pbtxt.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.modelkit import Worker
from services.modelkit.onnx import export_ensemble, keep_outputs, rename_output
from services.triton.config import EnsembleFamily, ModelConfig

# The training stack (scikit-learn, skl2onnx) is imported where it is used: serving replicas import this module for
# TrainParams only, and sklearn's import is a second of every new replica's cold start.
if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

LOGREG, MLP = "digits_logreg", "digits_mlp"
CLASSES = np.arange(10)


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(60, ge=1, description="mini-batch passes over each worker's shard")
    seed: int = Field(0, description="seeds shuffling, initial weights and augmentation")
    mlp_hidden: int = Field(96, ge=1)
    mlp_alpha: float = Field(1e-3, ge=0)
    sgd_alpha: float = Field(1e-3, ge=0)
    sgd_eta0: float = Field(0.01, gt=0)
    augment_files: int = Field(3, ge=0, description="copies of each training digit rendered as a random user file "
                               "(size, format, colour, polarity) and read back through the serving decoder")


def fit_members(features: np.ndarray, labels: np.ndarray, params: TrainParams, worker: Worker) -> dict[str, Pipeline]:
    """Train both members on this worker's shard; weights are averaged across workers after each epoch.

    The scaler is fitted on all rows (cheap, and every worker must scale identically).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    x = scaler.transform(features).astype(np.float32)
    shard = np.arange(len(x))[worker.rank::worker.world_size]
    rng = np.random.default_rng(params.seed + worker.rank)
    mlp = MLPClassifier(hidden_layer_sizes=(params.mlp_hidden,), alpha=params.mlp_alpha, random_state=params.seed)
    sgd = SGDClassifier(loss="log_loss", alpha=params.sgd_alpha, learning_rate="constant", eta0=params.sgd_eta0,
                        random_state=params.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(params.epochs):
            order = rng.permutation(shard)
            mlp.partial_fit(x[order], labels[order], classes=CLASSES)
            sgd.partial_fit(x[order], labels[order], classes=CLASSES)
            if worker.world_size > 1:
                mean = worker.average({"mlp_w": mlp.coefs_, "mlp_b": mlp.intercepts_,
                                       "sgd": [sgd.coef_, sgd.intercept_]})
                mlp.coefs_, mlp.intercepts_ = list(mean["mlp_w"]), list(mean["mlp_b"])
                sgd.coef_, sgd.intercept_ = mean["sgd"][0], mean["sgd"][1]
    return {LOGREG: Pipeline([("scale", scaler), ("clf", sgd)]), MLP: Pipeline([("scale", scaler), ("clf", mlp)])}


def member_onnx(model: Pipeline, config: ModelConfig) -> bytes:
    """A scikit-learn classifier as ONNX with the input and output its config.pbtxt names."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    (inp,), (out,) = config.inputs, config.outputs
    onx = to_onnx(model, initial_types=[(inp.name, FloatTensorType([None, *inp.dims]))],
                  options={id(model.steps[-1][1]): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    keep_outputs(onx, ["probabilities"])  # skl2onnx's class scores; not its predicted labels
    rename_output(onx, "probabilities", out.name)
    onnx.checker.check_model(onx)
    return onx.SerializeToString()


def export_family(trained: dict[str, Any], family: EnsembleFamily) -> dict[str, bytes]:
    """ONNX bytes for every member: the trained models, and the combiner (the member nobody trains)."""
    return export_ensemble(trained, family, member_onnx)
