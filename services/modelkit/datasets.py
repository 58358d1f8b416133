"""Rows and targets, as a model package hands them to the retraining run, and how a file is refused.

Usage (in a model package)::

    def parse_data(self, name, data):
        frame = read_numeric_csv(data, columns=FEATURES, target="target")   # raises DataRejected
        return Dataset(frame.x, frame.y)

The run checks what is common to every model itself (no rows, duplicate rows, rows the data
already holds with another target, the holdout never entering training); a package checks its
own schema (shapes, ranges, label sets) and raises ``DataRejected`` with every reason at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class DataRejected(ValueError):
    """A data file that cannot be used, with each reason a sentence a person can act on."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class Dataset:
    x: np.ndarray  # raw rows, as parse_data returns them (images, feature vectors...)
    y: np.ndarray  # targets: class indices, or values

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} rows but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index) -> "Dataset":
        return Dataset(self.x[index], self.y[index])

    @staticmethod
    def concat(parts: Sequence["Dataset"]) -> "Dataset":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


@dataclass
class Split:
    train: Dataset
    holdout: Dataset  # fixed, never trained on: every version is measured on the same rows
    description: str  # for lineage, e.g. "churn history 2025, 80% train split (seed 7)"


def row_hashes(x: np.ndarray, decimals: int = 6) -> np.ndarray:
    """A fingerprint per row (values rounded), to find duplicates and rows already known."""
    flat = np.round(np.asarray(x, dtype=np.float64).reshape(len(x), -1), decimals) + 0.0  # -0.0 -> 0.0
    return np.array([hashlib.sha1(row.tobytes()).hexdigest() for row in flat])


@dataclass
class NumericTable:
    x: np.ndarray  # (n, len(columns)) float64, in the order of `columns`
    y: np.ndarray  # (n,) float64


def read_numeric_csv(data: bytes, columns: Sequence[str], target: str, max_rows: int = 100_000,
                     max_problems: int = 10) -> NumericTable:
    """A CSV with a header naming every column and the target (any order, no others) -> numbers.

    Every problem is collected (missing or unknown columns, short rows, empty cells, non-numbers,
    NaN or infinity), so one rejection report says everything that is wrong.
    """
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    except UnicodeDecodeError:
        raise DataRejected(["the CSV file is not UTF-8 text"]) from None
    except csv.Error as exc:
        raise DataRejected([f"the CSV file cannot be read: {exc}"]) from None
    if len(rows) < 2:
        raise DataRejected(["the CSV file needs a header row and at least one data row"])
    header = [h.strip() for h in rows[0]]
    wanted = [*columns, target]
    missing = [c for c in wanted if c not in header]
    extra = [c for c in header if c not in wanted]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    reasons = []
    if missing:
        reasons.append(f"the header lacks columns {missing}")
    if extra:
        reasons.append(f"the header has columns that are not features: {extra} (expected {wanted})")
    if duplicated:
        reasons.append(f"columns appear more than once: {duplicated}")
    if reasons:
        raise DataRejected(reasons)
    order = [header.index(c) for c in wanted]
    values, problems = [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"line {line_no}: {len(row)} fields, the header has {len(header)}")
            continue
        parsed = []
        for i in order:
            cell = row[i].strip()
            if cell == "":
                problems.append(f"line {line_no}: column {header[i]!r} is empty")
                break
            try:
                number = float(cell)
            except ValueError:
                problems.append(f"line {line_no}: column {header[i]!r} is not a number ({cell[:20]!r})")
                break
            if not np.isfinite(number):
                problems.append(f"line {line_no}: column {header[i]!r} is {cell} (finite numbers only)")
                break
            parsed.append(number)
        else:
            values.append(parsed)
    if problems:
        more = [f"... and {len(problems) - max_problems} more"] if len(problems) > max_problems else []
        raise DataRejected(problems[:max_problems] + more)
    if not values:
        raise DataRejected(["the CSV file has no data rows"])
    if len(values) > max_rows:
        raise DataRejected([f"{len(values)} rows is more than the {max_rows} allowed in one file"])
    table = np.asarray(values, dtype=np.float64)
    return NumericTable(table[:, :-1], table[:, -1])
