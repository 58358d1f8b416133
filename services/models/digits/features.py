"""Digit image -> the 64 features the models were trained on.

The same function turns the 8x8 training images and any served image into features, so training
and serving cannot drift apart: `normalize_digit` is the only place that knows the feature layout.

Layout: 8x8 grid, row-major, ink bright, values 0..16 (the layout of sklearn's `load_digits`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GRID = 8
MAX_VALUE = 16.0
_INK_THRESHOLD = 0.2  # share of the brightest ink that counts as part of the digit's bounding box


def normalize_digit(gray: np.ndarray) -> np.ndarray:
    """Map a 2-D grey image (any size, any polarity, values 0..1) to 64 float32 features.

    Steps: make ink bright (background is what the border mostly is), remove the background level,
    stretch ink to full scale, crop to the digit's bounding box, area-resize its longer side to 8 cells,
    centre it on the 8x8 grid, scale to 0..16.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise ValueError(f"expected a 2-D image, got shape {g.shape}")
    border = np.concatenate([g[0, :], g[-1, :], g[:, 0], g[:, -1]])
    background = float(np.median(border))
    if background > 0.5:
        g = 1.0 - g
        background = 1.0 - background
    g = np.clip(g - background, 0.0, None)
    peak = float(g.max())
    if peak <= 1e-6:
        return np.zeros(GRID * GRID, dtype=np.float32)  # blank page: nothing to crop
    g = g / peak
    rows = np.flatnonzero((g > _INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((g > _INK_THRESHOLD).any(axis=0))
    g = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Scale the longer side to the grid first, then centre with whole-cell padding: padding at
    # the source resolution would shift the digit by fractions of a cell, depending on image size.
    h, w = g.shape
    scale = GRID / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(g, mode="F").resize((tw, th), Image.Resampling.BOX), dtype=np.float32)
    grid = np.zeros((GRID, GRID), dtype=np.float32)
    top, left = (GRID - th) // 2, (GRID - tw) // 2
    grid[top : top + th, left : left + tw] = resized
    out = grid.reshape(-1)
    return np.clip(out, 0.0, 1.0) * MAX_VALUE


def pixels_to_gray(pixels: np.ndarray) -> np.ndarray:
    """8x8 pixel grid on the 0..16 scale (as in load_digits) -> grey 0..1."""
    return np.clip(np.asarray(pixels, dtype=np.float32) / MAX_VALUE, 0.0, 1.0)
