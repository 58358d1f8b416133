"""Requests in a loop on a thread while something changes underneath (a version switch), counting failures."""

from __future__ import annotations

import threading
import time

import httpx


class Traffic:
    """POSTs each (path, json body) in turn until stopped or `max_s` passes; records versions and failures."""

    def __init__(self, base_url: str, requests: list[tuple[str, dict]], max_s: float = 300) -> None:
        self.base_url, self.requests, self.max_s = base_url, requests, max_s
        self.ok = self.failed = 0
        self.versions: dict[str, set[str]] = {}  # model -> versions that answered
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                for path, body in self.requests:
                    try:
                        r = client.post(path, json=body)
                        if r.status_code == 200:
                            self.ok += 1
                            model = r.json()["model"]
                            self.versions.setdefault(model["name"], set()).add(model["version"])
                        else:
                            self.failed += 1
                            self.errors.append(f"{path} {r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        self.failed += 1
                        self.errors.append(f"{path} {exc!r}")
                time.sleep(0.02)

    def __enter__(self) -> "Traffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=20)
