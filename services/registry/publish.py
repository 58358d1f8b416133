"""The one path a model version takes: publish -> load beside the live ones -> verify -> stages -> production.

The first build (``rts models init``), every retraining run, the rollout controller and every
operator command go through here::

    registry = Registry.open(settings, triton=TritonClient(settings.triton.grpc_address))
    registry.publish(family, version, onnx_files)                        # written, not loaded
    registry.load_and_verify(model, family, version, inputs, expected)    # loaded beside the live versions
    registry.add_candidate(model, family, version, by="run 2026...")      # stage candidate
    registry.move(model, version, "canary", by="rollout-controller", reason=..., numbers=...)
    registry.promote(model, family, version, by=..., reason=...)          # production
    registry.retire(model, family, version, by=..., reason=...)           # archived (a rollback)

Loading never disturbs what serves:

1. write the members' new version folders, then the ensemble's and the version ensemble
   ``<ensemble>__v<N>`` (Triton ignores them until told);
2. list the new version among the members' versions in play and load the members: it loads beside
   the live ones;
3. infer a batch through each new member version, step by step as the ensemble would, and check the
   result matches what the gates evaluated; then load ``<ensemble>__v<N>`` and check it too.

From then on the gateway can route to version N by calling ``<ensemble>__v<N>``: moving traffic
between versions reloads no ensemble. Promoting also pins the plain ``<ensemble>`` (for callers of
Triton itself) and reloads it; if Triton does not then serve the version, the previous pin is put
back. Without a Triton client (the first build, before Triton starts) only the files and stages
change: Triton loads what is pinned and in play when it starts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from services.registry.records import Records
from services.registry.repository import ModelRepository, version_ensemble
from services.registry.stages import Stage, StageBook, StageError
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

    # ---- stages ---------------------------------------------------------------------------------
    def stages(self, model: str) -> StageBook:
        return StageBook.from_json(model, self.records.stages(model))

    def _save(self, book: StageBook) -> None:
        self.records.save_stages(book.model, book.to_json())

    def production(self, model: str) -> int | None:
        return self.stages(model).production

    # ---- the path -------------------------------------------------------------------------------
    def publish(self, family: EnsembleFamily, version: int, onnx_files: dict[str, bytes]) -> None:
        """Write every member's version, the ensemble's and the version ensemble. Nothing is loaded yet."""
        self.repository.write_version(family, version, onnx_files)

    def load_and_verify(self, model: str, family: EnsembleFamily, version: int,
                        inputs: np.ndarray | dict[str, np.ndarray], expected: dict[str, np.ndarray],
                        atol: float = 1e-4) -> float:
        """Load `version` beside the versions in play and check Triton answers as the gates saw.

        Returns the seconds it took. Raises RuntimeError (serving untouched) if anything disagrees.
        """
        triton = self._triton()
        started = time.perf_counter()
        self._put_in_play(family, self._adding(model, family, version))
        for member in family.members:
            if version not in triton.ready_versions(member):
                raise RuntimeError(f"Triton did not load {member} version {version}")
        named = as_inputs(family, inputs)
        answers = run_steps(family, named, lambda member, feed, wanted: [
            triton.infer_sync(member, version, feed, wanted)[name] for name in wanted])
        self._compare(family, version, answers, expected, atol, "its members")
        ensemble = version_ensemble(family.ensemble, version)
        triton.load(ensemble)
        whole = triton.infer_sync(ensemble, version, named, [t.name for t in family.config.outputs])
        self._compare(family, version, whole, expected, atol, ensemble)
        return time.perf_counter() - started

    @staticmethod
    def _compare(family: EnsembleFamily, version: int, answers: dict, expected: dict, atol: float, what: str) -> None:
        for name, want in expected.items():
            got = answers[name]
            if got.shape != want.shape or not np.allclose(got, want, atol=atol):
                worst = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
                raise RuntimeError(f"Triton's {name!r} for {family.ensemble} version {version} through {what} "
                                   f"differs from the evaluated model by {worst:.2g}")

    def add_candidate(self, model: str, family: EnsembleFamily, version: int, *, by: str,
                      reason: str = "passed its gates", numbers: dict[str, Any] | None = None) -> dict:
        if version not in self.repository.complete_versions(family):
            raise VersionNotAvailable(f"{model} version {version} is not a complete published version")
        book = self.stages(model)
        if book.stage(version) == "production":
            raise StageError(f"{model} version {version} is production already")
        transition = book.move(version, "candidate", by=by, reason=reason, numbers=numbers)
        self._save(book)
        return transition

    def move(self, model: str, version: int, to: Stage, *, by: str, reason: str,
             numbers: dict[str, Any] | None = None) -> dict:
        """A stage change that needs nothing loaded or pinned (candidate -> shadow -> canary)."""
        if to in ("production", "archived"):
            raise StageError(f"use promote() or retire() to move a version to {to}")
        book = self.stages(model)
        if book.stage(version) in (None, "archived", "production"):
            raise StageError(f"{model} version {version} is {book.stage(version) or 'unknown'}; only a candidate, "
                             f"shadow or canary version moves to {to}")
        transition = book.move(version, to, by=by, reason=reason, numbers=numbers)
        self._save(book)
        return transition

    def promote(self, model: str, family: EnsembleFamily, version: int, *, by: str, reason: str,
                numbers: dict[str, Any] | None = None) -> float:
        """Make `version` production: pin the plain ensemble to it (and, with Triton, reload and check it);
        the production it replaces is archived but stays loaded, so going back is instant. Returns seconds."""
        complete = self.repository.complete_versions(family)
        if version not in complete:
            raise VersionNotAvailable(f"{model} version {version} is not a complete published version "
                                      f"(have {complete})")
        started = time.perf_counter()
        book = self.stages(model)
        previous = book.production
        if version not in self.repository.loaded_versions(family):
            if self.triton is None:  # Triton loads what is in play when it starts: the members must list it
                self.repository.set_in_play(family, self._adding(model, family, version))
            else:
                self._load(family, self._adding(model, family, version))
        self._pin(family, version, previous)
        if previous is not None and previous != version:
            book.move(previous, "archived", by=by, reason=f"replaced by version {version}", numbers=numbers)
        book.move(version, "production", by=by, reason=reason, numbers=numbers)
        self._save(book)
        return time.perf_counter() - started

    def _pin(self, family: EnsembleFamily, version: int, previous: int | None) -> None:
        pinned_before = self.repository.served_version(family)
        self.repository.pin_ensemble(family, version)
        if self.triton is None:
            return
        try:
            self.triton.load(family.ensemble)
            served = self.triton.served_version(family.ensemble)
            if served != str(version):
                raise RuntimeError(f"Triton serves {family.ensemble} version {served} after switching to {version}")
        except Exception:
            back = pinned_before if pinned_before is not None else previous
            if back is not None and back != version:
                self.repository.pin_ensemble(family, back)
                try:
                    self.triton.load(family.ensemble)
                except Exception:  # noqa: BLE001 - Triton keeps serving what it had loaded
                    log.exception("could not reload %s pinned back to version %s", family.ensemble, back)
            raise

    def retire(self, model: str, family: EnsembleFamily, version: int, *, by: str, reason: str,
               numbers: dict[str, Any] | None = None) -> dict:
        """Archive a version that is not production (a rollback of a candidate). Its files stay; it is no
        longer routed to, and ``unload_retired`` lets Triton drop it once no request can be on its way."""
        book = self.stages(model)
        if book.stage(version) == "production":
            raise StageError(f"{model} version {version} is production; promote another version instead")
        if book.stage(version) is None:
            raise StageError(f"{model} has no version {version} in its stages")
        transition = book.move(version, "archived", by=by, reason=reason, numbers=numbers)
        self._save(book)
        return transition

    def unload_retired(self, model: str, family: EnsembleFamily, keep: list[int] | tuple[int, ...] = ()) -> list[int]:
        """Load exactly the versions in play (and `keep`: retired too recently, requests may still be on their
        way to them): members drop the others, their version ensembles unload."""
        book = self.stages(model)
        play = sorted({*book.in_play(), *(v for v in keep if v in self.repository.loaded_versions(family))})
        dropped = [v for v in self.repository.loaded_versions(family) if v not in play]
        if dropped and play:
            self._load(family, play)  # unloads the version ensembles of the dropped versions
        return dropped

    def _adding(self, model: str, family: EnsembleFamily, version: int) -> list[int]:
        """What stays loaded when `version` is loaded: everything loaded now (a version just retired may
        still have requests on their way; only ``unload_retired``, after a grace period, drops it), and
        whatever the stages say is in play."""
        return sorted({*self.repository.loaded_versions(family), *self.stages(model).in_play(), version})

    def _put_in_play(self, family: EnsembleFamily, versions: list[int]) -> list[int]:
        """Members load exactly `versions`. The version ensembles of the versions leaving are unloaded first,
        so no loaded ensemble is left calling a member version that is gone. Returns the versions that left."""
        triton = self._triton()
        leaving = [v for v in self.repository.loaded_versions(family) if v not in versions]
        self.repository.set_in_play(family, versions)
        for version in leaving:
            try:
                triton.unload(version_ensemble(family.ensemble, version))
            except Exception:  # noqa: BLE001 - already gone
                log.info("version ensemble of %s %s was not loaded", family.ensemble, version)
        triton.load_all(family.members)
        return leaving

    def _load(self, family: EnsembleFamily, versions: list[int]) -> None:
        self._put_in_play(family, versions)
        for version in versions:
            self._triton().load(version_ensemble(family.ensemble, version))

    def rollback(self, model: str, family: EnsembleFamily, version: int | None = None, *, by: str,
                 reason: str = "rollback by operator") -> dict:
        """Without a version: archive every version on its way to production, or, with none, go back to the
        production replaced last. With a version: make that one production again (loading it if needed)."""
        book = self.stages(model)
        if version is None:
            if book.challengers:
                return {"retired": [self.retire(model, family, v, by=by, reason=reason)["version"]
                                    for v in book.challengers], "production": book.production}
            version = book.previous_production
            if version is None:
                raise VersionNotAvailable(f"{model} has no earlier production version to go back to")
        seconds = self.promote(model, family, version, by=by, reason=reason)
        return {"production": version, "seconds": round(seconds, 3)}

    def adopt(self, model: str, family: EnsembleFamily) -> StageBook:
        """Bring a repository written before stages existed up to date (idempotent): every complete version
        gets its version ensemble, the version the plain ensemble pins (else the newest) becomes
        production, and the members load it. Nothing to do when the model has stages already."""
        book = self.stages(model)
        complete = self.repository.complete_versions(family)
        if book.versions or not complete:
            return book
        for version in complete:
            self.repository.ensure_version_ensemble(family, version)
        production = self.repository.served_version(family)
        production = production if production in complete else complete[-1]
        self.repository.set_in_play(family, [production])
        self.repository.pin_ensemble(family, production)
        book.move(production, "production", by="registry upgrade", reason="served before stages were kept")
        self._save(book)
        return book

    # ---- what is there --------------------------------------------------------------------------
    def serving_version(self, model: str) -> int | None:
        return self.stages(model).production

    def describe(self, model: str, family: EnsembleFamily, lineage: bool = True) -> dict:
        """Complete versions with their stage (and lineage), which one serves, and the recent transitions."""
        book = self.stages(model)
        records = {r["version"]: r for r in self.records.versions(model)} if lineage else {}
        versions = []
        for v in self.repository.complete_versions(family):
            rec = records.get(v, {})
            entry = {"version": v, "stage": book.stage(v) or "unstaged", "serving": book.stage(v) == "production"}
            if lineage:
                entry.update(created_at=rec.get("created_at"), run_id=rec.get("run_id"),
                             metrics=(rec.get("metrics") or {}).get("candidate"),
                             gates_passed=all(g["passed"] for g in rec.get("gates", [])) if rec else None,
                             transitions=book.history(v), lineage=rec or {"note": "no lineage record"})
            versions.append(entry)
        return {"model": model, "serving": book.production, "in_play": book.in_play(), "versions": versions}
