"""The one path a model version takes: publish -> load beside the serving one -> verify -> switch; rollback.

The first build (``rts models init``), every retraining run and every rollback go through here::

    registry = Registry.open(settings, triton=TritonClient(settings.triton.grpc_address))
    registry.publish(family, version, onnx_files)                       # written, not loaded
    registry.load_and_verify(family, version, inputs, expected)          # Triton answers as the gates saw
    registry.switch(model, family, version, reason="...", run_id=...)    # traffic follows
    registry.rollback(model, family, 3)

The switch order keeps serving untouched until the new version has answered:

1. write the members' new version folders, then the ensemble's (Triton ignores them until told);
2. load the members through the model control API: with ``latest {num_versions: 3}`` the new
   version loads beside the serving one;
3. infer a batch through each new member version, step by step as the ensemble would, and check
   the result matches what the gates evaluated;
4. pin the ensemble config to the new version and load the ensemble: Triton swaps it in once the
   new ensemble is ready, and the gateway (which asks for the ensemble's default version) follows.

Without a Triton client (the first build, before Triton starts) a switch only pins the config:
Triton loads the pinned version when it starts. Rolling back is steps 2 and 4 for an older version.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from services.registry.records import Records
from services.registry.repository import ModelRepository
from services.settings import Settings
from services.storage import data_store, repository_store
from services.triton.client import TritonClient
from services.triton.config import EnsembleFamily
from services.triton.onnx_ensemble import as_inputs, run_steps

log = logging.getLogger(__name__)


class VersionNotAvailable(ValueError):
    """Asked to serve a version that is not completely published."""


class Registry:
    def __init__(self, repository: ModelRepository, records: Records, triton: TritonClient | None = None) -> None:
        self.repository, self.records, self.triton = repository, records, triton

    @classmethod
    def open(cls, settings: Settings, triton: TritonClient | None = None) -> "Registry":
        return cls(ModelRepository(repository_store(settings)), Records(data_store(settings)), triton)

    def _triton(self) -> TritonClient:
        if self.triton is None:
            raise RuntimeError("this step talks to Triton; open the registry with a TritonClient")
        return self.triton

    # ---- the path -----------------------------------------------------------------------------
    def publish(self, family: EnsembleFamily, version: int, onnx_files: dict[str, bytes]) -> None:
        """Write every member's version, then the ensemble's. Nothing is loaded or switched yet."""
        self.repository.write_version(family, version, onnx_files)

    def load_and_verify(self, family: EnsembleFamily, version: int, inputs: np.ndarray | dict[str, np.ndarray],
                        expected: dict[str, np.ndarray], atol: float = 1e-4) -> float:
        """Load the members' `version` beside the serving one and check they answer as the gates saw.

        Returns the seconds it took. Raises RuntimeError (serving untouched) if anything disagrees.
        """
        triton = self._triton()
        started = time.perf_counter()
        self.repository.keep_member_loadable(family, version)
        for member in family.members:
            triton.load(member)
            if version not in triton.ready_versions(member):
                raise RuntimeError(f"Triton did not load {member} version {version}")
        answers = run_steps(family, as_inputs(family, inputs), lambda member, feed, wanted: [
            triton.infer_sync(member, version, feed, wanted)[name] for name in wanted])
        for name, want in expected.items():
            got = answers[name]
            if got.shape != want.shape or not np.allclose(got, want, atol=atol):
                worst = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
                raise RuntimeError(f"Triton's {name!r} for {family.ensemble} version {version} differs from the "
                                   f"evaluated model by {worst:.2g}")
        return time.perf_counter() - started

    def switch(self, model: str, family: EnsembleFamily, version: int, *, reason: str,
               run_id: str | None = None) -> float:
        """Pin the ensemble to `version` and, with Triton, reload it and check it serves; returns seconds.

        If Triton does not end up serving `version`, the previous pin is put back (and reloaded), so the
        repository never says a version serves that does not: the next run compares with what really serves.
        """
        started = time.perf_counter()
        previous = self.repository.served_version(family)
        self.repository.pin_ensemble(family, version)
        if self.triton is not None:
            try:
                self.triton.load(family.ensemble)
                served = self.triton.served_version(family.ensemble)
                if served != str(version):
                    raise RuntimeError(f"Triton serves {family.ensemble} version {served} after switching to {version}")
            except Exception:
                if previous is not None and previous != version:
                    self.repository.pin_ensemble(family, previous)
                    try:
                        self.triton.load(family.ensemble)
                    except Exception:  # noqa: BLE001 - Triton keeps serving what it had loaded
                        log.exception("could not reload %s pinned back to version %s", family.ensemble, previous)
                raise
        self.records.set_serving(model, version, reason=reason, run_id=run_id)
        return time.perf_counter() - started

    def rollback(self, model: str, family: EnsembleFamily, version: int, reason: str = "rollback by operator") -> float:
        """Serve an earlier (complete) version again: load its members if needed, then switch."""
        complete = self.repository.complete_versions(family)
        if version not in complete:
            raise VersionNotAvailable(f"{model} version {version} is not a complete published version "
                                      f"(have {complete})")
        triton = self._triton()
        started = time.perf_counter()
        self.repository.keep_member_loadable(family, version)
        for member in family.members:
            triton.load(member)
        self.switch(model, family, version, reason=reason)
        return time.perf_counter() - started

    # ---- what is there ------------------------------------------------------------------------
    def serving_version(self, family: EnsembleFamily) -> int | None:
        return self.repository.served_version(family)

    def describe(self, model: str, family: EnsembleFamily, lineage: bool = True) -> dict:
        """Complete versions with their lineage and metrics, and which one serves."""
        serving = self.repository.served_version(family)
        records = {r["version"]: r for r in self.records.versions(model)} if lineage else {}
        versions = []
        for v in self.repository.complete_versions(family):
            rec = records.get(v, {})
            entry = {"version": v, "serving": v == serving}
            if lineage:
                entry.update(created_at=rec.get("created_at"), run_id=rec.get("run_id"),
                             metrics=(rec.get("metrics") or {}).get("candidate"),
                             gates_passed=all(g["passed"] for g in rec.get("gates", [])) if rec else None,
                             lineage=rec or {"note": "no lineage record"})
            versions.append(entry)
        return {"model": model, "serving": serving, "versions": versions}

