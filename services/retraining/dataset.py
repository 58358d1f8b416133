"""Incoming labelled data of one model: check each file, accept or reject it whole, keep what was accepted.

Each model has its own prefix in the data bucket::

    datasets/<model>/incoming/      new files land here (uploads, bucket notifications point here)
    datasets/<model>/accepted/      files a run checked and trains on, from then on
    datasets/<model>/rejected/      files that failed the checks, each with <name>.report.json saying why
    datasets/<model>/quarantined/   accepted files whose run made a model that failed a gate
    datasets/<model>/requests/      retrain requests as objects (drift, operators): the same event path
    datasets/<model>/feedback/      labelled feedback the rollout controller wrote (rows and truths,
                                    services/rollout/labelled.py): trained on like accepted files

A file is checked by its model package (``parse_data``: format, shapes, ranges, label set), then
here for what every model shares: at least one row, no row twice in the file, no row the data
already holds with another target (label noise or poisoning). A file that fails is never
half-used: it moves to ``rejected/`` with a report, and is never retried.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from services.modelkit import DataRejected, Dataset, ModelPackage, row_hashes
from services.rollout.labelled import feedback_prefix, read_file
from services.storage import ObjectStore

_KEY = re.compile(r"(?:^|/)datasets/([^/]+)/(incoming|requests)/([^/]+)$")


@dataclass(frozen=True)
class DataPaths:
    model: str

    @property
    def root(self) -> str:
        return f"datasets/{self.model}/"

    @property
    def incoming(self) -> str:
        return f"{self.root}incoming/"

    @property
    def accepted(self) -> str:
        return f"{self.root}accepted/"

    @property
    def rejected(self) -> str:
        return f"{self.root}rejected/"

    @property
    def quarantined(self) -> str:
        return f"{self.root}quarantined/"

    @property
    def requests(self) -> str:
        return f"{self.root}requests/"

    @property
    def feedback(self) -> str:
        return feedback_prefix(self.model)


def classify_key(key: str) -> tuple[str, str, str] | None:
    """(model, "incoming" | "requests", file name) for a key under a model's data prefix, else None.

    Works on bucket keys with any prefix before ``datasets/`` (``data/datasets/churn/incoming/a.csv``).
    """
    match = _KEY.search(key)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def is_data_file(name: str, package: ModelPackage) -> bool:
    return not name.startswith(".") and name.endswith(package.data_suffixes)


@dataclass
class FileReport:
    key: str  # where it arrived (incoming/)
    sha256: str
    accepted: bool
    moved_to: str = ""  # accepted/ or rejected/ key: the name it arrived with, made unique
    rows: int = 0
    reasons: list[str] = field(default_factory=list)
    checked_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


def free_key(store: ObjectStore, folder: str, name: str, sha256: str) -> str:
    """``folder/name``, or ``folder/<stem>.<sha8><suffix>`` when a file of that name is already there:
    a second upload under a name never replaces the first (its rows, and the lineage naming it)."""
    key = f"{folder}{name}"
    if not store.exists(key):
        return key
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, f".{suffix}") if dot else (name, "")
    for n in range(1000):
        key = f"{folder}{stem}.{sha256[:8]}{f'-{n}' if n else ''}{suffix}"
        if not store.exists(key):
            return key
    raise FileExistsError(f"no free name for {name} under {folder}")


class Known:
    """Rows the data already holds, with their targets: a new file may not contradict them."""

    def __init__(self) -> None:
        self.targets: dict[str, float] = {}

    def add(self, data: Dataset, overwrite: bool = True) -> None:
        for h, target in zip(row_hashes(data.x), data.y):
            if overwrite or h not in self.targets:
                self.targets[h] = float(target)

    def conflicts(self, data: Dataset) -> int:
        return sum(1 for h, target in zip(row_hashes(data.x), data.y)
                   if h in self.targets and abs(self.targets[h] - float(target)) > 1e-9)


def check_file(package: ModelPackage, name: str, data: bytes, known: Known) -> Dataset:
    """The rows of one file, or DataRejected with every reason."""
    rows = package.parse_data(name, data)
    if len(rows) == 0:
        raise DataRejected(["the file has no rows"])
    hashes = row_hashes(rows.x)
    _, counts = np.unique(hashes, return_counts=True)
    if (counts > 1).any():
        raise DataRejected([f"{int((counts > 1).sum())} rows appear more than once in the file"])
    conflicts = known.conflicts(rows)
    if conflicts:
        raise DataRejected([f"{conflicts} rows are already in the data with a different target"])
    return rows


MAX_FILE_BYTES = 256 * 1024 * 1024  # RTS_RETRAIN_MAX_FILE_MB's default


def ingest(store: ObjectStore, package: ModelPackage, key: str, known: Known,
           max_bytes: int = MAX_FILE_BYTES) -> tuple[FileReport, Dataset | None]:
    """Check one incoming file; move it to accepted/ or rejected/ (+ report). Returns its rows if accepted.

    A file over ``max_bytes`` is rejected unread: one huge upload never takes the run's memory."""
    paths = DataPaths(package.name)
    name = key.rsplit("/", 1)[-1]
    info = store.head(key)
    if info is not None and info.size > max_bytes:
        report = FileReport(key=key, sha256="", accepted=False,
                            reasons=[f"the file is {info.size} bytes; files over {max_bytes} bytes are not read "
                                     "(RTS_RETRAIN_MAX_FILE_MB): split it"])
        return _reject(store, paths, name, report), None
    data = store.get_bytes(key)
    report = FileReport(key=key, sha256=hashlib.sha256(data).hexdigest(), accepted=False)
    try:
        rows = check_file(package, name, data, known)
    except DataRejected as exc:
        report.reasons = exc.reasons
        return _reject(store, paths, name, report), None
    report.accepted, report.rows = True, len(rows)
    report.moved_to = free_key(store, paths.accepted, name, report.sha256)
    store.move(key, report.moved_to)
    known.add(rows)
    return report, rows


def _reject(store: ObjectStore, paths: DataPaths, name: str, report: FileReport) -> FileReport:
    report.moved_to = free_key(store, paths.rejected, name, report.sha256 or f"{time.time_ns():x}")
    store.put_bytes(f"{report.moved_to}.report.json", json.dumps(asdict(report), indent=2).encode())
    store.move(report.key, report.moved_to)
    return report


def incoming_files(store: ObjectStore, package: ModelPackage) -> list[str]:
    return [obj.key for obj in store.list(DataPaths(package.name).incoming)
            if is_data_file(obj.key.rsplit("/", 1)[-1], package)]


def load_accepted(store: ObjectStore, package: ModelPackage) -> tuple[list[Dataset], list[dict]]:
    """Every accepted file's rows, with the files (and their hashes) they came from."""
    parts, files = [], []
    for obj in store.list(DataPaths(package.name).accepted):
        if not is_data_file(obj.key.rsplit("/", 1)[-1], package):
            continue
        data = store.get_bytes(obj.key)
        rows = package.parse_data(obj.key, data)
        parts.append(rows)
        files.append({"key": obj.key, "sha256": hashlib.sha256(data).hexdigest(), "rows": len(rows)})
    return parts, files


def load_feedback(store: ObjectStore, package: ModelPackage) -> tuple[list[Dataset], list[dict]]:
    """Every labelled feedback file's rows (written by the rollout controller), with the files and their hashes."""
    parts, files = [], []
    for obj in store.list(DataPaths(package.name).feedback):
        if not obj.key.endswith(".npz"):
            continue
        data = store.get_bytes(obj.key)
        x, y = read_file(data)
        parts.append(Dataset(x, y))
        files.append({"key": obj.key, "sha256": hashlib.sha256(data).hexdigest(), "rows": len(y)})
    return parts, files


def quarantine(store: ObjectStore, package: ModelPackage, accepted_keys: list[str], run_id: str,
               reason: str) -> list[str]:
    """Move accepted files (and feedback files) whose data made a model that failed a gate to quarantined/,
    with a report, so no later run trains on them."""
    paths = DataPaths(package.name)
    moved = []
    for key in accepted_keys:
        info = store.head(key)
        if info is None or not key.startswith((paths.accepted, paths.feedback)):
            continue
        target = free_key(store, paths.quarantined, key.rsplit("/", 1)[-1], info.etag or run_id)
        store.move(key, target)
        store.put_bytes(f"{target}.report.json", json.dumps(
            {"key": target, "from": key, "run_id": run_id, "reason": reason}, indent=2).encode())
        moved.append(target)
    return moved
