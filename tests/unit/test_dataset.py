"""Incoming data files of both bundled packages through services.retraining.dataset, on a real local store.

Covered: a good digits .npz and a good diabetes .csv are accepted (moved to accepted/); bad files are
rejected whole, moved to rejected/ with a .report.json whose reasons say what is wrong; a file with
a row twice, and a file giving a known row another target (``Known``), are rejected; ``quarantine``
moves accepted files to quarantined/ with a report; ``classify_key`` with a prefix before datasets/;
``incoming_files`` and ``load_accepted`` (rows and sha256 of each file); a plain .npy named .npz is
rejected (not a crash), and a second accepted file with the same name keeps the first.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from services.modelkit import DataRejected
from services.modelkit.discovery import load_package
from services.models.diabetes.data import FEATURES, TARGET
from services.models.digits.gates import shift_one_pixel
from services.retraining import dataset
from services.retraining.dataset import DataPaths, Known, check_file, classify_key, ingest
from services.storage import open_store

DIGITS = load_package("services.models.digits")
DIABETES = load_package("services.models.diabetes")
DIGITS_SPLIT, DIABETES_SPLIT = DIGITS.base_data(), DIABETES.base_data()
# Rows no data holds yet: training digits moved one pixel, diabetes training rows nudged a little.
NEW_IMAGES, NEW_LABELS = shift_one_pixel(DIGITS_SPLIT.train.x[:20]), DIGITS_SPLIT.train.y[:20]
NEW_ROWS, NEW_TARGETS = DIABETES_SPLIT.train.x[:15] + 0.001, DIABETES_SPLIT.train.y[:15]


def npz(images, labels) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    return buf.getvalue()


def csv(rows, targets, columns=(*FEATURES, TARGET)) -> bytes:
    lines = [",".join(columns)]
    lines += [",".join(repr(float(v)) for v in (*row, target)) for row, target in zip(rows, targets)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path}/bucket")


def put_incoming(store, package, name: str, data: bytes) -> str:
    key = f"{DataPaths(package.name).incoming}{name}"
    store.put_bytes(key, data)
    return key


def rejected(store, package, name: str, data: bytes, known: Known | None = None) -> list[str]:
    """Ingest one file that must be rejected: checks where it went and returns the report's reasons."""
    paths = DataPaths(package.name)
    key = put_incoming(store, package, name, data)
    report, rows = ingest(store, package, key, known or Known())
    assert rows is None and not report.accepted and report.reasons
    assert not store.exists(key) and not store.exists(f"{paths.accepted}{name}")
    assert store.get_bytes(f"{paths.rejected}{name}") == data  # the file itself, whole
    stored = json.loads(store.get_bytes(f"{paths.rejected}{name}.report.json"))
    assert stored["accepted"] is False and stored["key"] == key
    assert stored["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["reasons"] == report.reasons
    return report.reasons


# ---- good files ---------------------------------------------------------------------------------

def test_a_good_digits_npz_is_accepted(store):
    data = npz(NEW_IMAGES, NEW_LABELS)
    key = put_incoming(store, DIGITS, "good.npz", data)
    known = Known()
    report, rows = ingest(store, DIGITS, key, known)
    assert report.accepted and report.rows == 20 and report.reasons == []
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert not store.exists(key) and store.get_bytes("datasets/digits/accepted/good.npz") == data
    assert not store.exists("datasets/digits/rejected/good.npz.report.json")
    assert rows.x.shape == (20, 8, 8) and rows.x.dtype == np.float32
    np.testing.assert_array_equal(rows.y, NEW_LABELS)
    assert known.conflicts(rows) == 0 and len(known.targets) == 20  # what it holds is known from now on


def test_a_good_digits_csv_with_flat_pixels_is_accepted(store):
    header = [f"p{i}" for i in range(64)] + ["label"]
    body = [",".join(str(int(v)) for v in (*img.reshape(-1), label)) for img, label in zip(NEW_IMAGES, NEW_LABELS)]
    key = put_incoming(store, DIGITS, "good.csv", "\n".join([",".join(header), *body]).encode())
    report, rows = ingest(store, DIGITS, key, Known())
    assert report.accepted and len(rows) == 20 and store.exists("datasets/digits/accepted/good.csv")


def test_a_good_diabetes_csv_in_any_column_order_is_accepted(store):
    columns = (TARGET, *reversed(FEATURES))
    lines = [",".join(columns)] + [",".join(repr(float(v)) for v in (t, *reversed(row)))
                                   for row, t in zip(NEW_ROWS, NEW_TARGETS)]
    key = put_incoming(store, DIABETES, "good.csv", "\n".join(lines).encode())
    report, rows = ingest(store, DIABETES, key, Known())
    assert report.accepted and report.rows == 15
    assert store.exists("datasets/diabetes/accepted/good.csv") and not store.exists(key)
    np.testing.assert_allclose(rows.x, NEW_ROWS)
    np.testing.assert_allclose(rows.y, NEW_TARGETS)


def test_a_file_over_the_size_limit_is_rejected_unread(store, monkeypatch):
    data = npz(NEW_IMAGES, NEW_LABELS)
    key = put_incoming(store, DIGITS, "huge.npz", data)
    monkeypatch.setattr(store, "get_bytes", lambda k: pytest.fail(f"read {k}"))  # never read into memory
    report, rows = ingest(store, DIGITS, key, Known(), max_bytes=len(data) - 1)
    assert rows is None and not report.accepted
    assert report.reasons == [f"the file is {len(data)} bytes; files over {len(data) - 1} bytes are not read "
                              "(RTS_RETRAIN_MAX_FILE_MB): split it"]
    assert not store.exists(key) and store.exists("datasets/digits/rejected/huge.npz")
    assert store.exists("datasets/digits/rejected/huge.npz.report.json")


# ---- bad digits files ---------------------------------------------------------------------------

def test_digits_pixels_out_of_range_are_rejected(store):
    images = NEW_IMAGES.copy()
    images[3, 4, 4] = 17.0
    reasons = rejected(store, DIGITS, "bright.npz", npz(images, NEW_LABELS))
    assert any("pixel values must be in 0..16" in r and "17" in r for r in reasons)


def test_digits_of_the_wrong_shape_are_rejected(store):
    reasons = rejected(store, DIGITS, "small.npz", npz(NEW_IMAGES[:, :7, :7], NEW_LABELS))
    assert any("images must have shape (n, 8, 8) or (n, 64)" in r and "(20, 7, 7)" in r for r in reasons)


@pytest.mark.parametrize("bad", [10, -1, 2.5])
def test_digits_labels_outside_0_to_9_are_rejected(store, bad):
    labels = NEW_LABELS.astype(np.float64)
    labels[5] = bad
    reasons = rejected(store, DIGITS, "labels.npz", npz(NEW_IMAGES, labels))
    assert any("labels must be integers 0..9" in r and str(float(bad)) in r for r in reasons)


def test_a_digits_npz_that_is_not_a_zip_is_rejected(store):
    reasons = rejected(store, DIGITS, "text.npz", b"images,labels\nthis is not a zip archive\n")
    assert any("not a .npz file" in r for r in reasons)


def test_a_digits_npz_without_labels_is_rejected(store):
    buf = io.BytesIO()
    np.savez(buf, images=NEW_IMAGES)
    reasons = rejected(store, DIGITS, "nolabels.npz", buf.getvalue())
    assert any("lacks arrays ['labels']" in r for r in reasons)


def test_every_reason_is_reported_at_once(store):
    images, labels = NEW_IMAGES.copy(), NEW_LABELS.copy()
    images[0, 0, 0], labels[0] = 99.0, 12
    reasons = rejected(store, DIGITS, "both.npz", npz(images, labels))
    assert len(reasons) == 2


def test_a_plain_npy_file_named_npz_is_rejected_not_a_crash(store):
    buf = io.BytesIO()
    np.save(buf, NEW_IMAGES)
    reasons = rejected(store, DIGITS, "plain.npz", buf.getvalue())
    assert any("npz" in r for r in reasons)


# ---- bad diabetes files -------------------------------------------------------------------------

def test_a_diabetes_csv_missing_a_column_is_rejected(store):
    columns = tuple(c for c in (*FEATURES, TARGET) if c != "bmi")
    rows = np.delete(NEW_ROWS, FEATURES.index("bmi"), axis=1)
    reasons = rejected(store, DIABETES, "nobmi.csv", csv(rows, NEW_TARGETS, columns))
    assert any("lacks columns ['bmi']" in r for r in reasons)


def test_a_diabetes_csv_with_an_extra_column_is_rejected(store):
    rows = np.column_stack([NEW_ROWS, np.zeros(len(NEW_ROWS))])
    columns = (*FEATURES, "cholesterol", TARGET)
    lines = [",".join(columns)] + [",".join(repr(float(v)) for v in (*row, t)) for row, t in zip(rows, NEW_TARGETS)]
    reasons = rejected(store, DIABETES, "extra.csv", "\n".join(lines).encode())
    assert any("not features: ['cholesterol']" in r for r in reasons)


def test_a_diabetes_csv_with_a_non_numeric_cell_is_rejected(store):
    text = csv(NEW_ROWS, NEW_TARGETS).decode().splitlines()
    cells = text[3].split(",")
    cells[FEATURES.index("bp")] = "high"
    text[3] = ",".join(cells)
    reasons = rejected(store, DIABETES, "word.csv", "\n".join(text).encode())
    assert any("line 4" in r and "'bp'" in r and "not a number" in r for r in reasons)


def test_a_diabetes_csv_with_an_out_of_range_value_is_rejected(store):
    rows = NEW_ROWS.copy()
    rows[2, FEATURES.index("age")] = 0.5  # declared range -0.16..0.17
    reasons = rejected(store, DIABETES, "old.csv", csv(rows, NEW_TARGETS))
    assert any("column 'age'" in r and "outside" in r and "data row 3" in r for r in reasons)


def test_a_diabetes_csv_with_an_out_of_range_target_is_rejected(store):
    targets = NEW_TARGETS.copy()
    targets[0] = -5.0
    reasons = rejected(store, DIABETES, "negative.csv", csv(NEW_ROWS, targets))
    assert any("column 'target'" in r for r in reasons)


@pytest.mark.parametrize("data", [b"", b"\n", csv([], [])], ids=["empty", "blank-line", "header-only"])
def test_an_empty_diabetes_csv_is_rejected(store, data):
    reasons = rejected(store, DIABETES, "empty.csv", data)
    assert any("at least one data row" in r or "no data rows" in r for r in reasons)


# ---- checks every model shares ------------------------------------------------------------------

def test_a_file_with_the_same_row_twice_is_rejected(store):
    images = np.concatenate([NEW_IMAGES, NEW_IMAGES[4:5]])
    labels = np.concatenate([NEW_LABELS, NEW_LABELS[4:5]])
    reasons = rejected(store, DIGITS, "twice.npz", npz(images, labels))
    assert reasons == ["1 rows appear more than once in the file"]
    reasons = rejected(store, DIABETES, "twice.csv", csv(np.vstack([NEW_ROWS, NEW_ROWS[:2]]),
                                                        np.concatenate([NEW_TARGETS, NEW_TARGETS[:2]])))
    assert reasons == ["2 rows appear more than once in the file"]


def test_a_file_giving_a_known_row_another_target_is_rejected(store):
    known = Known()
    known.add(DIABETES_SPLIT.train, overwrite=False)
    rows, targets = DIABETES_SPLIT.train.x[:5], DIABETES_SPLIT.train.y[:5].copy()
    targets[1] += 10.0
    reasons = rejected(store, DIABETES, "relabel.csv", csv(rows, targets), known)
    assert reasons == ["1 rows are already in the data with a different target"]


def test_known_rows_with_the_same_target_are_not_a_conflict():
    known = Known()
    known.add(DIGITS_SPLIT.train, overwrite=False)
    same = check_file(DIGITS, "again.npz", npz(DIGITS_SPLIT.train.x[:10], DIGITS_SPLIT.train.y[:10]), known)
    assert len(same) == 10
    labels = DIGITS_SPLIT.train.y[:10].copy()
    labels[0] = (labels[0] + 1) % 10
    with pytest.raises(DataRejected, match="1 rows are already in the data with a different target"):
        check_file(DIGITS, "relabel.npz", npz(DIGITS_SPLIT.train.x[:10], labels), known)


def test_a_later_file_in_the_same_run_may_not_contradict_an_earlier_one(store):
    known = Known()
    first = put_incoming(store, DIGITS, "first.npz", npz(NEW_IMAGES, NEW_LABELS))
    assert ingest(store, DIGITS, first, known)[0].accepted
    relabelled = (NEW_LABELS + 1) % 10
    reasons = rejected(store, DIGITS, "second.npz", npz(NEW_IMAGES[:5], relabelled[:5]), known)
    assert reasons == ["5 rows are already in the data with a different target"]


def test_a_second_accepted_file_with_the_same_name_keeps_the_first(store):
    known = Known()
    for images, labels in ((NEW_IMAGES[:10], NEW_LABELS[:10]), (NEW_IMAGES[10:], NEW_LABELS[10:])):
        key = put_incoming(store, DIGITS, "batch.npz", npz(images, labels))
        assert ingest(store, DIGITS, key, known)[0].accepted
    parts, _ = dataset.load_accepted(store, DIGITS)
    assert sum(len(p) for p in parts) == 20


# ---- quarantine ---------------------------------------------------------------------------------

def test_quarantine_moves_accepted_files_out_with_a_report(store):
    known = Known()
    keys = [put_incoming(store, DIGITS, name, npz(NEW_IMAGES[i::2], NEW_LABELS[i::2]))
            for i, name in enumerate(("q1.npz", "q2.npz"))]
    accepted = [ingest(store, DIGITS, key, known)[0].moved_to for key in keys]
    assert accepted == ["datasets/digits/accepted/q1.npz", "datasets/digits/accepted/q2.npz"]
    moved = dataset.quarantine(store, DIGITS, [*accepted, "datasets/digits/accepted/never.npz"], "run-7",
                               "failed gates: ['per_class_recall']")
    assert moved == ["datasets/digits/quarantined/q1.npz", "datasets/digits/quarantined/q2.npz"]
    assert [o.key for o in store.list("datasets/digits/accepted/")] == []
    report = json.loads(store.get_bytes("datasets/digits/quarantined/q1.npz.report.json"))
    assert report == {"key": "datasets/digits/quarantined/q1.npz", "from": "datasets/digits/accepted/q1.npz",
                      "run_id": "run-7", "reason": "failed gates: ['per_class_recall']"}
    assert dataset.load_accepted(store, DIGITS) == ([], [])


# ---- keys, listings, accepted data --------------------------------------------------------------

@pytest.mark.parametrize("key, expected", [
    ("datasets/digits/incoming/x.npz", ("digits", "incoming", "x.npz")),
    ("data/datasets/digits/incoming/x.npz", ("digits", "incoming", "x.npz")),
    ("a/b/datasets/diabetes/requests/r.json", ("diabetes", "requests", "r.json")),
    ("datasets/digits/accepted/x.npz", None),
    ("datasets/digits/rejected/x.npz.report.json", None),
    ("datasets/digits/incoming/sub/x.npz", None),
    ("mydatasets/digits/incoming/x.npz", None),
    ("datasets/digits/incoming/", None),
])
def test_classify_key(key, expected):
    assert classify_key(key) == expected


def test_incoming_files_lists_only_data_files_of_the_model(store):
    for name in ("a.npz", "b.csv", "c.txt", ".hidden.npz"):
        put_incoming(store, DIGITS, name, b"x")
    put_incoming(store, DIABETES, "d.csv", b"x")
    put_incoming(store, DIABETES, "e.npz", b"x")
    assert dataset.incoming_files(store, DIGITS) == ["datasets/digits/incoming/a.npz",
                                                     "datasets/digits/incoming/b.csv"]
    assert dataset.incoming_files(store, DIABETES) == ["datasets/diabetes/incoming/d.csv"]


def test_load_accepted_returns_the_rows_and_sha256_of_each_file(store):
    known = Known()
    blobs = {"l1.npz": npz(NEW_IMAGES[:8], NEW_LABELS[:8]), "l2.npz": npz(NEW_IMAGES[8:], NEW_LABELS[8:])}
    for name, data in blobs.items():
        ingest(store, DIGITS, put_incoming(store, DIGITS, name, data), known)
    store.put_bytes("datasets/digits/accepted/notes.txt", b"not data")
    parts, files = dataset.load_accepted(store, DIGITS)
    assert files == [{"key": f"datasets/digits/accepted/{name}", "sha256": hashlib.sha256(data).hexdigest(),
                      "rows": n} for (name, data), n in zip(blobs.items(), (8, 12))]
    np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), NEW_IMAGES)
    np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), NEW_LABELS)
