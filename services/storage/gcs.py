"""Google Cloud Storage backend (``gs://bucket/prefix``).

Usage::

    from services.storage import open_store
    store = open_store("gs://rts-data/prod")
    store.put_bytes("datasets/churn/incoming/a.csv", data, metadata={"traceparent": "00-..."})

Configuration:

- Credentials: Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, workload
  identity, ``gcloud auth application-default login``); ``project`` or ``GOOGLE_CLOUD_PROJECT``.
- ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` points the client at fake-gcs-server (tests) and
  turns authentication off, as google-cloud-storage does itself.

``version`` is the object generation, ``etag`` the base64 MD5 (CRC32C for composite objects),
metadata is the object's custom metadata.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlparse

from google.api_core.exceptions import NotFound
from google.cloud import storage

from services.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, check_key, register_store


@register_store("gs")
class GcsStore(ObjectStore):
    def __init__(self, uri: str, *, client: Any = None, project: str | None = None) -> None:
        super().__init__(uri)
        parsed = urlparse(self.uri)
        if not parsed.netloc:
            raise ValueError(f"a GCS store URI names a bucket, as in gs://bucket/prefix; got {uri!r}")
        self.prefix = parsed.path.strip("/")
        self.client = client or storage.Client(project=project)
        self.bucket = self.client.bucket(parsed.netloc)

    def _full(self, key: str, *, prefix: bool = False) -> str:
        check_key(key, prefix=prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _info(self, blob: Any) -> ObjectInfo:
        key = blob.name[len(self.prefix) + 1:] if self.prefix else blob.name
        return ObjectInfo(key=key, size=int(blob.size or 0), etag=blob.md5_hash or blob.crc32c or blob.etag or "",
                          version=str(blob.generation or ""), updated=blob.updated,
                          metadata=dict(blob.metadata or {}))

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        blob = self.bucket.blob(self._full(key))
        # Set before the upload so data and metadata land in one request, as one generation.
        blob.metadata = dict(metadata) if metadata else None
        blob.upload_from_string(data, content_type="application/octet-stream")
        return self._info(blob)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.bucket.blob(self._full(key)).download_as_bytes()
        except NotFound:
            raise ObjectNotFound(key) from None

    def head(self, key: str) -> ObjectInfo | None:
        blob = self.bucket.get_blob(self._full(key))
        return self._info(blob) if blob is not None else None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = self._full(prefix, prefix=True) if prefix else (f"{self.prefix}/" if self.prefix else "")
        # GCS lists in lexicographic (UTF-8 byte = code point) order, the order the port promises.
        for blob in self.client.list_blobs(self.bucket, prefix=full_prefix or None):
            if blob.name.endswith("/") and not blob.size:
                continue  # folder placeholders made by consoles are not objects
            yield self._info(blob)

    def delete(self, key: str) -> None:
        try:
            self.bucket.blob(self._full(key)).delete()
        except NotFound:
            pass  # deleting what is not there is not an error, as on S3 and locally

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        # Server-side copy keeps custom metadata and never downloads the bytes.
        try:
            blob = self.bucket.copy_blob(self.bucket.blob(self._full(src_key)), self.bucket, self._full(dst_key))
        except NotFound:
            raise ObjectNotFound(src_key) from None
        return self._info(blob)
