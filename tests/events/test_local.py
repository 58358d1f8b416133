"""The local folder watcher: complete files only, deterministic ids, nothing lost across restarts."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from services.events import OBJECT_CREATED
from services.events.local import LocalFolderSource
from services.telemetry.propagation import trace_carrier
from services.storage import open_store
from tests.events.helpers import producer_span

pytestmark = pytest.mark.timeout(30)

INCOMING = "datasets/digits/incoming/"


def age(path, seconds: float = 5.0) -> None:
    """Make a file look finished long ago, instead of sleeping through the settle time."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def keys(received) -> list[str]:
    return sorted(r.event.data["key"] for r in received)


def test_reports_complete_files_and_ignores_temp_files(tmp_path):
    store = open_store(f"file://{tmp_path}")
    with producer_span() as traceparent:
        store.put_bytes(INCOMING + "a.npz", b"aaa", metadata=trace_carrier())  # atomic, with a sidecar
    incoming = tmp_path / INCOMING
    for name in (".b.npz.x1y2.tmp", "c.csv.tmp", "d.csv.part", ".hidden.csv"):
        (incoming / name).write_bytes(b"partial")
    (tmp_path / "datasets/digits/accepted").mkdir(parents=True)
    (tmp_path / "datasets/digits/accepted/old.npz").write_bytes(b"not under the prefix")
    for path in incoming.iterdir():
        age(path)

    source = LocalFolderSource(tmp_path, prefix=INCOMING, settle_s=0.5)
    [received] = source.receive(timeout_s=2)
    event = received.event
    sha = hashlib.sha256(b"aaa").hexdigest()
    assert event.type == OBJECT_CREATED
    assert event.data["key"] == INCOMING + "a.npz" and event.data["size"] == 3 and event.data["etag"] == sha
    assert event.id == f"{tmp_path.resolve()}/{INCOMING}a.npz@{sha}"
    assert event.data["uri"] == f"file://{tmp_path.resolve()}/{INCOMING}a.npz"
    assert event.traceparent == traceparent
    source.ack(received)
    assert source.receive(timeout_s=0.6) == []  # acked: not again


def test_waits_until_a_file_stops_changing(tmp_path):
    incoming = tmp_path / INCOMING
    incoming.mkdir(parents=True)
    source = LocalFolderSource(tmp_path, prefix=INCOMING, settle_s=1.0, poll_interval_s=0.1)
    (incoming / "growing.csv").write_bytes(b"x,y\n")  # a writer that is still at it
    assert source.receive(timeout_s=0.3) == []
    [received] = source.receive(timeout_s=3)
    assert received.event.data["key"] == INCOMING + "growing.csv"


def test_restart_reports_files_that_arrived_while_down_with_the_same_ids(tmp_path):
    incoming = tmp_path / INCOMING
    incoming.mkdir(parents=True)
    for name in ("one.npz", "two.csv"):
        (incoming / name).write_bytes(name.encode())
        age(incoming / name)
    first = LocalFolderSource(tmp_path, prefix=INCOMING)
    seen = first.receive(max_events=10, timeout_s=1)
    first.ack(seen[0])  # the other one is still being worked on when the process dies
    first.close()

    (incoming / "three.npz").write_bytes(b"3")  # arrives while nobody watches
    age(incoming / "three.npz")
    restarted = LocalFolderSource(tmp_path, prefix=INCOMING).receive(max_events=10, timeout_s=1)
    assert keys(restarted) == [INCOMING + n for n in ("one.npz", "three.npz", "two.csv")]
    # Same file, same id: the consumer recognises what it already acted on.
    assert {r.event.id for r in seen} <= {r.event.id for r in restarted}


def test_unacked_events_come_back_and_changed_files_get_new_ids(tmp_path):
    incoming = tmp_path / INCOMING
    incoming.mkdir(parents=True)
    (incoming / "f.npz").write_bytes(b"v1")
    age(incoming / "f.npz")
    source = LocalFolderSource(tmp_path, prefix=INCOMING, redeliver_after_s=0.5, poll_interval_s=0.1)
    [first] = source.receive(timeout_s=1)
    assert source.receive(timeout_s=0.2) == []  # handed out, not acked yet
    time.sleep(0.6)
    [again] = source.receive(timeout_s=1)
    assert again.event.id == first.event.id
    source.ack(again)

    (incoming / "f.npz").write_bytes(b"v2, different")
    age(incoming / "f.npz", 3)
    [changed] = source.receive(timeout_s=1)
    assert changed.event.id != first.event.id
    assert changed.event.data["etag"] == hashlib.sha256(b"v2, different").hexdigest()


def test_max_events_keeps_the_rest_for_the_next_receive(tmp_path):
    incoming = tmp_path / INCOMING
    incoming.mkdir(parents=True)
    for i in range(5):
        (incoming / f"{i}.csv").write_bytes(str(i).encode())
        age(incoming / f"{i}.csv")
    source = LocalFolderSource(tmp_path, prefix=INCOMING)
    batch = source.receive(max_events=3, timeout_s=1)
    rest = source.receive(max_events=10, timeout_s=1)
    assert len(batch) == 3 and len(rest) == 2
    assert set(keys(batch)) | set(keys(rest)) == {f"{INCOMING}{i}.csv" for i in range(5)}


def test_accepts_a_file_uri_as_root(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"x")
    age(tmp_path / "x.npz")
    [received] = LocalFolderSource(f"file://{tmp_path}").receive(timeout_s=1)
    assert received.event.data["key"] == "x.npz"
