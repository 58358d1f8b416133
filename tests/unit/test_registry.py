"""The model registry over a local store, with a fake Triton control client (no Triton, no Ray).

Covered, with the real digits family (``triton_models/digits*``) and the conftest's trained ONNX files:

- ``ModelRepository.write_version``: every member (model.onnx, then model.py for Python-backend
  members) before the ensemble's placeholder; the version ensemble ``digits__v<N>`` (every step and
  its own version policy pinned to N, each config variant kept in step with its source); the first
  version is in play, later ones are not until ``set_in_play``; versions are immutable; a publish
  that dies halfway leaves no complete version (``complete_versions``);
- ``pin_ensemble``: the plain ensemble's version policy and every step's ``model_version``;
- ``set_in_play``: ``specific`` on every member and both config variants (the GPU variant stays the
  GPU variant); an empty list or a version a member lacks is refused and changes nothing;
- ``Registry.load_and_verify`` (loads beside the versions in play, checks each member and then the
  version ensemble itself, refuses wrong answers with serving untouched), ``add_candidate``,
  ``move``, ``promote`` (the previous production archived but kept loaded; a promote Triton refuses
  leaves pin and stages where they were; without Triton only files and stages change), ``retire``,
  ``rollback`` (challengers archived, or back to the previous production, or to a named version;
  an incomplete version changes nothing), ``unload_retired`` and ``describe``;

against ``FakeTriton``, which loads what the repository's configs allow (an ensemble only when
every step's pinned member version is loaded), serves the version the plain ensemble pins and
answers ``infer_sync`` by running the repository's member ONNX files with onnxruntime (for an
ensemble, step by step through the member versions its config pins).
"""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from services.modelkit.discovery import load_package
from services.registry.publish import Registry, VersionNotAvailable
from services.registry.records import Records
from services.registry.repository import ENSEMBLE_PLACEHOLDER, PYTHON_BACKEND, ModelRepository, version_ensemble
from services.registry.stages import StageError
from services.storage import open_store
from services.triton.config import CONFIG_NAME, EnsembleFamily, format_config, parse_config
from services.triton.onnx_ensemble import OnnxEnsemble, run_steps

PACKAGE = load_package("services.models.digits")
FAMILY = PACKAGE.family
MODEL = PACKAGE.name
ENSEMBLE = FAMILY.ensemble
MEMBERS = FAMILY.members
GPU = "configs/gpu.pbtxt"


# ---- helpers ------------------------------------------------------------------------------------

class FakeTriton:
    """Triton's model control and inference API as the registry uses it, over the repository it reads.

    ``load(model)`` reads ``<model>/config.pbtxt`` from the repository's store (no config there: the
    load fails) and loads the versions it allows (``specific``, or the ``latest`` N); loading an
    ensemble fails, as in Triton, when a step's pinned member version is not loaded. Models in
    ``refuse`` fail to load. ``served_version`` is the highest loaded version. ``infer_sync`` runs the
    member's ONNX file of that version from the repository; for an ensemble, the steps run through the
    member versions its loaded config pins (failing if one has been unloaded since). ``wrong_by`` is
    added to every answer (a version that does not answer as evaluated).
    """

    def __init__(self, repository: ModelRepository, wrong_by: float = 0.0) -> None:
        self.repository, self.wrong_by = repository, wrong_by
        self.loaded: dict[str, list[int]] = {}
        self.steps: dict[str, dict[str, int]] = {}  # a loaded ensemble: the member version of each step
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.refuse: set[str] = set()
        self._sessions: dict[tuple[str, int], ort.InferenceSession] = {}

    def _config(self, model: str):
        key = f"{model}/{CONFIG_NAME}"
        if not self.repository.store.exists(key):
            raise RuntimeError(f"failed to load {model!r}: no {CONFIG_NAME} in the model repository")
        return parse_config(self.repository.store.get_bytes(key).decode())

    def load(self, model: str) -> None:
        self.loads.append(model)
        if model in self.refuse:
            raise RuntimeError(f"failed to load {model!r}: timed out")
        config = self._config(model)
        present = self.repository.versions(model)
        policy = config.version_policy
        if policy.HasField("specific"):
            versions = [v for v in policy.specific.versions if v in present]
        else:
            versions = present[-(policy.latest.num_versions or 1):]
        if not versions:
            raise RuntimeError(f"failed to load {model!r}: no version to load")
        steps = {}
        for step in config.ensemble_scheduling.step:
            ready = self.loaded.get(step.model_name, [])
            wanted = step.model_version if step.model_version > 0 else max(ready, default=None)
            if wanted not in ready:
                raise RuntimeError(f"failed to load {model!r}: {step.model_name} version {step.model_version} "
                                   "is not loaded")
            steps[step.model_name] = wanted
        self.loaded[model] = sorted(versions)
        if config.platform == "ensemble":
            self.steps[model] = steps

    def load_all(self, models) -> None:  # as TritonClient.load_all: every load tried, the first failure raised
        failures = []
        for model in models:
            try:
                self.load(model)
            except RuntimeError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    def unload(self, model: str) -> None:
        self.unloads.append(model)
        self.loaded.pop(model, None)
        self.steps.pop(model, None)

    def ready_versions(self, model: str) -> list[int]:
        return list(self.loaded.get(model, []))

    def served_version(self, model: str) -> str:
        return str(self.loaded[model][-1])

    def _run(self, member: str, version: int, feed: dict[str, np.ndarray], wanted: list[str]) -> list[np.ndarray]:
        if version not in self.loaded.get(member, []):
            raise RuntimeError(f"{member} version {version} is not loaded")
        key = (member, version)
        if key not in self._sessions:
            self._sessions[key] = ort.InferenceSession(self.repository.read_member(member, version),
                                                       providers=["CPUExecutionProvider"])
        return self._sessions[key].run(wanted, feed)

    def infer_sync(self, model: str, version: int | str, inputs: dict[str, np.ndarray],
                   outputs: list[str]) -> dict[str, np.ndarray]:
        version = int(version)
        if version not in self.loaded.get(model, []):
            raise RuntimeError(f"{model} version {version} is not loaded")
        if model in self.steps:
            pinned = self.steps[model]
            whole = run_steps(FAMILY, inputs, lambda member, feed, wanted: self._run(member, pinned[member], feed,
                                                                                     wanted))
            answers = [whole[name] for name in outputs]
        else:
            answers = self._run(model, version, inputs, outputs)
        return {name: value + np.asarray(self.wrong_by, dtype=value.dtype) for name, value in zip(outputs, answers)}


class RecordingStore:
    """An object store that records the keys it is asked to write, and can fail on one of them."""

    def __init__(self, store, fail_on: str | None = None) -> None:
        self.store, self.fail_on = store, fail_on
        self.written: list[str] = []

    def put_bytes(self, key: str, data: bytes, metadata=None):
        if key == self.fail_on:
            raise OSError(f"connection reset while writing {key}")
        self.written.append(key)
        return self.store.put_bytes(key, data, metadata)

    def __getattr__(self, name):
        return getattr(self.store, name)


def policy_of(repository: ModelRepository, model: str, name: str = CONFIG_NAME) -> tuple:
    """("specific", [versions]) or ("latest", N) of a model's config in the repository."""
    policy = parse_config(repository.store.get_bytes(f"{model}/{name}").decode()).version_policy
    if policy.HasField("specific"):
        return "specific", list(policy.specific.versions)
    return "latest", policy.latest.num_versions


def in_play_everywhere(repository: ModelRepository) -> list[int]:
    """The versions every member lists (``specific``) in every config variant; they must all agree."""
    policies = {(m, n): policy_of(repository, m, n) for m in MEMBERS for n in (CONFIG_NAME, GPU)}
    distinct = {(kind, tuple(v) if isinstance(v, list) else v) for kind, v in policies.values()}
    assert len(distinct) == 1 and next(iter(distinct))[0] == "specific", policies
    return list(next(iter(distinct))[1])


def config_files(repository: ModelRepository) -> dict[str, bytes]:
    return {o.key: repository.store.get_bytes(o.key) for o in repository.store.list() if o.key.endswith(".pbtxt")}


def other_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """A version that answers differently: both classifiers are the MLP."""
    return {**files, "digits_logreg": files["digits_mlp"]}


def half_written(repository: ModelRepository, version: int, files: dict[str, bytes], members=MEMBERS) -> None:
    """Member files of `version`, no ensemble placeholder: what a publish that died halfway leaves."""
    for member in members:
        repository.store.put_bytes(f"{member}/{version}/model.onnx", files[member])


@pytest.fixture
def repository(tmp_path) -> ModelRepository:
    return ModelRepository(open_store(f"file://{tmp_path}/repo"))


@pytest.fixture
def records(tmp_path) -> Records:
    return Records(open_store(f"file://{tmp_path}/bucket"))


@pytest.fixture
def triton(repository) -> FakeTriton:
    return FakeTriton(repository)


@pytest.fixture
def registry(repository, records, triton) -> Registry:
    return Registry(repository, records, triton)


@pytest.fixture
def files(digits) -> dict[str, bytes]:
    return digits.onnx_files


@pytest.fixture
def rows(digits) -> np.ndarray:
    return digits.package.holdout_features()[:16]


def evaluated(files: dict[str, bytes], rows: np.ndarray) -> dict[str, np.ndarray]:
    """What the gates saw of a version: its ONNX files run in this process."""
    return OnnxEnsemble(FAMILY, files).run({"pixels": rows})


def first_build(registry: Registry, triton: FakeTriton, files: dict[str, bytes]) -> None:
    """Version 1 built without Triton (``rts models init``), then Triton started as the stack starts it:
    the members, the plain ensemble and the version ensembles of the versions in play."""
    offline = Registry(registry.repository, registry.records)
    offline.publish(FAMILY, 1, files)
    offline.promote(MODEL, FAMILY, 1, by="rts models init", reason="first version")
    for member in MEMBERS:
        triton.load(member)
    triton.load(ENSEMBLE)
    for version in offline.stages(MODEL).in_play():
        triton.load(version_ensemble(ENSEMBLE, version))


def release(registry: Registry, version: int, files: dict[str, bytes], rows: np.ndarray,
            to: str = "production") -> None:
    """A retraining run: publish, load and verify, then production (policy direct) or a challenger stage."""
    registry.publish(FAMILY, version, files)
    registry.load_and_verify(MODEL, FAMILY, version, rows, evaluated(files, rows))
    if to == "production":
        registry.promote(MODEL, FAMILY, version, by=f"run {version}", reason="passed its gates")
        return
    registry.add_candidate(MODEL, FAMILY, version, by=f"run {version}")
    if to != "candidate":
        registry.move(MODEL, version, to, by="rollout-controller", reason="test")


def stages_of(registry: Registry) -> dict[int, str]:
    return dict(registry.stages(MODEL).versions)


# ---- ModelRepository: writing versions ----------------------------------------------------------

def test_write_version_writes_every_member_then_the_ensemble_placeholder(tmp_path, files):
    store = RecordingStore(open_store(f"file://{tmp_path}/repo"))
    repository = ModelRepository(store)
    repository.write_version(FAMILY, 1, files)

    placeholder = f"{ENSEMBLE}/1/{ENSEMBLE_PLACEHOLDER}"
    assert store.written[-1] == placeholder and store.written.count(placeholder) == 1
    python_members = [m for m in MEMBERS if FAMILY.member_configs[m].platform == "python"]
    assert python_members  # the CPU configs run ONNX in the Python backend
    for member in MEMBERS:
        onnx_key = f"{member}/1/model.onnx"
        assert repository.read_member(member, 1) == files[member]
        assert store.written.index(onnx_key) < store.written.index(placeholder)
        if member in python_members:
            runner_key = f"{member}/1/model.py"
            assert store.written.index(onnx_key) < store.written.index(runner_key)  # model.py last
            own = FAMILY.sources / member / "model.py"
            runner = (own if own.exists() else PYTHON_BACKEND).read_bytes()
            assert repository.read_member(member, 1, "model.py") == runner
        for name in (CONFIG_NAME, GPU):  # both variants, the first version in play
            assert f"{member}/{name}" in store.written
            assert policy_of(repository, member, name) == ("specific", [1])
    # the version ensemble is written before the placeholder that makes the version complete
    version_config = f"{version_ensemble(ENSEMBLE, 1)}/{CONFIG_NAME}"
    assert store.written.index(version_config) < store.written.index(placeholder)
    assert repository.versions(ENSEMBLE) == [1] and repository.complete_versions(FAMILY) == [1]
    assert repository.next_version(FAMILY) == 2
    assert repository.served_version(FAMILY) is None  # written, not pinned
    assert repository.loaded_versions(FAMILY) == [1]

    repository.write_version(FAMILY, 2, files)  # a later version is not in play until set_in_play
    assert in_play_everywhere(repository) == [1]
    assert repository.loaded_versions(FAMILY) == [1] and repository.complete_versions(FAMILY) == [1, 2]


def test_a_python_member_version_brings_its_bytecode_so_loading_it_changes_nothing_in_its_folder(tmp_path, files,
                                                                                                monkeypatch):
    """Triton's Python-backend stub wrote model.py's bytecode into the version folder on the first load; Triton
    took the folder for changed and loaded every member version again at the next ensemble load (1.5 s per publish,
    measured with the real tritonserver). The bytecode is written with the version, and Python uses it as it is."""
    import importlib.util
    import os

    from services.registry.repository import BYTECODE

    store = RecordingStore(open_store(f"file://{tmp_path}/repo"))
    ModelRepository(store).write_version(FAMILY, 1, files)
    member = next(m for m in MEMBERS if FAMILY.member_configs[m].platform == "python")
    folder = tmp_path / "repo" / member / "1"
    assert store.written.index(f"{member}/1/{BYTECODE}") < store.written.index(f"{member}/1/model.py")
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")} | {folder: folder.stat().st_mtime_ns}
    os.utime(folder / "model.py", ns=(1, 1))  # a source older than anything: an mtime-checked .pyc would be stale
    before[folder / "model.py"] = 1

    monkeypatch.setattr("sys.dont_write_bytecode", False)  # as the stub: it writes bytecode it does not find
    assert importlib.util.cache_from_source(str(folder / "model.py")) == str(folder / BYTECODE)
    spec = importlib.util.spec_from_file_location("member_model", folder / "model.py")
    assert spec.loader.get_code("member_model") is not None  # what an import runs; nothing written
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} | {folder: folder.stat().st_mtime_ns} == before


def test_the_version_ensemble_pins_every_step_to_its_version(repository, files):
    for v in (1, 2):
        repository.write_version(FAMILY, v, files)
    source = parse_config((FAMILY.sources / ENSEMBLE / CONFIG_NAME).read_text())
    for v in (1, 2):
        name = version_ensemble(ENSEMBLE, v)
        assert name == f"{ENSEMBLE}__v{v}"
        config = parse_config(repository.store.get_bytes(f"{name}/{CONFIG_NAME}").decode())
        assert config.name == name and config.platform == "ensemble"
        assert list(config.version_policy.specific.versions) == [v]
        assert [s.model_name for s in config.ensemble_scheduling.step] == [s.model_name for s in FAMILY.config.steps]
        assert [s.model_version for s in config.ensemble_scheduling.step] == [v] * len(FAMILY.config.steps)
        # nothing else changed: inputs, outputs, the tensor maps
        for field in ("name", "version_policy"):
            config.ClearField(field)
        for step in config.ensemble_scheduling.step:
            step.model_version = -1
        expected = parse_config(format_config(source))
        for field in ("name", "version_policy"):
            expected.ClearField(field)
        assert config == expected
        # its one version is N, with a placeholder (object stores have no empty folders)
        assert repository.store.exists(f"{name}/{v}/{ENSEMBLE_PLACEHOLDER}")
        assert repository.versions(name) == [v]
    # not a version of the plain ensemble, and not counted when numbering versions
    assert repository.versions(ENSEMBLE) == [1, 2] and repository.next_version(FAMILY) == 3


def test_the_version_ensemble_keeps_every_config_variant_in_step(tmp_path, files):
    """With an ensemble that has a GPU variant too (digits has none): both are written and pinned."""
    sources = tmp_path / "triton_models"
    for model in FAMILY.models:
        shutil.copytree(FAMILY.sources / model, sources / model)
    gpu_text = (sources / ENSEMBLE / CONFIG_NAME).read_text().replace("max_batch_size: 64", "max_batch_size: 32")
    assert gpu_text != (sources / ENSEMBLE / CONFIG_NAME).read_text()
    (sources / ENSEMBLE / "configs").mkdir()
    (sources / ENSEMBLE / GPU).write_text(gpu_text)
    family = EnsembleFamily.load(sources, ENSEMBLE)
    repository = ModelRepository(open_store(f"file://{tmp_path}/repo"))
    for v in (1, 2):
        repository.write_version(family, v, files)

    name = version_ensemble(ENSEMBLE, 2)
    variants = sorted(k for k in config_files(repository) if k.startswith(f"{name}/"))
    assert variants == [f"{name}/{CONFIG_NAME}", f"{name}/{GPU}"]
    for key, batch in zip(variants, (64, 32)):
        config = parse_config(repository.store.get_bytes(key).decode())
        assert config.name == name and config.max_batch_size == batch  # each variant from its own source
        assert list(config.version_policy.specific.versions) == [2]
        assert {s.model_version for s in config.ensemble_scheduling.step} == {2}
    # the plain ensemble's pin moves both variants too
    repository.pin_ensemble(family, 2)
    for key, batch in ((f"{ENSEMBLE}/{CONFIG_NAME}", 64), (f"{ENSEMBLE}/{GPU}", 32)):
        config = parse_config(repository.store.get_bytes(key).decode())
        assert config.max_batch_size == batch and list(config.version_policy.specific.versions) == [2]
        assert {s.model_version for s in config.ensemble_scheduling.step} == {2}


def test_versions_are_immutable(repository, files):
    repository.write_version(FAMILY, 1, files)
    before = {o.key: o.etag for o in repository.store.list()}
    changed = {m: b"other bytes" for m in MEMBERS}
    with pytest.raises(FileExistsError, match="immutable"):
        repository.write_version(FAMILY, 1, changed)
    assert {o.key: o.etag for o in repository.store.list()} == before
    assert all(repository.read_member(m, 1) == files[m] for m in MEMBERS)


def test_write_version_needs_a_file_for_every_member(repository, files):
    partial = dict(files)
    dropped = partial.pop(MEMBERS[-1])
    assert dropped
    with pytest.raises(ValueError, match=MEMBERS[-1]):
        repository.write_version(FAMILY, 1, partial)
    assert list(repository.store.list()) == []


def test_complete_versions_ignores_half_written_versions(tmp_path, files):
    repository = ModelRepository(open_store(f"file://{tmp_path}/repo"))
    repository.write_version(FAMILY, 1, files)
    # version 2: the member files and its version ensemble made it, the ensemble placeholder did not
    dying = ModelRepository(RecordingStore(repository.store, fail_on=f"{ENSEMBLE}/2/{ENSEMBLE_PLACEHOLDER}"))
    with pytest.raises(OSError):
        dying.write_version(FAMILY, 2, files)
    assert all(repository.versions(m) == [1, 2] for m in MEMBERS)
    assert repository.versions(ENSEMBLE) == [1]
    # version 3: died after the first member
    dying = ModelRepository(RecordingStore(repository.store, fail_on=f"{MEMBERS[1]}/3/model.onnx"))
    with pytest.raises(OSError):
        dying.write_version(FAMILY, 3, files)
    assert repository.versions(MEMBERS[0]) == [1, 2, 3]
    assert repository.complete_versions(FAMILY) == [1]
    assert repository.next_version(FAMILY) == 4  # half-written numbers are never reused
    assert in_play_everywhere(repository) == [1]  # and never put in play


# ---- ModelRepository: pins and versions in play -------------------------------------------------

def test_pin_ensemble_pins_the_ensemble_and_every_step(repository, files):
    for v in (1, 2):
        repository.write_version(FAMILY, v, files)
    version_ensembles = {k: v for k, v in config_files(repository).items() if "__v" in k}
    repository.pin_ensemble(FAMILY, 2)
    config = parse_config(repository.store.get_bytes(f"{ENSEMBLE}/{CONFIG_NAME}").decode())
    assert list(config.version_policy.specific.versions) == [2]
    assert [s.model_name for s in config.ensemble_scheduling.step] == [s.model_name for s in FAMILY.config.steps]
    assert [s.model_version for s in config.ensemble_scheduling.step] == [2] * len(FAMILY.config.steps)
    assert repository.served_version(FAMILY) == 2

    repository.pin_ensemble(FAMILY, 1)
    assert repository.served_version(FAMILY) == 1
    with pytest.raises(FileNotFoundError):
        repository.pin_ensemble(FAMILY, 3)
    assert repository.served_version(FAMILY) == 1
    # the version ensembles are never touched by a pin
    assert {k: v for k, v in config_files(repository).items() if "__v" in k} == version_ensembles


def test_set_in_play_sets_specific_on_every_member_and_variant(repository, files):
    for v in (1, 2, 3):
        repository.write_version(FAMILY, v, files)
    gpu_sources = {m: parse_config((FAMILY.sources / m / GPU).read_text()) for m in MEMBERS}

    repository.set_in_play(FAMILY, [3, 1, 1])
    assert in_play_everywhere(repository) == [1, 3]
    assert repository.loaded_versions(FAMILY) == [1, 3]
    for member in MEMBERS:  # the GPU variant stays the GPU variant: only its version policy changed
        gpu = repository.config(FAMILY, member, GPU)
        gpu.ClearField("version_policy")
        source = gpu_sources[member]
        source.ClearField("version_policy")
        assert gpu == source
        assert repository.config(FAMILY, member).instance_group[0].kind != gpu.instance_group[0].kind

    repository.set_in_play(FAMILY, [2])  # exactly these: versions also leave
    assert in_play_everywhere(repository) == [2]


def test_set_in_play_refuses_nothing_in_play_and_versions_a_member_lacks(repository, files):
    for v in (1, 2):
        repository.write_version(FAMILY, v, files)
    repository.set_in_play(FAMILY, [1, 2])
    half_written(repository, 3, files, members=MEMBERS[:1])  # only the first member has a version 3
    before = config_files(repository)

    with pytest.raises(ValueError, match="at least one"):
        repository.set_in_play(FAMILY, [])
    for missing in ([1, 3], [9]):
        with pytest.raises(FileNotFoundError, match=str(missing[-1])):
            repository.set_in_play(FAMILY, missing)
    assert config_files(repository) == before  # no member was changed on the way to the refusal


# ---- Registry: load and verify ------------------------------------------------------------------

def test_load_and_verify_loads_the_new_version_beside_the_ones_in_play(registry, repository, records, triton,
                                                                        files, rows):
    first_build(registry, triton, files)
    registry.publish(FAMILY, 2, other_files(files))
    expected = evaluated(other_files(files), rows)
    assert not np.allclose(expected["probabilities"], evaluated(files, rows)["probabilities"], atol=1e-3)
    with pytest.raises(RuntimeError, match="not loaded"):  # as in Triton: not before its members
        triton.load(version_ensemble(ENSEMBLE, 2))
    stages = records.stages(MODEL)

    seconds = registry.load_and_verify(MODEL, FAMILY, 2, rows, expected)
    assert seconds >= 0
    for member in MEMBERS:
        assert triton.ready_versions(member) == [1, 2]  # beside the one in play
    assert in_play_everywhere(repository) == [1, 2]
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 2)) == [2]
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 1)) == [1]  # still loaded, still version 1
    answers = triton.infer_sync(version_ensemble(ENSEMBLE, 1), 1, {"pixels": rows}, ["probabilities"])
    assert np.allclose(answers["probabilities"], evaluated(files, rows)["probabilities"], atol=1e-4)
    # serving untouched: the plain ensemble, its pin, the stages
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1
    assert records.stages(MODEL) == stages and registry.stages(MODEL).stage(2) is None


def test_load_and_verify_keeps_every_version_in_play(registry, triton, repository, files, rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows)                    # 1 is now the previous production
    release(registry, 3, files, rows, to="canary")
    registry.publish(FAMILY, 4, files)
    registry.load_and_verify(MODEL, FAMILY, 4, rows, evaluated(files, rows))
    for member in MEMBERS:
        assert triton.ready_versions(member) == [1, 2, 3, 4]
    assert in_play_everywhere(repository) == [1, 2, 3, 4]


def test_load_and_verify_refuses_wrong_answers_and_serving_is_untouched(registry, repository, records, triton,
                                                                         files, rows):
    first_build(registry, triton, files)
    registry.publish(FAMILY, 2, files)
    expected = evaluated(files, rows)
    stages, pinned = records.stages(MODEL), config_files(repository)[f"{ENSEMBLE}/{CONFIG_NAME}"]
    triton.wrong_by = 0.01
    with pytest.raises(RuntimeError, match="through its members differs from the evaluated model"):
        registry.load_and_verify(MODEL, FAMILY, 2, rows, expected)
    assert version_ensemble(ENSEMBLE, 2) not in triton.loads  # nothing routable was loaded for it
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1
    assert config_files(repository)[f"{ENSEMBLE}/{CONFIG_NAME}"] == pinned
    assert records.stages(MODEL) == stages

    triton.wrong_by = 1e-6  # within the tolerance
    registry.load_and_verify(MODEL, FAMILY, 2, rows, expected)
    wrong_shape = {name: value[:-1] for name, value in expected.items()}
    with pytest.raises(RuntimeError, match="differs"):
        registry.load_and_verify(MODEL, FAMILY, 2, rows, wrong_shape)
    assert records.stages(MODEL) == stages and repository.served_version(FAMILY) == 1


def test_load_and_verify_checks_the_version_ensemble_itself(registry, repository, triton, files, rows):
    """Members right, version ensemble wrong (its steps call version 1): refused, naming the ensemble."""
    first_build(registry, triton, files)
    registry.publish(FAMILY, 2, other_files(files))
    key = f"{version_ensemble(ENSEMBLE, 2)}/{CONFIG_NAME}"
    broken = parse_config(repository.store.get_bytes(key).decode())
    for step in broken.ensemble_scheduling.step:
        step.model_version = 1
    repository.store.put_bytes(key, format_config(broken).encode())
    with pytest.raises(RuntimeError, match=rf"through {version_ensemble(ENSEMBLE, 2)} differs"):
        registry.load_and_verify(MODEL, FAMILY, 2, rows, evaluated(other_files(files), rows))
    assert version_ensemble(ENSEMBLE, 2) in triton.loads  # the members passed: it got that far
    assert repository.served_version(FAMILY) == 1 and registry.stages(MODEL).stage(2) is None


def test_load_and_verify_refuses_a_version_triton_did_not_load(registry, repository, triton, files, rows):
    first_build(registry, triton, files)
    registry.publish(FAMILY, 2, files)
    triton.load = lambda model: triton.loads.append(model)  # Triton answers, loads nothing new
    with pytest.raises(RuntimeError, match="did not load"):
        registry.load_and_verify(MODEL, FAMILY, 2, rows, evaluated(files, rows))
    assert repository.served_version(FAMILY) == 1 and registry.stages(MODEL).stage(2) is None


# ---- Registry: stages ---------------------------------------------------------------------------

def test_add_candidate_refuses_incomplete_versions(registry, repository, records, triton, files, rows):
    first_build(registry, triton, files)
    registry.publish(FAMILY, 2, files)
    half_written(repository, 3, files)
    before = records.stages(MODEL)
    for version in (3, 9):
        with pytest.raises(VersionNotAvailable, match=f"version {version}"):
            registry.add_candidate(MODEL, FAMILY, version, by="run 3")
    assert records.stages(MODEL) == before

    transition = registry.add_candidate(MODEL, FAMILY, 2, by="run 2", numbers={"holdout": 0.97})
    assert (transition["version"], transition["from"], transition["to"]) == (2, None, "candidate")
    assert transition["by"] == "run 2" and transition["numbers"] == {"holdout": 0.97}
    assert stages_of(registry) == {1: "production", 2: "candidate"}
    assert registry.stages(MODEL).history(2) == [transition]


def test_move_goes_between_challenger_stages_only(registry, repository, triton, files, rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows, to="candidate")
    for to in ("production", "archived"):
        with pytest.raises(StageError, match="promote"):
            registry.move(MODEL, 2, to, by="rollout-controller", reason="no")
    with pytest.raises(StageError, match="not a stage"):
        registry.move(MODEL, 2, "staging", by="operator", reason="typo")

    registry.move(MODEL, 2, "shadow", by="rollout-controller", reason="candidate ok")
    moved = registry.move(MODEL, 2, "canary", by="rollout-controller", reason="agrees", numbers={"agree": 0.99})
    assert (moved["from"], moved["to"], moved["numbers"]) == ("shadow", "canary", {"agree": 0.99})
    assert [t["to"] for t in registry.stages(MODEL).history(2)] == ["candidate", "shadow", "canary"]

    registry.retire(MODEL, FAMILY, 2, by="rollout-controller", reason="canary errors")
    before = stages_of(registry)
    for version, what in ((2, "archived"), (7, "unknown"), (1, "production")):
        with pytest.raises(StageError, match=what):
            registry.move(MODEL, version, "canary", by="rollout-controller", reason="no")
    assert stages_of(registry) == before
    assert repository.served_version(FAMILY) == 1  # no stage change pins anything


def test_promote_archives_the_previous_production_and_keeps_it_in_play(registry, repository, records, triton,
                                                                        files, rows):
    first_build(registry, triton, files)
    release(registry, 2, other_files(files), rows, to="canary")
    loads = len(triton.loads)
    seconds = registry.promote(MODEL, FAMILY, 2, by="operator", reason="canary healthy", numbers={"errors": 0})
    assert seconds >= 0
    # pinned and reloaded: the plain ensemble serves 2, nothing else was loaded (2 was in play)
    assert repository.served_version(FAMILY) == 2 and triton.served_version(ENSEMBLE) == "2"
    assert triton.loads[loads:] == [ENSEMBLE]
    answers = triton.infer_sync(ENSEMBLE, 2, {"pixels": rows}, ["probabilities"])
    assert np.allclose(answers["probabilities"], evaluated(other_files(files), rows)["probabilities"], atol=1e-4)
    book = registry.stages(MODEL)
    assert book.versions == {1: "archived", 2: "production"}
    archived = book.history(1)[-1]
    assert (archived["from"], archived["to"], archived["by"]) == ("production", "archived", "operator")
    assert "replaced by version 2" in archived["reason"]
    promoted = book.history(2)[-1]
    assert (promoted["from"], promoted["to"], promoted["numbers"]) == ("canary", "production", {"errors": 0})
    # the replaced production stays loaded: rolling back to it is instant
    assert book.previous_production == 1 and book.in_play() == [1, 2]
    for member in MEMBERS:
        assert triton.ready_versions(member) == [1, 2]
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 1)) == [1]


def test_promote_loads_a_version_that_is_not_in_play(registry, repository, triton, files, rows):
    first_build(registry, triton, files)
    registry.publish(FAMILY, 2, files)  # published, never loaded (operator promotes it by number)
    registry.promote(MODEL, FAMILY, 2, by="operator", reason="by number")
    for member in MEMBERS:
        assert triton.ready_versions(member) == [1, 2]
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 2)) == [2]
    assert triton.served_version(ENSEMBLE) == "2" and stages_of(registry) == {1: "archived", 2: "production"}


def test_a_promote_triton_refuses_leaves_the_pin_and_stages_where_they_were(registry, repository, records, triton,
                                                                            files, rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows, to="candidate")
    before = records.stages(MODEL)
    triton.refuse = {ENSEMBLE}  # the plain ensemble does not load (a timeout)
    with pytest.raises(RuntimeError, match="timed out"):
        registry.promote(MODEL, FAMILY, 2, by="operator", reason="should not happen")
    assert repository.served_version(FAMILY) == 1 and triton.served_version(ENSEMBLE) == "1"
    assert records.stages(MODEL) == before

    # the members' configs list 3 (a load that died), Triton never loaded it: the pin goes back, reloaded
    triton.refuse = set()
    registry.publish(FAMILY, 3, files)
    repository.set_in_play(FAMILY, [1, 2, 3])
    loads = len(triton.loads)
    with pytest.raises(RuntimeError, match="not loaded"):
        registry.promote(MODEL, FAMILY, 3, by="operator", reason="should not happen")
    assert repository.served_version(FAMILY) == 1 and triton.served_version(ENSEMBLE) == "1"
    assert triton.loads[loads:] == [ENSEMBLE, ENSEMBLE]  # the failed load, then the pin put back
    assert records.stages(MODEL) == before


def test_promote_without_triton_only_changes_files_and_stages(repository, records, files):
    registry = Registry(repository, records)  # the first build: Triton is not running yet
    for v in (1, 2):
        registry.publish(FAMILY, v, files)
    registry.promote(MODEL, FAMILY, 2, by="rts models init", reason="first version")
    assert repository.served_version(FAMILY) == 2 and registry.production(MODEL) == 2
    # what Triton loads when it starts: the members serve what the ensemble pins
    assert 2 in repository.loaded_versions(FAMILY)
    assert set(registry.stages(MODEL).in_play()) <= set(in_play_everywhere(repository))
    triton = FakeTriton(repository)
    for member in MEMBERS:
        triton.load(member)
    triton.load(ENSEMBLE)
    assert triton.served_version(ENSEMBLE) == "2"
    with pytest.raises(RuntimeError, match="TritonClient"):
        registry.load_and_verify(MODEL, FAMILY, 2, np.zeros((1, 64), np.float32), {})


def test_retire_refuses_production_and_unknown_versions(registry, triton, files, rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows, to="canary")
    for version, what in ((1, "production"), (5, "no version 5")):
        with pytest.raises(StageError, match=what):
            registry.retire(MODEL, FAMILY, version, by="operator", reason="no")
    transition = registry.retire(MODEL, FAMILY, 2, by="rollout-controller", reason="errors",
                                 numbers={"error_rate": 0.2})
    assert (transition["from"], transition["to"], transition["numbers"]) == ("canary", "archived",
                                                                               {"error_rate": 0.2})
    assert stages_of(registry) == {1: "production", 2: "archived"}
    assert registry.stages(MODEL).in_play() == [1]


# ---- Registry: rollback -------------------------------------------------------------------------

def test_rollback_without_a_version_archives_every_challenger(registry, repository, triton, files, rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows, to="candidate")
    release(registry, 3, files, rows, to="canary")
    loads = len(triton.loads)
    result = registry.rollback(MODEL, FAMILY, by="operator")
    assert result == {"retired": [2, 3], "production": 1}
    assert stages_of(registry) == {1: "production", 2: "archived", 3: "archived"}
    assert all(t["reason"] == "rollback by operator" and t["by"] == "operator"
               for v in (2, 3) for t in registry.stages(MODEL).history(v)[-1:])
    # production untouched: no pin, no load
    assert repository.served_version(FAMILY) == 1 and triton.loads[loads:] == []
    assert registry.stages(MODEL).in_play() == [1]


def test_rollback_without_challengers_goes_back_to_the_previous_production(registry, repository, triton, files,
                                                                           rows):
    first_build(registry, triton, files)
    with pytest.raises(VersionNotAvailable, match="no earlier production"):
        registry.rollback(MODEL, FAMILY, by="operator")
    release(registry, 2, other_files(files), rows)
    loads = len(triton.loads)
    result = registry.rollback(MODEL, FAMILY, by="operator")
    assert result["production"] == 1 and result["seconds"] >= 0
    assert repository.served_version(FAMILY) == 1 and triton.served_version(ENSEMBLE) == "1"
    assert triton.loads[loads:] == [ENSEMBLE]  # instant: 1 was still loaded
    answers = triton.infer_sync(ENSEMBLE, 1, {"pixels": rows}, ["probabilities"])
    assert np.allclose(answers["probabilities"], evaluated(files, rows)["probabilities"], atol=1e-4)
    book = registry.stages(MODEL)
    assert book.versions == {1: "production", 2: "archived"}
    assert book.history(1)[-1]["reason"] == "rollback by operator"
    assert book.previous_production == 2 and book.in_play() == [1, 2]  # and forward again is instant too


def test_rollback_to_an_earlier_version_loads_it_beside_production(registry, repository, triton, files, rows):
    first_build(registry, triton, files)
    for v in (2, 3, 4):
        release(registry, v, files, rows)
    registry.unload_retired(MODEL, FAMILY)
    assert triton.ready_versions(MEMBERS[0]) == [3, 4]
    result = registry.rollback(MODEL, FAMILY, 1, by="operator")
    assert result["production"] == 1
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1
    for member in MEMBERS:
        assert triton.ready_versions(member) == [1, 3, 4]  # the old one beside the ones that served
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 1)) == [1]
    book = registry.stages(MODEL)
    assert book.versions == {1: "production", 2: "archived", 3: "archived", 4: "archived"}
    assert book.previous_production == 4

    registry.publish(FAMILY, 5, files)  # the next run loads beside everything loaded: nothing is dropped
    registry.load_and_verify(MODEL, FAMILY, 5, rows, evaluated(files, rows))
    assert triton.ready_versions(MEMBERS[0]) == [1, 3, 4, 5]
    registry.add_candidate(MODEL, FAMILY, 5, by="run")
    assert registry.unload_retired(MODEL, FAMILY) == [3]  # what a controller does after the grace period
    assert triton.ready_versions(MEMBERS[0]) == [1, 4, 5]


def test_rollback_to_a_version_that_is_not_complete_changes_nothing(registry, repository, records, triton, files,
                                                                    rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows)
    half_written(repository, 3, files)  # version 3: members only, as a publish that died halfway leaves it
    configs, stages, loads = config_files(repository), records.stages(MODEL), list(triton.loads)
    ready = {m: triton.ready_versions(m) for m in MEMBERS}
    for version in (3, 9, 0):
        with pytest.raises(VersionNotAvailable, match=rf"version {version} .*\[1, 2\]"):
            registry.rollback(MODEL, FAMILY, version, by="operator")
    assert config_files(repository) == configs
    assert records.stages(MODEL) == stages
    assert triton.loads == loads and triton.served_version(ENSEMBLE) == "2"
    assert {m: triton.ready_versions(m) for m in MEMBERS} == ready


# ---- Registry: unloading retired versions -------------------------------------------------------

def test_unload_retired_drops_archived_versions_but_the_previous_production(registry, repository, triton, files,
                                                                            rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows)                 # 1 archived, previous production
    release(registry, 3, files, rows)                 # 2 archived, previous production; 1 only archived
    unloads = len(triton.unloads)
    release(registry, 4, files, rows, to="canary")  # loads beside everything loaded: loading drops nothing
    assert triton.unloads[unloads:] == []
    registry.retire(MODEL, FAMILY, 4, by="rollout-controller", reason="canary errors")
    assert registry.stages(MODEL).in_play() == [2, 3]
    assert repository.loaded_versions(FAMILY) == [1, 2, 3, 4]  # retired, still loaded (requests on their way)

    dropped = registry.unload_retired(MODEL, FAMILY)  # 1 and 4 leave; their version ensembles go first
    assert dropped == [1, 4]
    assert triton.unloads[unloads:] == [version_ensemble(ENSEMBLE, v) for v in (1, 4)]
    assert in_play_everywhere(repository) == [2, 3]
    for member in MEMBERS:
        assert triton.ready_versions(member) == [2, 3]
    for v in (1, 4):  # no version ensemble is left calling member versions that are gone
        assert triton.ready_versions(version_ensemble(ENSEMBLE, v)) == []
    for v in (2, 3):
        assert triton.ready_versions(version_ensemble(ENSEMBLE, v)) == [v]
    assert triton.served_version(ENSEMBLE) == "3" and repository.served_version(FAMILY) == 3

    loads = len(triton.loads)
    assert registry.unload_retired(MODEL, FAMILY) == []  # nothing left to drop: nothing reloads
    assert triton.loads[loads:] == []


def test_every_loaded_version_ensemble_can_still_answer(registry, triton, files, rows):
    """Whatever the order of runs, retirements and rollbacks, a loaded version ensemble has its members."""
    first_build(registry, triton, files)
    release(registry, 2, files, rows)
    release(registry, 3, files, rows, to="canary")
    registry.rollback(MODEL, FAMILY, by="operator")   # 3 archived
    release(registry, 4, files, rows)                 # loads beside 1 (previous) and 2: 3 leaves the members
    registry.unload_retired(MODEL, FAMILY)
    for model, versions in triton.loaded.items():
        if model.startswith(f"{ENSEMBLE}__v"):
            version = versions[0]
            triton.infer_sync(model, version, {"pixels": rows}, ["probabilities"])


# ---- Registry: describe -------------------------------------------------------------------------

def test_describe_lists_complete_versions_with_stages_and_lineage(registry, repository, records, triton, files,
                                                                  rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows)
    release(registry, 3, files, rows, to="canary")
    records.save_version(MODEL, {"model": MODEL, "version": 1, "created_at": "2026-01-01T00:00:00+00:00",
                                 "run_id": "run-1", "metrics": {"candidate": {"accuracy": 0.97}},
                                 "gates": [{"name": "holdout", "passed": True}, {"name": "latency", "passed": False}]})
    half_written(repository, 4, files)  # not listed
    registry.publish(FAMILY, 5, files)  # complete, never staged

    described = registry.describe(MODEL, FAMILY)
    assert described["model"] == MODEL and described["serving"] == 2 and described["in_play"] == [1, 2, 3]
    assert [(v["version"], v["stage"], v["serving"]) for v in described["versions"]] == [
        (1, "archived", False), (2, "production", True), (3, "canary", False), (5, "unstaged", False)]
    first, second = described["versions"][:2]
    assert first["run_id"] == "run-1" and first["created_at"] == "2026-01-01T00:00:00+00:00"
    assert first["metrics"] == {"accuracy": 0.97} and first["gates_passed"] is False
    assert first["lineage"]["gates"][0]["name"] == "holdout"
    assert [(t["from"], t["to"]) for t in first["transitions"]] == [(None, "production"), ("production", "archived")]
    assert second["lineage"] == {"note": "no lineage record"} and second["gates_passed"] is None
    assert second["run_id"] is None

    brief = registry.describe(MODEL, FAMILY, lineage=False)
    assert brief == {"model": MODEL, "serving": 2, "in_play": [1, 2, 3],
                     "versions": [{"version": 1, "stage": "archived", "serving": False},
                                  {"version": 2, "stage": "production", "serving": True},
                                  {"version": 3, "stage": "canary", "serving": False},
                                  {"version": 5, "stage": "unstaged", "serving": False}]}


def test_adopt_brings_a_repository_from_before_stages_up_to_date(repository, records, triton, files):
    """A repository the previous layout wrote: versions, a pinned ensemble, no stages, no version ensembles."""
    registry = Registry(repository, records)
    for v in (1, 2, 3):
        registry.publish(FAMILY, v, files)
    for v in (1, 2, 3):  # what the old layout did not write
        repository.store.delete(f"{version_ensemble(ENSEMBLE, v)}/{CONFIG_NAME}")
    repository.pin_ensemble(FAMILY, 2)
    assert registry.stages(MODEL).versions == {}

    book = registry.adopt(MODEL, FAMILY)
    assert book.versions == {2: "production"} and registry.production(MODEL) == 2
    assert book.transitions[-1]["by"] == "registry upgrade"
    assert in_play_everywhere(repository) == [2] and repository.served_version(FAMILY) == 2
    for v in (1, 2, 3):
        assert repository.store.exists(f"{version_ensemble(ENSEMBLE, v)}/{CONFIG_NAME}")
    for member in MEMBERS:  # Triton starts with what is in play, and the version ensemble answers
        triton.load(member)
    triton.load(version_ensemble(ENSEMBLE, 2))
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 2)) == [2]

    before = records.stages(MODEL)
    assert registry.adopt(MODEL, FAMILY).versions == {2: "production"}  # idempotent
    assert records.stages(MODEL) == before


def test_the_replaced_production_outlives_the_capped_transitions(registry, triton, files, rows):
    first_build(registry, triton, files)
    release(registry, 2, files, rows)
    book = registry.stages(MODEL)
    for _ in range(600):  # e.g. a long canary: every step is a transition
        book.move(2, "production", by="test", reason="noise")
    registry._save(book)
    assert registry.stages(MODEL).previous_production == 1
    assert registry.rollback(MODEL, FAMILY, by="operator")["production"] == 1


def test_add_candidate_refuses_the_production_version(registry, triton, files):
    first_build(registry, triton, files)
    with pytest.raises(StageError, match="production already"):
        registry.add_candidate(MODEL, FAMILY, 1, by="run")
    assert registry.stages(MODEL).versions == {1: "production"}


def test_unload_retired_keeps_versions_retired_too_recently(registry, repository, triton, files, rows):
    """A version just rolled back may still have requests on their way (a gateway's table is up to a
    second old): the controller names it in `keep` until its grace period is over."""
    first_build(registry, triton, files)
    release(registry, 2, files, rows, to="canary")
    release(registry, 3, files, rows, to="canary")
    registry.retire(MODEL, FAMILY, 2, by="rollout-controller", reason="superseded")
    registry.retire(MODEL, FAMILY, 3, by="rollout-controller", reason="canary errors")
    assert registry.unload_retired(MODEL, FAMILY, keep=[3]) == [2]
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 3)) == [3]  # still answers
    assert triton.ready_versions(version_ensemble(ENSEMBLE, 2)) == []
    assert registry.unload_retired(MODEL, FAMILY) == [3]  # its grace is over
