"""Train the digits ensemble members, export them to ONNX and write a Triton model version.

Usage::

    python -m services.models.digits.train                 # writes var/model_repository version 1
    python -m services.models.digits.train --version 2 --repository /path/to/repo

Seeded and reproducible; about five seconds on one CPU core. The holdout split (fixed seed) never
enters training; its accuracy is printed and written to ``metrics.json`` next to the artifacts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.common.settings import get_settings
from services.model_repository import write_model_version
from services.models.digits.features import normalize_digit, pixels_to_gray

ENSEMBLE = "digits"
MEMBERS = ("digits_logreg", "digits_mlp")
COMBINER = "digits_combine"
N_CLASSES = 10
HOLDOUT_SEED = 20240607
HOLDOUT_FRACTION = 0.2


@dataclass
class DigitsSplit:
    train_images: np.ndarray  # (n, 8, 8) on the 0..16 scale
    train_labels: np.ndarray
    holdout_images: np.ndarray
    holdout_labels: np.ndarray


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


def train_members(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    logreg = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    mlp = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(96,), alpha=1e-3, max_iter=600, random_state=seed),
    )
    return {"digits_logreg": logreg.fit(features, labels), "digits_mlp": mlp.fit(features, labels)}


def export_member(model, path: Path) -> None:
    onx = to_onnx(
        model,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # Serve only the probabilities output, under the name config.pbtxt uses.
    outputs = {o.name for o in onx.graph.output}
    if "probabilities" not in outputs:
        raise RuntimeError(f"skl2onnx produced outputs {sorted(outputs)}, expected 'probabilities'")
    keep = [o for o in onx.graph.output if o.name == "probabilities"]
    del onx.graph.output[:]
    onx.graph.output.extend(keep)
    onnx.checker.check_model(onx)
    path.write_bytes(onx.SerializeToString())


def export_combiner(path: Path) -> None:
    """ONNX graph averaging the members' class probabilities."""
    ins = [helper.make_tensor_value_info(f"probs_{m.split('_', 1)[1]}", TensorProto.FLOAT, [None, N_CLASSES])
           for m in MEMBERS]
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, N_CLASSES])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [1.0 / len(MEMBERS)])
    nodes = [helper.make_node("Sum", [i.name for i in ins], ["total"]),
             helper.make_node("Mul", ["total", "half"], ["probabilities"])]
    graph = helper.make_graph(nodes, "digits_combine", ins, [out], initializer=[half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def build_version(repository: Path, version: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    split = load_split()
    train_x, holdout_x = featurize(split.train_images), featurize(split.holdout_images)
    models = train_members(train_x, split.train_labels, seed=seed)
    metrics = {name: float((m.predict(holdout_x) == split.holdout_labels).mean()) for name, m in models.items()}
    avg = sum(m.predict_proba(holdout_x) for m in models.values()) / len(models)
    metrics["ensemble"] = float((avg.argmax(axis=1) == split.holdout_labels).mean())
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for name, model in models.items():
            artifacts[name] = Path(tmp) / f"{name}.onnx"
            export_member(model, artifacts[name])
        artifacts[COMBINER] = Path(tmp) / f"{COMBINER}.onnx"
        export_combiner(artifacts[COMBINER])
        # Members first, ensemble last: the ensemble version appears only once its members exist.
        for name in (*MEMBERS, COMBINER):
            write_model_version(repository, name, version, artifacts[name])
        write_model_version(repository, ENSEMBLE, version, None)
    result = {"version": version, "holdout_accuracy": metrics, "seed": seed,
              "train_size": int(len(train_x)), "holdout_size": int(len(holdout_x)),
              "seconds": round(time.perf_counter() - started, 2)}
    (repository / ENSEMBLE / str(version) / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=None, help="model repository (default var/model_repository)")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the ensemble version exists")
    args = parser.parse_args()
    repository = args.repository or get_settings().model_repository
    if args.if_missing and (repository / ENSEMBLE / str(args.version)).is_dir():
        print(f"model repository {repository} already has {ENSEMBLE} version {args.version}")
        return
    print(f"training digits version {args.version} into {repository} ...", flush=True)
    print(json.dumps(build_version(repository, args.version, args.seed), indent=2))


if __name__ == "__main__":
    main()
