"""A Triton model repository in any object store: versions, pinned configs, atomic switches.

Layout (what Triton reads)::

    <model>/config.pbtxt                 from the model's Triton folder, with version policy / pins set here
    <model>/configs/gpu.pbtxt            the GPU variant, same edits
    <model>/<N>/model.onnx, model.py     members (model.py = the Python-backend runner, CPU configs)
    <ensemble>/<N>/ensemble-version.txt  ensembles: a placeholder, object stores have no empty folders
    <ensemble>__v<N>/config.pbtxt        the version ensemble of N: the ensemble with every step pinned to N
    <ensemble>__v<N>/<N>/...             (its one version is N too, so Triton's answers name the version)

Versions are immutable once written. Members list the versions in play (``version_policy:
specific [...]``: production, the versions on their way to it, the production replaced last), so
all of them are loaded side by side. Each version also has its own ensemble, ``<ensemble>__v<N>``,
loaded once and never reloaded: the gateway routes a request to a version by calling that
ensemble, so moving traffic between versions reloads nothing. The plain ``<ensemble>`` is pinned to
the production version (``specific [N]``, every step ``model_version: N``) for callers of Triton
itself.

Usage::

    repo = ModelRepository(open_store("file:///abs/var/model_repository"))
    repo.write_version(family, 2, {"churn_gbm": onnx_bytes, ...})   # members, the ensemble, churn__v2
    repo.set_in_play(family, [1, 2])                                  # members load both
    repo.pin_ensemble(family, 2)
"""

from __future__ import annotations

import py_compile
import re
import sys
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from services.settings import REPO_ROOT
from services.storage import ObjectStore
from services.triton.config import CONFIG_NAME, EnsembleFamily, format_config, parse_config

PYTHON_BACKEND = REPO_ROOT / "triton_models" / "onnx_python_backend.py"
ENSEMBLE_PLACEHOLDER = "ensemble-version.txt"
_VERSION_KEY = re.compile(r"^([^/]+)/(\d+)/")

# model.py's bytecode, written beside it: Triton's Python-backend stub otherwise writes it there on the first load,
# which changes the version folder, and Triton then loads that version again the next time anything asks for the
# model or an ensemble that uses it (every publish loaded each member twice, 1.5 s more). A stub of another Python
# looks for its own file name, ignores this one and writes its own, as before.
BYTECODE = f"__pycache__/model.{sys.implementation.cache_tag}.pyc"


def bytecode(source: bytes) -> bytes:
    """``source`` compiled as a .pyc that Python uses without comparing it with the source (versions are
    immutable: a version's model.py never changes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, compiled = Path(tmp) / "model.py", Path(tmp) / "model.pyc"
        path.write_bytes(source)
        py_compile.compile(str(path), cfile=str(compiled), dfile="model.py", doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return compiled.read_bytes()


def version_ensemble(ensemble: str, version: int | str) -> str:
    """The Triton model that serves one version of an ensemble, and only it."""
    return f"{ensemble}__v{version}"


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
                member_files[BYTECODE] = bytecode(member_files["model.py"])
            for name in sorted(member_files, key=lambda n: n == "model.py"):
                self.store.put_bytes(f"{member}/{version}/{name}", member_files[name])
            self._ensure_member_configs(family, member, version)
        self._write_version_ensemble(family, version)
        self.store.put_bytes(f"{family.ensemble}/{version}/{ENSEMBLE_PLACEHOLDER}",
                             b"ensemble versions have no files of their own\n")

    def ensure_version_ensemble(self, family: EnsembleFamily, version: int) -> None:
        """Write the version ensemble of a version published before version ensembles existed."""
        if not self.store.exists(f"{version_ensemble(family.ensemble, version)}/{CONFIG_NAME}"):
            self._write_version_ensemble(family, version)

    def _write_version_ensemble(self, family: EnsembleFamily, version: int) -> None:
        name = version_ensemble(family.ensemble, version)
        for config_name in self._config_names(family, family.ensemble):
            config = parse_config((family.sources / family.ensemble / config_name).read_text())
            config.name = name
            config.ClearField("version_policy")
            config.version_policy.specific.versions[:] = [version]
            for step in config.ensemble_scheduling.step:
                step.model_version = version
            self._put_config(name, config_name, config)
        self.store.put_bytes(f"{name}/{version}/{ENSEMBLE_PLACEHOLDER}", b"ensemble versions have no files of their own\n")

    @staticmethod
    def _runner(family: EnsembleFamily, member: str) -> bytes:
        own = family.sources / member / "model.py"
        return own.read_bytes() if own.exists() else PYTHON_BACKEND.read_bytes()

    def _ensure_member_configs(self, family: EnsembleFamily, model: str, version: int) -> None:
        """The repository's copy of a member's configs, loading at least the versions it loaded, and `version`
        only once it is put in play (``set_in_play``)."""
        for name in self._config_names(family, model):
            key = f"{model}/{name}"
            config = self.config(family, model, name)
            if not self.store.exists(key):  # the first version: it is the one in play
                config.ClearField("version_policy")
                config.version_policy.specific.versions[:] = [version]
            self._put_config(model, name, config)

    def set_in_play(self, family: EnsembleFamily, versions: list[int]) -> None:
        """Make every member load exactly these versions (side by side); Triton applies it on the next load."""
        versions = sorted(set(versions))
        if not versions:
            raise ValueError(f"{family.ensemble}: at least one version must stay in play")
        for member in family.members:  # every member checked before any is changed: they stay in step
            missing = set(versions) - set(self.versions(member))
            if missing:
                raise FileNotFoundError(f"{member} has no versions {sorted(missing)}")
        for member in family.members:
            for name in self._config_names(family, member):
                config = self.config(family, member, name)
                config.ClearField("version_policy")
                config.version_policy.specific.versions[:] = versions
                self._put_config(member, name, config)

    def loaded_versions(self, family: EnsembleFamily) -> list[int]:
        """The versions the members' configs say to load."""
        config = self.config(family, family.members[0])
        return sorted(config.version_policy.specific.versions)

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
