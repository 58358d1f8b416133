"""Publish a version of a model as a candidate, without a retraining run or its gates: what the rollout
tests start from when they need a candidate of known live quality.

- ``good``: trained like a retraining run would (the package's training set and default params, another
  seed): as good as production on live traffic;
- ``bad``: trained with two pairs of classes swapped (the first and second, the third and fourth label),
  a labelling mistake offline gates would catch, standing in for one they miss: about a fifth of live
  answers wrong.

Run in a process of its own, connected to the stack's Ray cluster, so the rollout controller is
paused while the version is loaded beside the live ones and added to the stages, as a run does::

    RAY_ADDRESS=127.0.0.1:<gcs port> python -m tests.integration.publish_candidate digits bad
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import ray

from services.modelkit import Worker
from services.modelkit.discovery import load_models
from services.registry.publish import Registry
from services.rollout.controller import rollout_paused
from services.settings import get_settings
from services.triton.client import TritonClient
from services.triton.onnx_ensemble import OnnxEnsemble, as_inputs


def train(model: str, quality: str, seed: int) -> dict[str, bytes]:
    package = load_models(get_settings())[model]
    params = package.TrainParams()
    if "seed" in type(params).model_fields:
        params = params.model_copy(update={"seed": seed})
    data = package.training_set(package.base_data().train, params)
    targets = np.asarray(data.y).copy()
    if quality == "bad":
        if package.task.kind != "classification":
            raise SystemExit("a bad candidate is made for classifiers (labels swapped)")
        labels = np.unique(targets)
        swapped = targets.copy()
        for a, b in ((labels[0], labels[1]), (labels[2], labels[3])):
            swapped[targets == a], swapped[targets == b] = b, a
        targets = swapped
    return package.export(package.fit(data.x, targets, params, Worker()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("quality", choices=("good", "bad"))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    settings = get_settings()
    package = load_models(settings)[args.model]
    files = train(args.model, args.quality, args.seed)
    rows = package.holdout_features()[:64]
    expected = OnnxEnsemble(package.family, files).run(as_inputs(package.family, rows))
    ray.init(address="auto", namespace="rts", log_to_driver=False)
    by = f"rollout test ({args.quality} candidate)"
    with TritonClient(settings.triton.grpc_address) as triton:
        registry = Registry.open(settings, triton)
        with rollout_paused(by):
            version = registry.repository.next_version(package.family)
            registry.publish(package.family, version, files)
            registry.load_and_verify(args.model, package.family, version, rows, expected)
            registry.add_candidate(args.model, package.family, version, by=by,
                                   reason=f"a {args.quality} candidate published by the rollout tests")
    print(json.dumps({"model": args.model, "version": version, "quality": args.quality}))


if __name__ == "__main__":
    main()
