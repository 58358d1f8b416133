"""Train the digits ensemble members, export them to ONNX and publish a Triton model version.

Usage::

    python -m services.models.digits.train                  # version 1 into var/model_repository
    python -m services.models.digits.train --if-missing     # what `make up` runs

Both members (a logistic regression and an MLP, each behind a StandardScaler) learn by
mini-batch epochs (``partial_fit``). With several workers each trains on its shard and the
workers average their weights after every epoch (local SGD): this is what the Ray Train job in
``services/retraining`` runs; one worker, here, is the same code with nothing to average.
Seeded and reproducible; about two seconds on one core. The holdout split (fixed seed) never
enters training.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from services.models.digits.features import normalize_digit, pixels_to_gray

ENSEMBLE = "digits"
MEMBERS = ("digits_logreg", "digits_mlp")
COMBINER = "digits_combine"
N_CLASSES = 10
CLASSES = np.arange(N_CLASSES)
HOLDOUT_SEED = 20240607
HOLDOUT_FRACTION = 0.2


@dataclass
class DigitsSplit:
    train_images: np.ndarray  # (n, 8, 8) on the 0..16 scale
    train_labels: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 60
    seed: int = 0
    mlp_hidden: int = 96
    mlp_alpha: float = 1e-3
    sgd_alpha: float = 1e-3
    sgd_eta0: float = 0.01


def load_split() -> DigitsSplit:
    """The fixed train/holdout split of sklearn's digits; the holdout never enters training."""
    digits = load_digits()
    xtr, xho, ytr, yho = train_test_split(
        digits.images, digits.target, test_size=HOLDOUT_FRACTION, random_state=HOLDOUT_SEED, stratify=digits.target
    )
    return DigitsSplit(xtr.astype(np.float32), ytr.astype(np.int64), xho.astype(np.float32), yho.astype(np.int64))


def featurize(images: np.ndarray) -> np.ndarray:
    """8x8 images on the 0..16 scale -> the exact features serving computes."""
    return np.stack([normalize_digit(pixels_to_gray(img)) for img in images]).astype(np.float32)


Averager = Callable[[dict[str, list[np.ndarray]]], dict[str, list[np.ndarray]]]


def fit_members(features: np.ndarray, labels: np.ndarray, params: TrainParams = TrainParams(), *,
                rank: int = 0, world_size: int = 1, average: Averager | None = None) -> dict[str, Pipeline]:
    """Train both members on this worker's shard; `average` all-reduces weights after each epoch.

    The scaler is fitted on all rows (cheap, and every worker must scale identically).
    """
    scaler = StandardScaler().fit(features)
    x = scaler.transform(features).astype(np.float32)
    shard = np.arange(len(x))[rank::world_size]
    rng = np.random.default_rng(params.seed + rank)
    mlp = MLPClassifier(hidden_layer_sizes=(params.mlp_hidden,), alpha=params.mlp_alpha, random_state=params.seed)
    sgd = SGDClassifier(loss="log_loss", alpha=params.sgd_alpha, learning_rate="constant", eta0=params.sgd_eta0,
                        random_state=params.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(params.epochs):
            order = rng.permutation(shard)
            mlp.partial_fit(x[order], labels[order], classes=CLASSES)
            sgd.partial_fit(x[order], labels[order], classes=CLASSES)
            if average is not None and world_size > 1:
                mean = average({"mlp_w": mlp.coefs_, "mlp_b": mlp.intercepts_,
                                "sgd": [sgd.coef_, sgd.intercept_]})
                mlp.coefs_, mlp.intercepts_ = list(mean["mlp_w"]), list(mean["mlp_b"])
                sgd.coef_, sgd.intercept_ = mean["sgd"][0], mean["sgd"][1]
    return {
        "digits_logreg": Pipeline([("scale", scaler), ("clf", sgd)]),
        "digits_mlp": Pipeline([("scale", scaler), ("clf", mlp)]),
    }


def ensemble_proba(models: dict[str, Pipeline], features: np.ndarray) -> np.ndarray:
    """What the Triton ensemble computes: the members' mean class probabilities."""
    return sum(m.predict_proba(features) for m in models.values()) / len(models)


def member_onnx(model: Pipeline) -> bytes:
    onx = to_onnx(
        model,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # Serve only the probabilities output, under the name config.pbtxt uses.
    if "probabilities" not in {o.name for o in onx.graph.output}:
        raise RuntimeError(f"skl2onnx produced outputs {[o.name for o in onx.graph.output]}, no 'probabilities'")
    keep = [o for o in onx.graph.output if o.name == "probabilities"]
    del onx.graph.output[:]
    onx.graph.output.extend(keep)
    onnx.checker.check_model(onx)
    return onx.SerializeToString()


def combiner_onnx() -> bytes:
    """ONNX graph averaging the members' class probabilities."""
    ins = [helper.make_tensor_value_info(f"probs_{m.split('_', 1)[1]}", TensorProto.FLOAT, [None, N_CLASSES])
           for m in MEMBERS]
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, N_CLASSES])
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [], [1.0 / len(MEMBERS)])
    nodes = [helper.make_node("Sum", [i.name for i in ins], ["total"]),
             helper.make_node("Mul", ["total", "weight"], ["probabilities"])]
    graph = helper.make_graph(nodes, "digits_combine", ins, [out], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_family(models: dict[str, Pipeline]) -> dict[str, bytes]:
    """ONNX bytes for every member of the Triton family, keyed by Triton model name."""
    return {**{name: member_onnx(m) for name, m in models.items()}, COMBINER: combiner_onnx()}


def family():
    from services.model_repository import ModelFamily

    return ModelFamily(ensemble=ENSEMBLE, members=(*MEMBERS, COMBINER))


def write_reference(data_uri: str, version: int, features: np.ndarray, probabilities: np.ndarray) -> None:
    """Drift reference of a version: statistics of its training inputs and outputs (services/observability/drift.py)."""
    from services.observability.drift import ReferenceStats
    from services.pipeline.drift_watch import reference_key
    from services.storage import open_store

    stats = ReferenceStats.from_training(features, probabilities, meta={"version": version})
    open_store(data_uri).put_bytes(reference_key(ENSEMBLE, version), stats.to_json().encode())


def build_initial_version(repository_uri: str, params: TrainParams = TrainParams(),
                          data_uri: str | None = None) -> dict:
    """Train on the base split and publish version 1, pinned, into an empty repository."""
    from services.model_repository import ModelRepository
    from services.storage import open_store

    started = time.perf_counter()
    repo = ModelRepository(open_store(repository_uri))
    if repo.versions(ENSEMBLE):
        raise FileExistsError(f"{repository_uri} already has {ENSEMBLE} versions {repo.versions(ENSEMBLE)}")
    split = load_split()
    train_x, holdout_x = featurize(split.train_images), featurize(split.holdout_images)
    models = fit_members(train_x, split.train_labels, params)
    accuracy = {name: float((m.predict(holdout_x) == split.holdout_labels).mean()) for name, m in models.items()}
    accuracy["ensemble"] = float((ensemble_proba(models, holdout_x).argmax(1) == split.holdout_labels).mean())
    for name, data in export_family(models).items():
        repo.write_version(name, 1, {"model.onnx": data})
    repo.write_ensemble_version(ENSEMBLE, 1)
    repo.pin_ensemble(family(), 1)
    if data_uri:
        write_reference(data_uri, 1, train_x, ensemble_proba(models, train_x))
    return {"version": 1, "holdout_accuracy": accuracy, "train_size": len(train_x),
            "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    from services.common.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", default=None, help="model repository URI (default: var/model_repository)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when a version exists")
    args = parser.parse_args()
    uri = args.repository or get_settings().model_repository_uri
    from services.model_repository import ModelRepository
    from services.storage import open_store

    if args.if_missing and ModelRepository(open_store(uri)).versions(ENSEMBLE):
        print(f"{uri} already has a {ENSEMBLE} version")
        return
    print(f"training the digits ensemble into {uri} ...", flush=True)
    print(json.dumps(build_initial_version(uri, data_uri=get_settings().data_uri), indent=2))


if __name__ == "__main__":
    main()
