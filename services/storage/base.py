"""Object storage port: one small interface, one module per backend, chosen by URI scheme.

Usage::

    from services.storage import open_store
    store = open_store("s3://bucket/prefix")          # or file:///abs/path, gs://bucket/prefix
    store.put_bytes("datasets/churn/incoming/a.csv", data, metadata={"traceparent": "..."})
    for obj in store.list("datasets/churn/incoming/"):
        print(obj.key, obj.size, obj.etag)

Keys are relative to the store's root (bucket + prefix), use "/" and never start with "/"; no
segment is empty, "." or "..", and no key holds a control character (``check_key``: every backend
refuses such a key with ``InvalidKey``, a ValueError, before it touches a file or a bucket). A key
never leaves the store, whatever part of it came from a request.
Backends register themselves with ``@register_store("scheme")``; ``open_store`` imports the
backend module on first use, so a local-only install never imports boto3 or google-cloud.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, ClassVar, Iterator
from urllib.parse import urlparse


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # content fingerprint: S3 ETag, GCS md5/crc, local sha256
    version: str = ""  # S3 VersionId / GCS generation / local mtime_ns: identifies this write
    updated: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class ObjectNotFound(KeyError):
    pass


class InvalidKey(ValueError):
    """A key that could name something outside the store, or that no backend stores as written."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_KEY = 1024  # S3's and GCS's limit (bytes of UTF-8)


def check_key(key: str, *, prefix: bool = False) -> str:
    """`key` if it stays inside the store, else InvalidKey. A `prefix` (of list) may end with "/" or be empty."""
    if not isinstance(key, str):
        raise InvalidKey(f"object keys are strings, not {type(key).__name__}")
    if prefix and key == "":
        return key
    segments = key.split("/")
    if prefix and key.endswith("/"):
        segments = segments[:-1]
    if (not key or key.startswith("/") or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY
            or any(s in ("", ".", "..") for s in segments) or _CONTROL.search(key)):
        raise InvalidKey(f"object keys are relative, stay inside the store and hold no control characters: {key!r}")
    return key


class ObjectStore(ABC):
    scheme: ClassVar[str]

    def __init__(self, uri: str) -> None:
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            raise ValueError(f"{type(self).__name__} needs a {self.scheme}:// URI, got {uri!r}")
        self.uri = uri.rstrip("/")

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order (recursive)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        info = self.head(src_key)
        if info is None:
            raise ObjectNotFound(src_key)
        return self.put_bytes(dst_key, self.get_bytes(src_key), info.metadata)

    def move(self, src_key: str, dst_key: str) -> ObjectInfo:
        info = self.copy(src_key, dst_key)
        self.delete(src_key)
        return info

    def uri_for(self, key: str = "") -> str:
        return f"{self.uri}/{key}" if key else self.uri

    def triton_repository_uri(self, prefix: str = "") -> str:
        """The --model-repository value under which Triton reads `prefix` of this store."""
        return self.uri_for(prefix)


_REGISTRY: dict[str, type[ObjectStore]] = {}
_BACKEND_MODULES = {"file": "services.storage.local", "s3": "services.storage.s3", "gs": "services.storage.gcs"}


def register_store(scheme: str) -> Callable[[type[ObjectStore]], type[ObjectStore]]:
    def decorator(cls: type[ObjectStore]) -> type[ObjectStore]:
        cls.scheme = scheme
        _REGISTRY[scheme] = cls
        return cls

    return decorator


def open_store(uri: str, *, s3_endpoint_url: str | None = None, **options) -> ObjectStore:
    """The store for `uri`; `s3_endpoint_url` points s3:// URIs at an S3-compatible server (ignored otherwise)."""
    scheme = urlparse(uri).scheme or "file"
    if scheme == "s3" and s3_endpoint_url:
        options.setdefault("endpoint_url", s3_endpoint_url)
    if scheme not in _REGISTRY and scheme in _BACKEND_MODULES:
        importlib.import_module(_BACKEND_MODULES[scheme])
    try:
        cls = _REGISTRY[scheme]
    except KeyError:
        raise ValueError(f"no object store for {scheme}:// (known: {sorted(_BACKEND_MODULES)})") from None
    return cls(uri, **options)
