"""ONE contract for every object store backend, run against the real thing.

Backends: local folder, S3 on moto, S3 on SeaweedFS, GCS on fake-gcs-server. A new backend joins
by adding a case to ``BACKENDS``; it passes when it behaves like the others here. Each test gets a
fresh prefix in a session bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import uuid

import pytest

from services.storage import ObjectNotFound, ObjectStore, open_store

pytestmark = pytest.mark.timeout(60)

BUCKET = "rts-contract"
BACKENDS = ["local", "s3-moto", "s3-seaweedfs", "gcs-fake"]


def _s3_bucket(server) -> str:
    client = server.client("s3")
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    return BUCKET


def _gcs_bucket() -> str:
    from google.cloud import storage

    client = storage.Client()
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    return BUCKET


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> ObjectStore:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        return open_store(f"file://{tmp_path}/{prefix}")
    if request.param.startswith("s3-"):
        server = request.getfixturevalue("moto_server" if request.param == "s3-moto" else "seaweedfs")
        return open_store(f"s3://{_s3_bucket(server)}/{prefix}", endpoint_url=server.endpoint_url,
                          **server.credentials)
    request.getfixturevalue("fake_gcs")
    return open_store(f"gs://{_gcs_bucket()}/{prefix}")


def test_put_get_head_round_trip_with_metadata(store):
    info = store.put_bytes("models/a.bin", b"\x00\x01payload", metadata={"traceparent": "00-abc-def-01",
                                                                          "run-id": "r1"})
    assert info.key == "models/a.bin"
    assert info.size == 9
    assert info.etag and '"' not in info.etag
    assert info.metadata == {"traceparent": "00-abc-def-01", "run-id": "r1"}
    assert store.get_bytes("models/a.bin") == b"\x00\x01payload"
    head = store.head("models/a.bin")
    assert head is not None
    assert (head.key, head.size, head.etag, head.metadata) == (info.key, info.size, info.etag, info.metadata)
    assert head.updated is not None
    assert store.exists("models/a.bin")


def test_missing_key_is_none_or_object_not_found(store):
    assert store.head("nope/missing.txt") is None
    assert not store.exists("nope/missing.txt")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope/missing.txt")
    with pytest.raises(ObjectNotFound):
        store.copy("nope/missing.txt", "nope/other.txt")
    store.delete("nope/missing.txt")  # deleting what is not there is not an error


def test_list_is_recursive_ordered_and_filtered_by_prefix(store):
    keys = ["b/x.txt", "a/b/c/3.txt", "a2.txt", "a/1.txt", "a/b/2.txt", "a-b.txt"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list()] == sorted(keys)
    assert [o.key for o in store.list("a/")] == ["a/1.txt", "a/b/2.txt", "a/b/c/3.txt"]
    assert [o.key for o in store.list("a")] == sorted(k for k in keys if k.startswith("a"))
    assert list(store.list("zzz/")) == []
    listed = {o.key: o for o in store.list("a/b/")}
    head = store.head("a/b/2.txt")
    assert (listed["a/b/2.txt"].size, listed["a/b/2.txt"].etag) == (head.size, head.etag)


def test_list_stays_inside_the_store_root(store):
    store.put_bytes("inside.txt", b"1")
    sibling = open_store(store.uri + "-sibling", **_options(store))
    sibling.put_bytes("outside.txt", b"2")
    assert [o.key for o in store.list()] == ["inside.txt"]
    assert [o.key for o in sibling.list()] == ["outside.txt"]


def _options(store: ObjectStore) -> dict:
    if store.scheme == "s3":
        return {"client": store.client, "endpoint_url": store.endpoint_url}
    if store.scheme == "gs":
        return {"client": store.client}
    return {}


def test_delete(store):
    store.put_bytes("d/one.txt", b"1", metadata={"k": "v"})
    store.delete("d/one.txt")
    assert store.head("d/one.txt") is None
    assert list(store.list("d/")) == []
    store.put_bytes("d/one.txt", b"again")  # metadata of the deleted object does not come back
    assert store.head("d/one.txt").metadata == {}


def test_copy_keeps_bytes_and_metadata(store):
    src = store.put_bytes("src/data.npz", b"abc" * 1000, metadata={"traceparent": "00-1-2-01"})
    dst = store.copy("src/data.npz", "dst/data.npz")
    assert dst.key == "dst/data.npz"
    assert (dst.size, dst.etag, dst.metadata) == (src.size, src.etag, src.metadata)
    assert store.get_bytes("dst/data.npz") == b"abc" * 1000
    assert store.exists("src/data.npz")


def test_move(store):
    store.put_bytes("incoming/f.csv", b"x,y\n", metadata={"source": "test"})
    moved = store.move("incoming/f.csv", "accepted/f.csv")
    assert moved.key == "accepted/f.csv" and moved.metadata == {"source": "test"}
    assert store.head("incoming/f.csv") is None
    assert store.get_bytes("accepted/f.csv") == b"x,y\n"
    assert [o.key for o in store.list()] == ["accepted/f.csv"]


@pytest.mark.parametrize("key", ["with space/a file.txt", "unicodé/日本語 ü.txt", "plus+and%25/x+y.csv"])
def test_keys_with_spaces_unicode_and_url_characters(store, key):
    store.put_bytes(key, key.encode("utf-8"), metadata={"m": "1"})
    assert store.get_bytes(key) == key.encode("utf-8")
    assert store.head(key).key == key
    assert [o.key for o in store.list()] == [key]
    copied = store.copy(key, key + ".copy")
    assert copied.key == key + ".copy"
    store.delete(key)
    assert store.head(key) is None


def test_overwrite_changes_etag_and_replaces_metadata(store):
    first = store.put_bytes("v/model.onnx", b"version one", metadata={"v": "1"})
    same = store.put_bytes("v/model-copy.onnx", b"version one")
    assert same.etag == first.etag  # the etag fingerprints content
    second = store.put_bytes("v/model.onnx", b"version two!")
    assert second.etag != first.etag
    assert second.size == 12
    assert store.head("v/model.onnx").metadata == {}
    assert store.get_bytes("v/model.onnx") == b"version two!"


def test_empty_object(store):
    info = store.put_bytes("empty/marker", b"")
    assert info.size == 0
    assert store.get_bytes("empty/marker") == b""
    assert [o.key for o in store.list("empty/")] == ["empty/marker"]


def test_absolute_keys_are_refused(store):
    with pytest.raises(ValueError):
        store.put_bytes("/etc/passwd", b"no")


def test_uri_for(store):
    assert store.uri_for("a/b.txt") == f"{store.uri}/a/b.txt"
    assert store.uri_for() == store.uri
