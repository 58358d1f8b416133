"""Postprocessing shared by classifiers: class scores -> label, confidence and top-k."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class ClassificationPostprocess:
    def __init__(self, labels: Sequence[object]) -> None:
        self.labels = list(labels)

    def __call__(self, scores: np.ndarray, top_k: int) -> list[dict]:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise ValueError(f"expected scores of shape (n, {len(self.labels)}), got {scores.shape}")
        total = scores.sum(axis=1, keepdims=True)
        probs = np.divide(scores, total, out=np.zeros_like(scores), where=total > 0)
        k = max(1, min(int(top_k), len(self.labels)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, idx in zip(probs, order):
            top = [{"label": self.labels[i], "score": round(float(row[i]), 6)} for i in idx]
            out.append({"label": top[0]["label"], "confidence": top[0]["score"], "top_k": top})
        return out
