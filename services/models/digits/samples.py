"""Held-out digits rendered as image files a user might send: for tests, load tests and demos."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.models.digits.train import load_split


@dataclass
class RenderedDigit:
    label: int
    data: bytes
    description: str


def render(pixels: np.ndarray, *, size: int, fmt: str, dark_ink: bool, colour: bool = False) -> bytes:
    grey = (np.clip(pixels, 0, 16) / 16.0 * 255).astype(np.uint8)
    if dark_ink:
        grey = 255 - grey
    img = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.NEAREST)
    if colour:
        img = Image.merge("RGB", (img, img.point(lambda v: int(v * 0.9)), img.point(lambda v: int(v * 0.8))))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


VARIANTS = [
    dict(size=8, fmt="PNG", dark_ink=False),
    dict(size=28, fmt="PNG", dark_ink=True),
    dict(size=64, fmt="JPEG", dark_ink=True),
    dict(size=100, fmt="BMP", dark_ink=False, colour=True),
    dict(size=256, fmt="JPEG", dark_ink=False, colour=True),
]


def holdout_images(n: int, seed: int = 1) -> list[RenderedDigit]:
    """n held-out digits, each rendered in one of the VARIANTS (cycled)."""
    split = load_split()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(split.holdout_labels), size=n, replace=False)
    out = []
    for j, i in enumerate(idx):
        v = VARIANTS[j % len(VARIANTS)]
        desc = f"{v['fmt']} {v['size']}px {'dark' if v['dark_ink'] else 'light'} ink{' colour' if v.get('colour') else ''}"
        out.append(RenderedDigit(int(split.holdout_labels[i]), render(split.holdout_images[i], **v), desc))
    return out
