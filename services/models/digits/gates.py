"""The digits model's own gates, beside the platform's holdout-accuracy and latency gates.

- per-class recall: every digit at least ``MIN_CLASS_RECALL`` on the holdout;
- invariance: predictions unchanged when a digit arrives as a file users send (random size, format,
  colour, polarity, through the serving decoder) instead of as its exact pixels, and by a one-pixel
  translation (share unchanged at least ``MIN_INVARIANCE``). Not brightness: the preprocessing
  stretches the ink to full scale, so a brightness change never reaches the model to be checked;
- minimum functionality: per class, the holdout digits closest to the class mean all right.
"""

from __future__ import annotations

import numpy as np

from services.modelkit import GateContext, GateResult, decode_gray
from services.models.digits.data import random_variant, render
from services.models.digits.features import normalize_digit

MIN_CLASS_RECALL = 0.85
MIN_INVARIANCE = 0.97
FILES_SEED = 5
FUNCTIONALITY_PER_CLASS = 3


def shift_one_pixel(images: np.ndarray) -> np.ndarray:
    """Move every digit one pixel right (zero fill), or left where it touches the right edge."""
    out = np.zeros_like(images)
    for i, img in enumerate(images):
        if img[:, -1].any():
            out[i, :, :-1] = img[:, 1:]
        else:
            out[i, :, 1:] = img[:, :-1]
    return out


def per_class_recall(ctx: GateContext) -> GateResult:
    recalls = ctx.metrics["class_recall"]
    worst = min(recalls, key=recalls.get)
    return GateResult("per_class_recall", recalls[worst] >= MIN_CLASS_RECALL, recalls[worst], MIN_CLASS_RECALL,
                      f"lowest: class {worst}")


def as_user_files(images: np.ndarray, seed: int = FILES_SEED) -> np.ndarray:
    """Each digit rendered as a random file of the kind users send, read back through the serving decoder."""
    rng = np.random.default_rng(seed)
    return np.stack([normalize_digit(decode_gray(render(img, random_variant(rng)), 10**8)) for img in images])


def invariances(ctx: GateContext) -> list[GateResult]:
    base = ctx.predict(ctx.holdout_features)
    results = []
    for name, changed in (("invariance_file_format", as_user_files(ctx.holdout.x)),
                          ("invariance_one_pixel_shift", ctx.features(shift_one_pixel(ctx.holdout.x)))):
        same = float((ctx.predict(changed) == base).mean())
        results.append(GateResult(name, same >= MIN_INVARIANCE, same, MIN_INVARIANCE,
                                  "share of holdout predictions unchanged"))
    return results


def functionality_set(images: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the clean, typical examples: per class, those closest to the class mean image."""
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mean = images[idx].mean(axis=0)
        dist = ((images[idx] - mean) ** 2).sum(axis=(1, 2))
        chosen.extend(idx[np.argsort(dist)[:per_class]])
    return np.array(sorted(chosen))


def minimum_functionality(ctx: GateContext) -> GateResult:
    idx = functionality_set(ctx.holdout.x, ctx.holdout.y, FUNCTIONALITY_PER_CLASS)
    pred = ctx.predict(ctx.holdout_features[idx])
    wrong = [int(i) for i, p in zip(idx, pred) if p != ctx.holdout.y[i]]
    return GateResult("minimum_functionality", not wrong, float(len(idx) - len(wrong)), float(len(idx)),
                      f"wrong on holdout rows {wrong}" if wrong else "all clean examples right")


GATES = (per_class_recall, invariances, minimum_functionality)
