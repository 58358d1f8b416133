"""New files in a local folder as ``rts.object.created`` events (the default, for `make up`).

Usage::

    source = LocalFolderSource("/abs/var/bucket", prefix="datasets/")
    for received in source.receive(max_events=100, timeout_s=1):
        ...
        source.ack(received)

It polls (every ``poll_interval_s``) rather than relying on inotify: polling also works on
network and container-mounted folders, and after a restart it sees files that arrived while it
was down, because every scan lists the whole prefix.

A file is reported once it looks complete: not hidden (``.name``, which covers the store's temp
files and metadata sidecars), not ``*.tmp`` / ``*.part`` / ``*.partial``, and untouched for
``settle_s`` seconds (a writer still appending keeps moving its mtime). Event ids are
``<root>/<key>@<sha256>``, the same across restarts, so the consumer dedupes by id. An event not
acked is reported again after ``redeliver_after_s``, as a queue's visibility timeout would.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from services.events.base import EventSource, ReceivedEvent, SourceNotConfigured, object_created, register_source
from services.telemetry.propagation import MappingGetter, trace_fields

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".meta.json")


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


@register_source("local")
class LocalFolderSource(EventSource):
    @classmethod
    def from_settings(cls, settings) -> "LocalFolderSource":
        if not settings.data_uri.startswith("file://"):
            raise SourceNotConfigured(f"the local source watches a folder, and RTS_DATA_URI is {settings.data_uri}; "
                                      "use --source sqs (S3) or --source pubsub (GCS) for a bucket")
        return cls(settings.data_uri, prefix="datasets/")

    def __init__(self, root: str | Path, prefix: str = "", *, poll_interval_s: float = 0.5, settle_s: float = 0.5,
                 redeliver_after_s: float = 300.0) -> None:
        root_str = str(root)
        if root_str.startswith("file://"):
            root_str = unquote(urlparse(root_str).path)
        self.root = Path(root_str).resolve()
        self.prefix = prefix
        self.poll_interval_s, self.settle_s, self.redeliver_after_s = poll_interval_s, settle_s, redeliver_after_s
        self._hashes: dict[str, tuple[int, int, str]] = {}  # key -> (size, mtime_ns, sha256): hash once per write
        self._in_flight: dict[str, float] = {}  # event id -> when it was handed out
        self._acked: dict[str, str] = {}  # event id -> key; forgotten once the file is gone

    def _scan(self) -> list[tuple[str, os.stat_result]]:
        base = self.root / self.prefix.rsplit("/", 1)[0] if "/" in self.prefix else self.root
        found = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if is_temporary(name):
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(self.prefix):
                    continue
                try:
                    found.append((key, path.stat()))
                except FileNotFoundError:
                    continue  # moved away between listing and stat
        return found

    def _sha256(self, key: str, stat: os.stat_result) -> str | None:
        cached = self._hashes.get(key)
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        digest = hashlib.sha256()
        try:
            with open(self.root / key, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        self._hashes[key] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
        return digest.hexdigest()

    def _metadata(self, key: str) -> dict[str, str]:
        # Sidecar written by services.storage.local.LocalStore: carries the producer's trace context.
        path = self.root / key
        sidecar = path.with_name(f".{path.name}.meta.json")
        try:
            return json.loads(sidecar.read_text())
        except (OSError, ValueError):
            return {}

    def poll(self) -> list[ReceivedEvent]:
        now_wall, now = time.time(), time.monotonic()
        present, out = set(), []
        scanned = self._scan()
        for key, stat in scanned:
            if now_wall - stat.st_mtime < self.settle_s:
                continue  # still being written, or just finished: look again next poll
            sha = self._sha256(key, stat)
            if sha is None:
                continue
            event = object_created(
                scheme="file", bucket=str(self.root), key=key, size=stat.st_size, etag=sha,
                version=str(stat.st_mtime_ns), time=datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc),
                **trace_fields(self._metadata(key), MappingGetter()))
            present.add(event.id)
            if event.id in self._acked:
                continue
            handed_out = self._in_flight.get(event.id)
            if handed_out is not None and now - handed_out < self.redeliver_after_s:
                continue
            self._in_flight[event.id] = now
            out.append(ReceivedEvent(event=event, ack_handle=event.id))
        # Forget files that are gone (moved to accepted/ by a run): the bookkeeping stays small.
        self._acked = {i: k for i, k in self._acked.items() if i in present}
        self._in_flight = {i: t for i, t in self._in_flight.items() if i in present}
        keys = {key for key, _ in scanned}
        self._hashes = {k: v for k, v in self._hashes.items() if k in keys}
        return out

    def receive(self, max_events: int = 10, timeout_s: float = 1.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout_s
        while True:
            events = self.poll()
            if events or time.monotonic() >= deadline:
                # Over the limit: hand back the rest next time, without waiting for redelivery.
                for extra in events[max_events:]:
                    self._in_flight.pop(extra.event.id, None)
                return events[:max_events]
            time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))

    def ack(self, received: ReceivedEvent) -> None:
        event_id = received.ack_handle
        self._in_flight.pop(event_id, None)
        self._acked[event_id] = received.event.subject or ""
