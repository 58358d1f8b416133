"""One retraining run at a time per Ray cluster: a named, detached actor holding a lease.

Runs move each other's incoming files and publish into the same repository, so they never
interleave. The lease expires, so a run that crashed while holding it cannot block later runs.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

import ray

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class RunLock:
    def __init__(self) -> None:
        self.holder: str | None = None
        self.expires = 0.0

    def try_acquire(self, run_id: str, lease_s: float) -> str | None:
        """None when `run_id` holds the lock now; else the run that does."""
        if self.holder is None or time.time() > self.expires or self.holder == run_id:
            self.holder, self.expires = run_id, time.time() + lease_s
            return None
        return self.holder

    def release(self, run_id: str) -> None:
        if self.holder == run_id:
            self.holder = None


@contextmanager
def exclusive_run(run_id: str, wait_s: float = 900.0, lease_s: float = 1800.0) -> Iterator[None]:
    lock = RunLock.options(name="retraining-run-lock", namespace="rts", get_if_exists=True,
                           lifetime="detached").remote()
    deadline = time.monotonic() + wait_s
    while (holder := ray.get(lock.try_acquire.remote(run_id, lease_s))) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {holder} still holds the retraining lock after {wait_s:.0f}s")
        log.info("[%s] waiting for run %s to finish", run_id, holder)
        time.sleep(2)
    try:
        yield
    finally:
        ray.get(lock.release.remote(run_id))
