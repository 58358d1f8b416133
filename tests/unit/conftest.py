"""Shared by the fast tests: the digits package trained once in this process (no Ray, no Triton)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from services.modelkit import ModelPackage, Worker
from services.modelkit.discovery import load_package
from services.telemetry.drift import ReferenceStats
from services.triton.onnx_ensemble import OnnxEnsemble


@dataclass
class Trained:
    package: ModelPackage
    onnx_files: dict[str, bytes]
    ensemble: OnnxEnsemble
    reference: ReferenceStats

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.ensemble.primary(np.asarray(features, dtype=np.float32).reshape(len(features), -1))

    def served(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What a drift window sees of these model rows: the package's drift values and the model's scores."""
        features = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
        return self.package.drift_values(features), self.scores(features)


@pytest.fixture(scope="session")
def digits() -> Trained:
    package = load_package("services.models.digits")
    split = package.base_data()
    features = package.features(split.train.x)
    trained = package.fit(features, split.train.y, package.TrainParams(augment_files=0), Worker())
    files = package.export(trained)
    ensemble = OnnxEnsemble(package.family, files)
    reference = ReferenceStats.from_training(package.drift_values(features), ensemble.primary(features),
                                             names=package.drift_features, kind="classification",
                                             meta={"version": 1})
    return Trained(package, files, ensemble, reference)
