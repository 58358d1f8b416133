"""The digits package's own preprocessing and postprocessing, as every peer calls them (the gateway's math).

- ``features(instances)``: ``{"instances": [...]}`` entries (``{"image_b64": ...}`` or ``{"pixels": ...}``),
  validated as the package's ``Instance`` and preprocessed as the gateway's /v1 does -> (N, 64) float32;
- ``features_from_files(files)``: encoded image files (bytes), as the gateway's /v2 ``image`` tensor does;
- ``predictions(probabilities)``: the ensemble's output -> the /v1 predictions (label, confidence, top_k);
- ``output_tensors(probabilities)``: the same as the /v2 output tensors (label, confidence, probabilities).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from services.modelkit.discovery import load_package
from services.modelkit.inputs import validate_instances

DIGITS = load_package("services.models.digits")
OPTIONS = DIGITS.Options()
ENSEMBLE = DIGITS.ensemble or DIGITS.name
# The ensemble's input and output (triton_models/digits/config.pbtxt), named here rather than read through
# DIGITS.family: that parses config.pbtxt with tritonclient's protos, whose ``inference.*`` messages clash with
# KServe's own in one process. tests/unit/test_bench_peers.py checks they are the family's.
INPUT, OUTPUT = "pixels", "probabilities"


def features(instances: Sequence[Any]) -> np.ndarray:
    return DIGITS.preprocess(validate_instances(DIGITS.Instance, instances)).astype(np.float32, copy=False)


def features_from_files(files: Sequence[bytes]) -> np.ndarray:
    return DIGITS.preprocess(DIGITS.from_tensors({"image": list(files)})).astype(np.float32, copy=False)


def predictions(probabilities: np.ndarray) -> list[dict]:
    return DIGITS.task.postprocess(probabilities, OPTIONS)  # what DIGITS.postprocess does with its first output


def output_tensors(probabilities: np.ndarray) -> dict[str, Any]:
    return DIGITS.task.to_tensors(predictions(probabilities), probabilities)  # and DIGITS.to_tensors
