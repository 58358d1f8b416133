"""The digits data: sklearn's ``load_digits`` split, the format of new data files, and digits as user files.

Data files under ``datasets/digits/incoming/``:

- ``.npz`` with arrays ``images`` (n, 8, 8) or (n, 64) and ``labels`` (n,);
- ``.csv`` with 64 pixel columns and a ``label`` column (header row required).

Values on the 0..16 scale of ``load_digits``, labels 0..9.

``render`` turns an 8x8 digit into an image file as users send them (PNG/JPEG/BMP, any size, grey,
RGB or RGBA, dark ink on light paper or light on dark): tests and load tests send these, and
training adds digits rendered this way and read back through the serving decoder, so that what the
model learns from is what it is later shown.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from services.modelkit import DataRejected, Dataset, Split

HOLDOUT_SEED = 20240607
HOLDOUT_FRACTION = 0.2
N_CLASSES = 10
MAX_ROWS = 100_000


@lru_cache(maxsize=1)
def load_split() -> Split:
    """The fixed train/holdout split of sklearn's digits; the holdout never enters training."""
    # sklearn is imported here, not above: serving imports this module (file formats, rendering) and never needs
    # sklearn, whose import is a second of every new replica's cold start.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    xtr, xho, ytr, yho = train_test_split(digits.images, digits.target, test_size=HOLDOUT_FRACTION,
                                          random_state=HOLDOUT_SEED, stratify=digits.target)
    return Split(Dataset(xtr.astype(np.float32), ytr.astype(np.int64)),
                 Dataset(xho.astype(np.float32), yho.astype(np.int64)),
                 f"sklearn load_digits, {1 - HOLDOUT_FRACTION:.0%} train split (seed {HOLDOUT_SEED})")


def parse_file(name: str, data: bytes) -> Dataset:
    """-> images (n, 8, 8) float32 on 0..16 and labels (n,) int64. Raises DataRejected."""
    if name.endswith(".npz"):
        if not zipfile.is_zipfile(io.BytesIO(data)):  # np.load would read a plain .npy (or pickle) instead
            raise DataRejected(["not a .npz file (a zip of arrays, as numpy.savez writes): save it with "
                                "np.savez(path, images=..., labels=...)"])
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                missing = {"images", "labels"} - set(npz.files)
                if missing:
                    raise DataRejected([f"npz file lacks arrays {sorted(missing)} (has {sorted(npz.files)})"])
                images, labels = npz["images"], npz["labels"]
        except DataRejected:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
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


def _check_arrays(images: np.ndarray, labels: np.ndarray) -> Dataset:
    reasons = []
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 2 and images.shape[1] == 64:
        images = images.reshape(-1, 8, 8)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise DataRejected([f"images must have shape (n, 8, 8) or (n, 64), got {images.shape}"])
    n = images.shape[0]
    if n > MAX_ROWS:
        reasons.append(f"{n} rows is more than the {MAX_ROWS} allowed in one file")
    if labels.shape != (n,):
        raise DataRejected([f"labels must have shape ({n},), got {labels.shape}"])
    if not (np.issubdtype(images.dtype, np.number) and np.issubdtype(labels.dtype, np.number)):
        raise DataRejected(["images and labels must be numeric"])
    images, labels = images.astype(np.float32), labels.astype(np.float64)
    if not np.isfinite(images).all() or not np.isfinite(labels).all():
        reasons.append("missing values: NaN or infinity in images or labels")
    elif n and (images.min() < 0 or images.max() > 16):
        reasons.append(f"pixel values must be in 0..16 (load_digits scale), got {images.min():g}..{images.max():g}")
    if np.isfinite(labels).all():
        bad = sorted({float(v) for v in labels if v not in range(N_CLASSES)})
        if bad:
            reasons.append(f"labels must be integers 0..9, found {bad[:5]}")
    if reasons:
        raise DataRejected(reasons)
    return Dataset(images, labels.astype(np.int64))


@dataclass(frozen=True)
class FileVariant:
    """How a user's file shows a digit."""

    size: int = 8
    fmt: str = "PNG"
    dark_ink: bool = False
    mode: str = "L"  # L (grey), RGB, RGBA

    def __str__(self) -> str:
        return f"{self.fmt} {self.size}px {self.mode} {'dark' if self.dark_ink else 'light'} ink"


EXACT = FileVariant()  # the 8x8 grey PNG that holds exactly the training pixels


def render(pixels: np.ndarray, variant: FileVariant = EXACT) -> bytes:
    grey = (np.clip(pixels, 0, 16) / 16.0 * 255).astype(np.uint8)
    if variant.dark_ink:
        grey = 255 - grey
    img = Image.fromarray(grey, mode="L").resize((variant.size, variant.size), Image.Resampling.NEAREST)
    if variant.mode == "RGB":
        img = Image.merge("RGB", (img, img.point(lambda v: int(v * 0.9)), img.point(lambda v: int(v * 0.8))))
    elif variant.mode == "RGBA":
        img = img.convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, format=variant.fmt, **({"quality": 92} if variant.fmt == "JPEG" else {}))
    return buf.getvalue()


def random_variant(rng: np.random.Generator) -> FileVariant:
    """A file as users send them: PNG/JPEG/BMP, 8-100 px, grey/RGB/RGBA (PNG only), either polarity."""
    fmt = str(rng.choice(["PNG", "JPEG", "BMP"]))
    modes = ["L", "RGB", "RGBA"] if fmt == "PNG" else ["L", "RGB"]
    return FileVariant(size=int(rng.integers(8, 101)), fmt=fmt, dark_ink=bool(rng.integers(2)),
                       mode=str(rng.choice(modes)))


def user_file_variants() -> list[FileVariant]:
    """A grid of the files users send, for measuring training-serving skew."""
    return [FileVariant(size, fmt, dark, mode) for size in (8, 12, 20, 28, 50, 100) for fmt in ("PNG", "JPEG", "BMP")
            for dark in (False, True) for mode in ("L", "RGB", "RGBA") if not (mode == "RGBA" and fmt != "PNG")]
