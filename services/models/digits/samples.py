"""Digits rendered as image files a user might send: for tests, load tests and demos.

Held-out digits for what measures the model; training digits for load tests whose feedback may become
training data (the holdout the gates judge on must never come back through feedback).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from services.models.digits.data import EXACT, FileVariant, load_split, random_variant, render
from services.models.digits.model import Digits


@dataclass
class RenderedDigit:
    label: int
    data: bytes
    description: str


VARIANTS = [
    FileVariant(size=8, fmt="PNG", dark_ink=False),
    FileVariant(size=28, fmt="PNG", dark_ink=True),
    FileVariant(size=64, fmt="JPEG", dark_ink=True),
    FileVariant(size=100, fmt="BMP", dark_ink=False, mode="RGB"),
    FileVariant(size=256, fmt="JPEG", dark_ink=False, mode="RGB"),
]


def holdout_images(n: int, seed: int = 1) -> list[RenderedDigit]:
    """n held-out digits, each rendered in one of the VARIANTS (cycled)."""
    return rendered(load_split().holdout, n, seed)


def training_images(n: int, seed: int = 1) -> list[RenderedDigit]:
    """n digits of the training split, each rendered in one of the VARIANTS (cycled)."""
    return rendered(load_split().train, n, seed)


def rendered(part, n: int, seed: int) -> list[RenderedDigit]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(part), size=n, replace=False)
    out = []
    for j, i in enumerate(idx):
        variant = VARIANTS[j % len(VARIANTS)]
        out.append(RenderedDigit(int(part.y[i]), render(part.x[i], variant), str(variant)))
    return out


SIZE_BANDS = ((8, 15), (16, 31), (32, 63), (64, 100))


def skew(predict: Callable[[np.ndarray], np.ndarray], files_per_digit: int = 5, seed: int = 11) -> dict:
    """Training-serving skew on the held-out digits: accuracy of `predict` (features -> class) on each digit
    as the exact 8x8 grey PNG (the pixels training sees), and as `files_per_digit` random files of the kind
    users send (PNG/JPEG/BMP, 8-100 px, grey/RGB/RGBA, either polarity; ``data.random_variant``).

    Both go through the serving decoder, so the difference is what serving loses to the file format.
    """
    digits = Digits()
    holdout = load_split().holdout
    rng = np.random.default_rng(seed)
    exact = float((predict(digits.preprocess([render(img, EXACT) for img in holdout.x])) == holdout.y).mean())
    files = [(i, random_variant(rng)) for i in range(len(holdout)) for _ in range(files_per_digit)]
    right = predict(digits.preprocess([render(holdout.x[i], v) for i, v in files])) == holdout.y[[i for i, _ in files]]
    bands = {}
    for low, high in SIZE_BANDS:
        chosen = [k for k, (_, v) in enumerate(files) if low <= v.size <= high]
        bands[f"{low}-{high} px"] = float(right[chosen].mean()) if chosen else None
    formats = {fmt: float(right[[k for k, (_, v) in enumerate(files) if v.fmt == fmt]].mean())
               for fmt in ("PNG", "JPEG", "BMP")}
    return {"digits": len(holdout), "files": len(files), "exact_8x8_png": exact, "user_files": float(right.mean()),
            "gap_points": (exact - float(right.mean())) * 100, "by_size": bands, "by_format": formats}
