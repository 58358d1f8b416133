"""Local filesystem backend (``file:///abs/path``): the default for development and `make up`.

Writes are atomic (temp file + ``os.replace``); user metadata lives in a hidden sidecar
``.<name>.meta.json`` next to each object, which ``list`` never shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from services.storage.base import InvalidKey, ObjectInfo, ObjectNotFound, ObjectStore, check_key, register_store


@register_store("file")
class LocalStore(ObjectStore):
    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.root = Path(unquote(urlparse(uri).path))
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # and no symlink inside the store leads out of it
        real = path.resolve()
        if real != self._real_root and not real.is_relative_to(self._real_root):
            raise InvalidKey(f"object key {key!r} leads outside the store (through a symbolic link)")
        return path

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(f".{path.name}.meta.json")

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_path = self._meta_path(path)
        if metadata:
            self._atomic_write(meta_path, json.dumps(metadata).encode())
        elif meta_path.exists():
            meta_path.unlink()
        self._atomic_write(path, data)
        return self._info(key, path)

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return self._info(key, path) if path.is_file() else None

    def _info(self, key: str, path: Path) -> ObjectInfo:
        stat = path.stat()
        meta_path = self._meta_path(path)
        metadata = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        with open(path, "rb") as f:  # streamed: a huge file is hashed, never held in memory
            etag = hashlib.file_digest(f, "sha256").hexdigest()
        return ObjectInfo(key=key, size=stat.st_size, etag=etag,
                          version=str(stat.st_mtime_ns),
                          updated=datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc), metadata=metadata)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_key(prefix, prefix=True)
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith("."):
                    continue  # sidecars and in-flight temp files
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        for key in sorted(keys):
            path = self._path(key)
            if path.is_file():
                yield self._info(key, path)

    def move(self, src_key: str, dst_key: str) -> ObjectInfo:
        """A rename (atomic within the store's file system): nothing read, nothing half-moved."""
        src, dst = self._path(src_key), self._path(dst_key)
        if not src.is_file():
            raise ObjectNotFound(src_key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if self._meta_path(src).exists():
            os.replace(self._meta_path(src), self._meta_path(dst))
        else:
            self._meta_path(dst).unlink(missing_ok=True)
        os.replace(src, dst)
        return self._info(dst_key, dst)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._meta_path(path).unlink(missing_ok=True)

    def triton_repository_uri(self, prefix: str = "") -> str:
        return str(self.root / prefix) if prefix else str(self.root)
