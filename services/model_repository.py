"""A Triton model repository in any object store: versions, pinned configs, atomic switches.

Layout (what Triton reads)::

    <model>/config.pbtxt                 from triton_models/<model>/, with version policy / pins set here
    <model>/configs/gpu.pbtxt            the GPU variant, same edits
    <model>/<N>/model.onnx, model.py     members (model.py = triton_models/onnx_python_backend.py)
    <ensemble>/<N>/ensemble-version.txt    ensembles: a placeholder, object stores have no empty folders

Versions are immutable once written. Members keep ``version_policy: latest {num_versions: 3}``
(a new version loads next to the serving one); the ensemble is pinned: ``version_policy:
specific [N]`` and every step ``model_version: N``, so the ensemble and its members always move
together and switching (or rolling back) the served version is one ensemble reload in Triton.

Usage::

    repo = ModelRepository(open_store("file:///abs/var/model_repository"))
    repo.write_version("digits_mlp", 2, {"model.onnx": data})
    repo.pin_ensemble(FAMILY, 2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.common.settings import REPO_ROOT
from services.storage import ObjectStore

SOURCES = REPO_ROOT / "triton_models"
PYTHON_BACKEND = SOURCES / "onnx_python_backend.py"
ENSEMBLE_PLACEHOLDER = "ensemble-version.txt"
MEMBER_VERSIONS_LOADED = 3
_VERSION_KEY = re.compile(r"^([^/]+)/(\d+)/")


@dataclass(frozen=True)
class ModelFamily:
    """An ensemble and the models its steps call; they are published and switched together."""

    ensemble: str
    members: tuple[str, ...]


class ModelRepository:
    def __init__(self, store: ObjectStore, sources: Path = SOURCES) -> None:
        self.store = store
        self.sources = sources

    # ---- reading ------------------------------------------------------------------------------
    def versions(self, model: str) -> list[int]:
        found = set()
        for obj in self.store.list(f"{model}/"):
            m = _VERSION_KEY.match(obj.key)
            if m and m.group(1) == model:
                found.add(int(m.group(2)))
        return sorted(found)

    def complete_versions(self, family: ModelFamily) -> list[int]:
        """Versions that the ensemble and every member have (a publish that died halfway has not)."""
        common = set(self.versions(family.ensemble))
        for member in family.members:
            common &= set(self.versions(member))
        return sorted(common)

    def next_version(self, family: ModelFamily) -> int:
        seen = [v for m in (family.ensemble, *family.members) for v in self.versions(m)]
        return max(seen, default=0) + 1

    def config(self, model: str, name: str = "config.pbtxt") -> model_config_pb2.ModelConfig:
        key = f"{model}/{name}"
        text = (self.store.get_bytes(key).decode() if self.store.exists(key)
                else (self.sources / model / name).read_text())
        return text_format.Parse(text, model_config_pb2.ModelConfig())

    def served_version(self, family: ModelFamily) -> int | None:
        """The version the ensemble config pins (what Triton serves after a load)."""
        if not self.store.exists(f"{family.ensemble}/config.pbtxt"):
            return None
        versions = list(self.config(family.ensemble).version_policy.specific.versions)
        return versions[0] if versions else None

    # ---- writing ------------------------------------------------------------------------------
    def write_version(self, model: str, version: int, files: dict[str, bytes]) -> None:
        """Write one member version. model.py goes last: Triton only loads what it is told to
        (explicit model control), and a version without its model.py cannot half-load."""
        if version in self.versions(model):
            raise FileExistsError(f"{model} version {version} already exists; versions are immutable")
        files = dict(files)
        files.setdefault("model.py", PYTHON_BACKEND.read_bytes())
        for name in sorted(files, key=lambda n: n == "model.py"):
            self.store.put_bytes(f"{model}/{version}/{name}", files[name])
        self._ensure_member_configs(model)

    def write_ensemble_version(self, ensemble: str, version: int) -> None:
        self.store.put_bytes(f"{ensemble}/{version}/{ENSEMBLE_PLACEHOLDER}",
                             b"ensemble versions have no files of their own\n")

    def _ensure_member_configs(self, model: str) -> None:
        for name in self._config_names(model):
            config = self.config(model, name)
            if not config.version_policy.HasField("specific"):
                config.version_policy.latest.num_versions = MEMBER_VERSIONS_LOADED
            self._put_config(model, name, config)

    def keep_member_loadable(self, family: ModelFamily, version: int) -> None:
        """Make sure each member's version policy includes `version` (rollback to an old version)."""
        for member in family.members:
            latest = self.versions(member)[-MEMBER_VERSIONS_LOADED:]
            if version in latest:
                wanted = None
            else:
                wanted = sorted({*latest[-(MEMBER_VERSIONS_LOADED - 1):], version})
            for name in self._config_names(member):
                config = self.config(member, name)
                config.ClearField("version_policy")
                if wanted is None:
                    config.version_policy.latest.num_versions = MEMBER_VERSIONS_LOADED
                else:
                    config.version_policy.specific.versions[:] = wanted
                self._put_config(member, name, config)

    def pin_ensemble(self, family: ModelFamily, version: int) -> None:
        """Point the ensemble (all its config variants) at `version` of itself and its members."""
        if version not in self.versions(family.ensemble):
            raise FileNotFoundError(f"{family.ensemble} has no version {version}")
        for name in self._config_names(family.ensemble):
            config = self.config(family.ensemble, name)
            config.ClearField("version_policy")
            config.version_policy.specific.versions[:] = [version]
            for step in config.ensemble_scheduling.step:
                if step.model_name not in family.members:
                    raise ValueError(f"ensemble step {step.model_name!r} is not a member of {family}")
                step.model_version = version
            self._put_config(family.ensemble, name, config)

    def _config_names(self, model: str) -> list[str]:
        names = ["config.pbtxt"]
        names += [f"configs/{p.name}" for p in sorted((self.sources / model / "configs").glob("*.pbtxt"))]
        return names

    def _put_config(self, model: str, name: str, config: model_config_pb2.ModelConfig) -> None:
        header = "# Written by services/model_repository.py from triton_models/; edit the source, not this.\n"
        self.store.put_bytes(f"{model}/{name}", (header + text_format.MessageToString(config)).encode())
