"""A Triton model repository in any object store: versions, pinned configs, atomic switches.

Layout (what Triton reads)::

    <model>/config.pbtxt                 from the model's Triton folder, with version policy / pins set here
    <model>/configs/gpu.pbtxt            the GPU variant, same edits
    <model>/<N>/model.onnx, model.py     members (model.py = the Python-backend runner, CPU configs)
    <ensemble>/<N>/ensemble-version.txt  ensembles: a placeholder, object stores have no empty folders

Versions are immutable once written. Members keep ``version_policy: latest {num_versions: 3}``
(a new version loads next to the serving one); the ensemble is pinned: ``version_policy:
specific [N]`` and every step ``model_version: N``, so the ensemble and its members always move
together and switching (or rolling back) the served version is one ensemble reload in Triton.

Usage::

    repo = ModelRepository(open_store("file:///abs/var/model_repository"))
    repo.write_version(family, 2, {"churn_gbm": onnx_bytes, ...})
    repo.pin_ensemble(family, 2)
"""

from __future__ import annotations

import re
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from services.settings import REPO_ROOT
from services.storage import ObjectStore
from services.triton.config import CONFIG_NAME, EnsembleFamily, format_config, parse_config

PYTHON_BACKEND = REPO_ROOT / "triton_models" / "onnx_python_backend.py"
ENSEMBLE_PLACEHOLDER = "ensemble-version.txt"
MEMBER_VERSIONS_LOADED = 3
_VERSION_KEY = re.compile(r"^([^/]+)/(\d+)/")


class ModelRepository:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # ---- reading ------------------------------------------------------------------------------
    def versions(self, model: str) -> list[int]:
        found = set()
        for obj in self.store.list(f"{model}/"):
            m = _VERSION_KEY.match(obj.key)
            if m and m.group(1) == model:
                found.add(int(m.group(2)))
        return sorted(found)

    def complete_versions(self, family: EnsembleFamily) -> list[int]:
        """Versions that the ensemble and every member have (a publish that died halfway has not)."""
        common = set(self.versions(family.ensemble))
        for member in family.members:
            common &= set(self.versions(member))
        return sorted(common)

    def next_version(self, family: EnsembleFamily) -> int:
        seen = [v for m in family.models for v in self.versions(m)]
        return max(seen, default=0) + 1

    def config(self, family: EnsembleFamily, model: str, name: str = CONFIG_NAME) -> model_config_pb2.ModelConfig:
        """The config Triton reads (the repository's copy), else the model's source."""
        key = f"{model}/{name}"
        text = (self.store.get_bytes(key).decode() if self.store.exists(key)
                else (family.sources / model / name).read_text())
        return parse_config(text)

    def served_version(self, family: EnsembleFamily) -> int | None:
        """The version the ensemble config pins (what Triton serves after a load)."""
        if not self.store.exists(f"{family.ensemble}/{CONFIG_NAME}"):
            return None
        versions = list(self.config(family, family.ensemble).version_policy.specific.versions)
        return versions[0] if versions else None

    def read_member(self, model: str, version: int, name: str = "model.onnx") -> bytes:
        return self.store.get_bytes(f"{model}/{version}/{name}")

    # ---- writing ------------------------------------------------------------------------------
    def write_version(self, family: EnsembleFamily, version: int, files: dict[str, bytes]) -> None:
        """Write every member's `version` (its model.onnx), then the ensemble's. Nothing loads yet.

        Within a member, model.py goes last: Triton only loads what it is told to (explicit model
        control), and a version without its model.py cannot half-load. The ensemble's version goes
        after every member's, so a publish that dies halfway leaves no complete version.
        """
        missing = set(family.members) - set(files)
        if missing:
            raise ValueError(f"no model file for members {sorted(missing)} of {family.ensemble}")
        for member in family.members:
            if version in self.versions(member):
                raise FileExistsError(f"{member} version {version} already exists; versions are immutable")
        for member in family.members:
            member_files = {"model.onnx": files[member]}
            if family.member_configs[member].platform == "python":
                member_files["model.py"] = self._runner(family, member)
            for name in sorted(member_files, key=lambda n: n == "model.py"):
                self.store.put_bytes(f"{member}/{version}/{name}", member_files[name])
            self._ensure_member_configs(family, member)
        self.store.put_bytes(f"{family.ensemble}/{version}/{ENSEMBLE_PLACEHOLDER}",
                             b"ensemble versions have no files of their own\n")

    @staticmethod
    def _runner(family: EnsembleFamily, member: str) -> bytes:
        own = family.sources / member / "model.py"
        return own.read_bytes() if own.exists() else PYTHON_BACKEND.read_bytes()

    def _ensure_member_configs(self, family: EnsembleFamily, model: str) -> None:
        for name in self._config_names(family, model):
            config = self.config(family, model, name)
            if not config.version_policy.HasField("specific"):
                config.version_policy.latest.num_versions = MEMBER_VERSIONS_LOADED
            self._put_config(model, name, config)

    def keep_member_loadable(self, family: EnsembleFamily, version: int) -> None:
        """Make each member's version policy load `version` beside the one the ensemble serves now.

        Members keep ``latest {num_versions: 3}`` while that covers both; otherwise (a rollback to an
        old version, or a new version published while an old one serves) they list the versions
        to load, newest first filling the rest: loading one version never unloads the serving one.
        """
        serving = self.served_version(family)
        wanted = {version} | ({serving} if serving is not None else set())
        for member in family.members:
            latest = self.versions(member)[-MEMBER_VERSIONS_LOADED:]
            keep = None
            if not wanted <= set(latest):
                room = max(0, MEMBER_VERSIONS_LOADED - len(wanted))
                keep = sorted(wanted | set([v for v in reversed(latest) if v not in wanted][:room]))
            for name in self._config_names(family, member):
                config = self.config(family, member, name)
                config.ClearField("version_policy")
                if keep is None:
                    config.version_policy.latest.num_versions = MEMBER_VERSIONS_LOADED
                else:
                    config.version_policy.specific.versions[:] = keep
                self._put_config(member, name, config)

    def pin_ensemble(self, family: EnsembleFamily, version: int) -> None:
        """Point the ensemble (all its config variants) at `version` of itself and its members."""
        if version not in self.versions(family.ensemble):
            raise FileNotFoundError(f"{family.ensemble} has no version {version}")
        for name in self._config_names(family, family.ensemble):
            config = self.config(family, family.ensemble, name)
            config.ClearField("version_policy")
            config.version_policy.specific.versions[:] = [version]
            for step in config.ensemble_scheduling.step:
                if step.model_name not in family.members:
                    raise ValueError(f"ensemble step {step.model_name!r} is not a member of {family.ensemble}")
                step.model_version = version
            self._put_config(family.ensemble, name, config)

    @staticmethod
    def _config_names(family: EnsembleFamily, model: str) -> list[str]:
        variants: list[Path] = sorted((family.sources / model / "configs").glob("*.pbtxt"))
        return [CONFIG_NAME, *(f"configs/{p.name}" for p in variants)]

    def _put_config(self, model: str, name: str, config: model_config_pb2.ModelConfig) -> None:
        header = "# Written by services/registry from the model's Triton folder; edit the source, not this.\n"
        self.store.put_bytes(f"{model}/{name}", (header + format_config(config)).encode())
