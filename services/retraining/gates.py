"""Validation gates a candidate must pass before it is published.

Gates run on the exported ONNX files, the bytes Triton will serve, not on the training objects:
the candidate ensemble is evaluated through onnxruntime exactly as the Python backend runs it.

- accuracy: holdout accuracy not below production's minus ``accuracy_tolerance``;
- per-class recall: every class at least ``min_class_recall``;
- behaviour: predictions invariant to a small brightness change and to a one-pixel translation
  (share of unchanged predictions at least ``min_invariance``); a minimum-functionality set of
  clean examples (per class, the holdout digits closest to the class mean) all right;
- latency: candidate ensemble p50 for one image within ``latency_budget_ms``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from services.models.digits.train import COMBINER, MEMBERS, N_CLASSES, featurize


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    accuracy_tolerance: float = Field(0.01, description="allowed holdout accuracy drop vs production")
    min_class_recall: float = Field(0.85, description="floor for every class's holdout recall")
    min_invariance: float = Field(0.97, description="share of predictions unchanged by brightness/shift")
    brightness_factor: float = Field(0.85, description="brightness multiplier for the invariance test")
    latency_budget_ms: float = Field(5.0, description="p50 of one-image ensemble inference, onnxruntime CPU")
    functionality_per_class: int = Field(3, description="clean examples per class that must all be right")


@dataclass
class GateResult:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str = ""


class OnnxEnsemble:
    """The Triton ensemble, run in-process with onnxruntime from the family's ONNX bytes."""

    def __init__(self, onnx_files: dict[str, bytes]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.members = [ort.InferenceSession(onnx_files[m], options, providers=["CPUExecutionProvider"])
                        for m in MEMBERS]
        self.combiner = ort.InferenceSession(onnx_files[COMBINER], options, providers=["CPUExecutionProvider"])
        self.combiner_inputs = [i.name for i in self.combiner.get_inputs()]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(features, dtype=np.float32)
        member_out = [s.run(["probabilities"], {"pixels": x})[0] for s in self.members]
        return self.combiner.run(["probabilities"], dict(zip(self.combiner_inputs, member_out)))[0]


def shift_one_pixel(images: np.ndarray) -> np.ndarray:
    """Move every digit one pixel right (zero fill), or left where it touches the right edge."""
    out = np.zeros_like(images)
    for i, img in enumerate(images):
        if img[:, -1].any():
            out[i, :, :-1] = img[:, 1:]
        else:
            out[i, :, 1:] = img[:, :-1]
    return out


def functionality_set(images: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the clean, typical examples: per class, those closest to the class mean image."""
    chosen = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(labels == c)
        mean = images[idx].mean(axis=0)
        dist = ((images[idx] - mean) ** 2).sum(axis=(1, 2))
        chosen.extend(idx[np.argsort(dist)[:per_class]])
    return np.array(sorted(chosen))


def evaluate(model: OnnxEnsemble, images: np.ndarray, labels: np.ndarray) -> dict:
    pred = model.predict_proba(featurize(images)).argmax(axis=1)
    recalls = {int(c): float((pred[labels == c] == c).mean()) for c in range(N_CLASSES)}
    return {"accuracy": float((pred == labels).mean()), "class_recall": recalls}


def run_gates(candidate: OnnxEnsemble, production: OnnxEnsemble | None, holdout_images: np.ndarray,
              holdout_labels: np.ndarray, config: GateConfig) -> tuple[list[GateResult], dict]:
    cand = evaluate(candidate, holdout_images, holdout_labels)
    prod = evaluate(production, holdout_images, holdout_labels) if production else None
    results: list[GateResult] = []

    floor = prod["accuracy"] - config.accuracy_tolerance if prod else 0.0
    results.append(GateResult("accuracy_vs_production", cand["accuracy"] >= floor, cand["accuracy"], floor,
                              f"production {prod['accuracy']:.4f}" if prod else "no production model"))
    worst = min(cand["class_recall"], key=cand["class_recall"].get)
    results.append(GateResult("per_class_recall", cand["class_recall"][worst] >= config.min_class_recall,
                              cand["class_recall"][worst], config.min_class_recall, f"lowest: class {worst}"))

    base = candidate.predict_proba(featurize(holdout_images)).argmax(axis=1)
    for name, changed in (
        ("invariance_brightness", np.clip(holdout_images * config.brightness_factor, 0, 16)),
        ("invariance_one_pixel_shift", shift_one_pixel(holdout_images)),
    ):
        same = float((candidate.predict_proba(featurize(changed)).argmax(axis=1) == base).mean())
        results.append(GateResult(name, same >= config.min_invariance, same, config.min_invariance,
                                  "share of holdout predictions unchanged"))

    idx = functionality_set(holdout_images, holdout_labels, config.functionality_per_class)
    pred = candidate.predict_proba(featurize(holdout_images[idx])).argmax(axis=1)
    wrong = [int(i) for i, p in zip(idx, pred) if p != holdout_labels[i]]
    results.append(GateResult("minimum_functionality", not wrong, float(len(idx) - len(wrong)), float(len(idx)),
                              f"wrong on holdout rows {wrong}" if wrong else "all clean examples right"))

    one = featurize(holdout_images[:1])
    for _ in range(20):
        candidate.predict_proba(one)
    timings = []
    for _ in range(200):
        t0 = time.perf_counter()
        candidate.predict_proba(one)
        timings.append((time.perf_counter() - t0) * 1000)
    p50 = float(np.percentile(timings, 50))
    results.append(GateResult("latency_p50_ms", p50 <= config.latency_budget_ms, p50, config.latency_budget_ms,
                              "one image through the ensemble, onnxruntime CPU"))
    metrics = {"candidate": cand, "production": prod, "latency_p50_ms": p50}
    return results, metrics


def gates_to_json(results: list[GateResult]) -> list[dict]:
    return [asdict(r) for r in results]
