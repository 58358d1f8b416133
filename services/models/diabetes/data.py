"""The diabetes data: sklearn's ``load_diabetes`` split, the declared feature ranges, and new data files.

Data files under ``datasets/diabetes/incoming/`` are CSV with a header naming the ten features
(``age, sex, bmi, bp, s1, s2, s3, s4, s5, s6``, scaled as ``load_diabetes()`` returns them) and
``target`` (disease progression one year after baseline), in any column order::

    age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target
    0.0381,0.0507,0.0617,0.0219,-0.0442,-0.0348,-0.0434,-0.0026,0.0199,-0.0176,151

Rows are kept as float64 as read (``features`` casts to float32): base rows and uploaded rows
then hash alike, so the platform recognises a holdout row uploaded again and keeps it out of training.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from services.modelkit import DataRejected, Dataset, Split, read_numeric_csv

HOLDOUT_SEED = 20240607
HOLDOUT_FRACTION = 0.2
TARGET = "target"

# Declared range of each feature, as (low, high, description). Chosen once from the 442 rows of
# load_diabetes(): the observed min..max widened by 0.05 on each side (about one standard
# deviation, 0.0476 for every column, since load_diabetes scales each column to unit L2 norm) and
# rounded outward to 0.01. Values beyond that are not patients like those the model learned from
# (or are unscaled measurements); the serving schema refuses them, and so does parse_data.
FIELDS: dict[str, tuple[float, float, str]] = {
    "age": (-0.16, 0.17, "age in years, scaled"),  # observed -0.1072..0.1107
    "sex": (-0.10, 0.11, "sex, scaled (two values in the data)"),  # observed -0.0446..0.0507
    "bmi": (-0.15, 0.23, "body mass index, scaled"),  # observed -0.0903..0.1706
    "bp": (-0.17, 0.19, "average blood pressure, scaled"),  # observed -0.1124..0.1320
    "s1": (-0.18, 0.21, "tc: total serum cholesterol, scaled"),  # observed -0.1268..0.1539
    "s2": (-0.17, 0.25, "ldl: low-density lipoproteins, scaled"),  # observed -0.1156..0.1988
    "s3": (-0.16, 0.24, "hdl: high-density lipoproteins, scaled"),  # observed -0.1023..0.1812
    "s4": (-0.13, 0.24, "tch: total cholesterol / HDL, scaled"),  # observed -0.0764..0.1852
    "s5": (-0.18, 0.19, "ltg: log of serum triglycerides, scaled"),  # observed -0.1261..0.1336
    "s6": (-0.19, 0.19, "glu: blood sugar level, scaled"),  # observed -0.1378..0.1356
}
FEATURES: tuple[str, ...] = tuple(FIELDS)  # the column order of the ensemble's input, as load_diabetes has it
# Observed 25..346. A progression score is positive; beyond 1000 is a unit or column mistake.
TARGET_RANGE = (0.0, 1000.0)


@lru_cache(maxsize=1)
def load_split() -> Split:
    """The fixed train/holdout split of sklearn's diabetes data; the holdout never enters training."""
    # sklearn is imported here, not above: serving imports this module (the declared fields) and never needs
    # sklearn, whose import is a second of every new replica's cold start.
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes()
    if tuple(data.feature_names) != FEATURES:  # the column order is part of the served model
        raise RuntimeError(f"load_diabetes() features are {data.feature_names}, expected {list(FEATURES)}")
    xtr, xho, ytr, yho = train_test_split(data.data, data.target, test_size=HOLDOUT_FRACTION,
                                          random_state=HOLDOUT_SEED)
    return Split(Dataset(xtr.astype(np.float64), ytr.astype(np.float64)),
                 Dataset(xho.astype(np.float64), yho.astype(np.float64)),
                 f"sklearn load_diabetes, {1 - HOLDOUT_FRACTION:.0%} train split (seed {HOLDOUT_SEED})")


def parse_file(name: str, data: bytes) -> Dataset:
    """A CSV data file -> rows (n, 10) float64 in ``FEATURES`` order and targets (n,). Raises DataRejected."""
    if not name.lower().endswith(".csv"):
        raise DataRejected([f"unsupported file type {name.rsplit('/', 1)[-1]!r}; send a .csv file"])
    table = read_numeric_csv(data, columns=FEATURES, target=TARGET)
    reasons = out_of_range(table.x, table.y)
    if reasons:
        raise DataRejected(reasons)
    return Dataset(table.x, table.y)


def out_of_range(x: np.ndarray, y: np.ndarray) -> list[str]:
    """One reason per column with values outside its declared range (rows counted from 1, after the header)."""
    reasons = []
    for j, (column, (low, high, _)) in enumerate(FIELDS.items()):
        reasons += _column_reason(column, x[:, j], low, high)
    reasons += _column_reason(TARGET, y, *TARGET_RANGE)
    if np.abs(x).max() > 1.0:
        # The usual mistake: the raw measurements (age in years, bmi in kg/m2) instead of the scaled ones.
        reasons.append("features look unscaled: send them as load_diabetes() returns them (each column "
                       "mean-centred and scaled to unit L2 norm over its 442 patients), not raw measurements")
    return reasons


def _column_reason(column: str, values: np.ndarray, low: float, high: float) -> list[str]:
    bad = np.flatnonzero((values < low) | (values > high))
    if not len(bad):
        return []
    first = bad[0]
    return [f"column {column!r}: {len(bad)} value(s) outside {low:g}..{high:g}, first in data row {first + 1} "
            f"({values[first]:g})"]
