"""Amazon S3 backend (``s3://bucket/prefix``), also for S3-compatible servers (SeaweedFS, MinIO, moto).

Usage::

    from services.storage import open_store
    store = open_store("s3://rts-data/prod")                                   # AWS
    store = open_store("s3://rts-data", endpoint_url="http://127.0.0.1:8333")  # any S3 server
    store.triton_repository_uri("model_repository")
    # -> s3://http://127.0.0.1:8333/rts-data/model_repository (Triton's form for custom endpoints)

Configuration:

- ``endpoint_url``: constructor argument (``open_store(uri, s3_endpoint_url=...)``; the platform passes
  ``RTS_S3_ENDPOINT_URL``), else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; unset means AWS itself.
- Credentials and region: boto3's usual chain (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``, profiles, instance roles), or ``aws_access_key_id`` / ``aws_secret_access_key`` /
  ``region_name`` passed to the constructor. Triton reads the same ``AWS_*`` variables.

User metadata is S3 user metadata (``x-amz-meta-*``): ASCII, keys come back lower-cased. ``list``
does not return metadata (S3 listings carry none); ``head`` does. ``list`` sorts by key itself
because S3-compatible servers differ in listing order (SeaweedFS lists folder by folder).
"""

from __future__ import annotations

import os
from typing import Any, Iterator
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from services.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, check_key, register_store

_MISSING = {"404", "NoSuchKey", "NotFound"}


def default_endpoint_url() -> str | None:
    """boto3's own variables for a custom endpoint (it reads them too; Triton's S3 URI needs the value)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


@register_store("s3")
class S3Store(ObjectStore):
    def __init__(self, uri: str, *, endpoint_url: str | None = None, client: Any = None,
                 **client_options: Any) -> None:
        super().__init__(uri)
        parsed = urlparse(self.uri)
        if not parsed.netloc:
            raise ValueError(f"an S3 store URI names a bucket, as in s3://bucket/prefix; got {uri!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.endpoint_url = (endpoint_url or default_endpoint_url() or "").rstrip("/") or None
        if client is None:
            # Path-style addressing: S3-compatible servers on an IP:port have no per-bucket host names.
            config = Config(s3={"addressing_style": "path"}) if self.endpoint_url else None
            client_options.setdefault("region_name", os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
            client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config, **client_options)
        self.client = client

    def _full(self, key: str, *, prefix: bool = False) -> str:
        check_key(key, prefix=prefix)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, Metadata=dict(metadata or {}))
        info = self.head(key)
        if info is None:  # pragma: no cover - S3 is read-after-write consistent
            raise RuntimeError(f"s3://{self.bucket}/{self._full(key)} was written but cannot be read back")
        return info

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectNotFound(key) from None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=resp["ETag"].strip('"'),
                          version=resp.get("VersionId") or "", updated=resp.get("LastModified"),
                          metadata=dict(resp.get("Metadata") or {}))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # AWS lists in UTF-8 byte (= code point) order, but S3-compatible servers need not: SeaweedFS
        # walks folders, so "a/1" comes before "a-b". Sorting here keeps the port's promise everywhere,
        # at the cost of holding one listing in memory (prefixes here hold datasets and model versions).
        paginator = self.client.get_paginator("list_objects_v2")
        full_prefix = self._full(prefix, prefix=True) if prefix else (f"{self.prefix}/" if self.prefix else "")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/") and item["Size"] == 0:
                    continue  # "folder" markers some tools create are not objects
                found.append(ObjectInfo(key=self._relative(item["Key"]), size=int(item["Size"]),
                                        etag=item["ETag"].strip('"'), updated=item.get("LastModified")))
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        # Server-side copy: the bytes never pass through this process, metadata comes along.
        try:
            self.client.copy_object(Bucket=self.bucket, Key=self._full(dst_key), MetadataDirective="COPY",
                                    CopySource={"Bucket": self.bucket, "Key": self._full(src_key)})
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectNotFound(src_key) from None
            raise
        info = self.head(dst_key)
        assert info is not None
        return info

    def triton_repository_uri(self, prefix: str = "") -> str:
        path = "/".join(p for p in (self.bucket, self.prefix, prefix.strip("/")) if p)
        # Triton's S3 filesystem takes a custom endpoint inside the URI: s3://http://host:port/bucket/path.
        return f"s3://{self.endpoint_url}/{path}" if self.endpoint_url else f"s3://{path}"
