"""Incoming labelled data: parse, check against the training data's schema, accept or reject.

Files land under ``datasets/digits/incoming/`` in the data bucket:

- ``.npz`` with arrays ``images`` (n, 8, 8) or (n, 64) and ``labels`` (n,);
- ``.csv`` with 64 pixel columns and a ``label`` column (header row required).

The schema is the training data's: 8x8 pixels on the 0..16 scale, finite, labels 0..9, at least
one row, no missing values, no duplicate images inside the file, and no image that the data
already holds under another label. A file that fails is rejected whole (never half-used): it
moves to ``rejected/`` with a ``.report.json`` saying why, and is never retried.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from services.storage import ObjectStore

DATASET = "datasets/digits"
INCOMING = f"{DATASET}/incoming/"
ACCEPTED = f"{DATASET}/accepted/"
REJECTED = f"{DATASET}/rejected/"
QUARANTINED = f"{DATASET}/quarantined/"
REQUESTS = f"{DATASET}/requests/"  # retrain requests as objects (drift, operators): same event path as data
SUFFIXES = (".npz", ".csv")
MAX_ROWS = 100_000


class DataRejected(ValueError):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class FileReport:
    key: str
    sha256: str
    accepted: bool
    rows: int = 0
    reasons: list[str] = field(default_factory=list)
    checked_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def parse_file(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """-> images (n, 8, 8) float32 on 0..16 and labels (n,) int64. Raises DataRejected."""
    if name.endswith(".npz"):
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                missing = {"images", "labels"} - set(npz.files)
                if missing:
                    raise DataRejected([f"npz file lacks arrays {sorted(missing)} (has {sorted(npz.files)})"])
                images, labels = npz["images"], npz["labels"]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DataRejected):
                raise
            raise DataRejected([f"not a readable .npz file: {exc}"]) from None
    elif name.endswith(".csv"):
        images, labels = _parse_csv(data)
    else:
        raise DataRejected([f"unsupported file type {name.rsplit('/', 1)[-1]!r}; send .npz or .csv"])
    return _check_arrays(images, labels)


def _parse_csv(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except UnicodeDecodeError:
        raise DataRejected(["CSV file is not UTF-8 text"]) from None
    if len(rows) < 2:
        raise DataRejected(["CSV file needs a header row and at least one data row"])
    header = [h.strip() for h in rows[0]]
    if "label" not in header:
        raise DataRejected([f"CSV header has no 'label' column (columns: {header[:5]}...)"])
    label_col = header.index("label")
    pixel_cols = [i for i in range(len(header)) if i != label_col]
    if len(pixel_cols) != 64:
        raise DataRejected([f"CSV needs 64 pixel columns besides 'label', has {len(pixel_cols)}"])
    images, labels, problems = [], [], []
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            problems.append(f"line {line_no}: {len(row)} fields, header has {len(header)}")
            continue
        cells = [row[i].strip() for i in pixel_cols]
        if any(c == "" for c in cells) or row[label_col].strip() == "":
            problems.append(f"line {line_no}: missing values")
            continue
        try:
            images.append([float(c) for c in cells])
            labels.append(float(row[label_col]))
        except ValueError:
            problems.append(f"line {line_no}: a value is not a number")
    if problems:
        raise DataRejected(problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else []))
    return np.asarray(images), np.asarray(labels)


def _check_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reasons = []
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 2 and images.shape[1] == 64:
        images = images.reshape(-1, 8, 8)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise DataRejected([f"images must have shape (n, 8, 8) or (n, 64), got {images.shape}"])
    n = images.shape[0]
    if n == 0:
        raise DataRejected(["the file has no rows"])
    if n > MAX_ROWS:
        reasons.append(f"{n} rows is more than the {MAX_ROWS} allowed in one file")
    if labels.shape != (n,):
        raise DataRejected([f"labels must have shape ({n},), got {labels.shape}"])
    if not (np.issubdtype(images.dtype, np.number) and np.issubdtype(labels.dtype, np.number)):
        raise DataRejected(["images and labels must be numeric"])
    images, labels = images.astype(np.float32), labels.astype(np.float64)
    if not np.isfinite(images).all() or not np.isfinite(labels).all():
        reasons.append("missing values: NaN or infinity in images or labels")
    elif images.min() < 0 or images.max() > 16:
        reasons.append(f"pixel values must be in 0..16 (load_digits scale), got {images.min():g}..{images.max():g}")
    if np.isfinite(labels).all():
        bad = sorted({float(v) for v in labels if v not in range(10)})
        if bad:
            reasons.append(f"labels must be integers 0..9, found {bad[:5]}")
    if reasons:
        raise DataRejected(reasons)
    hashes = image_hashes(images)
    unique, counts = np.unique(hashes, return_counts=True)
    if (counts > 1).any():
        raise DataRejected([f"{int((counts > 1).sum())} images appear more than once in the file"])
    return images, labels.astype(np.int64)


def image_hashes(images: np.ndarray) -> np.ndarray:
    rounded = np.round(np.asarray(images, dtype=np.float32).reshape(len(images), 64), 3)
    return np.array([hashlib.sha1(row.tobytes()).hexdigest() for row in rounded])


def check_against_known(images: np.ndarray, labels: np.ndarray, known: dict[str, int]) -> None:
    """Refuse images the data already has under a different label (label noise / poisoning)."""
    conflicts = [h for h, label in zip(image_hashes(images), labels) if h in known and known[h] != label]
    if conflicts:
        raise DataRejected([f"{len(conflicts)} images are already in the data with a different label"])


def ingest(store: ObjectStore, key: str, known: dict[str, int]) -> tuple[FileReport, np.ndarray | None,
                                                                          np.ndarray | None]:
    """Check one incoming file; move it to accepted/ or rejected/ (+ report). Returns the data if accepted."""
    data = store.get_bytes(key)
    name = key.rsplit("/", 1)[-1]
    report = FileReport(key=key, sha256=hashlib.sha256(data).hexdigest(), accepted=False)
    try:
        images, labels = parse_file(name, data)
        check_against_known(images, labels, known)
    except DataRejected as exc:
        report.reasons = exc.reasons
        store.put_bytes(f"{REJECTED}{name}.report.json", json.dumps(asdict(report), indent=2).encode())
        store.move(key, f"{REJECTED}{name}")
        return report, None, None
    report.accepted, report.rows = True, int(len(labels))
    store.move(key, f"{ACCEPTED}{name}")
    return report, images, labels


def load_accepted(store: ObjectStore) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """All accepted rows so far, with the files (and their hashes) they came from."""
    images, labels, files = [np.zeros((0, 8, 8), np.float32)], [np.zeros((0,), np.int64)], []
    for obj in store.list(ACCEPTED):
        if not obj.key.endswith(SUFFIXES):
            continue
        data = store.get_bytes(obj.key)
        x, y = parse_file(obj.key, data)
        images.append(x)
        labels.append(y)
        files.append({"key": obj.key, "sha256": hashlib.sha256(data).hexdigest(), "rows": int(len(y))})
    return np.concatenate(images), np.concatenate(labels), files


def quarantine(store: ObjectStore, incoming_keys: list[str], run_id: str, reason: str) -> list[str]:
    """Move the files a failed-gate run accepted out of accepted/, with a report, so no later run uses them."""
    moved = []
    for key in incoming_keys:
        name = key.rsplit("/", 1)[-1]
        src = f"{ACCEPTED}{name}"
        if not store.exists(src):
            continue
        store.move(src, f"{QUARANTINED}{name}")
        store.put_bytes(f"{QUARANTINED}{name}.report.json", json.dumps(
            {"key": f"{QUARANTINED}{name}", "run_id": run_id, "reason": reason}, indent=2).encode())
        moved.append(f"{QUARANTINED}{name}")
    return moved
