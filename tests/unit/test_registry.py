"""The model registry over a local store, with a fake Triton control client (no Triton, no Ray).

Covered, with the real digits family (``triton_models/digits*``) and the conftest's trained ONNX files:

- ``ModelRepository.write_version``: every member (model.onnx, then model.py for Python-backend
  members) before the ensemble's placeholder; versions are immutable; a publish that dies halfway
  leaves no complete version (``complete_versions``);
- ``pin_ensemble``: the ensemble's version policy and every step's ``model_version``;
- ``keep_member_loadable``: an old version made loadable (``specific``), back to ``latest 3``
  when the version is among the latest; ``config.pbtxt`` and ``configs/gpu.pbtxt`` kept in step;
- ``Registry.switch`` / ``rollback`` / ``load_and_verify`` / ``describe`` against ``FakeTriton``,
  which loads what the repository's configs allow, serves the version the ensemble pins and
  answers ``infer_sync`` by running the repository's member ONNX files with onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from services.modelkit.discovery import load_package
from services.registry.publish import Registry, VersionNotAvailable
from services.registry.records import Records
from services.registry.repository import ENSEMBLE_PLACEHOLDER, MEMBER_VERSIONS_LOADED, PYTHON_BACKEND, ModelRepository
from services.storage import open_store
from services.triton.config import CONFIG_NAME, parse_config

PACKAGE = load_package("services.models.digits")
FAMILY = PACKAGE.family
MODEL = PACKAGE.name
ENSEMBLE = FAMILY.ensemble
MEMBERS = FAMILY.members
GPU = "configs/gpu.pbtxt"


# ---- helpers ------------------------------------------------------------------------------------

class FakeTriton:
    """Triton's model control API as the registry uses it, over the repository it reads.

    ``load(model)`` loads the versions the repository's ``config.pbtxt`` allows (``specific``, or
    the ``latest`` N; Triton's default is the latest one); loading the ensemble fails, as in
    Triton, when a step's pinned member version is not loaded. ``served_version`` is the highest
    loaded ensemble version. ``infer_sync`` runs the member's ONNX file of that version from the
    repository; ``wrong_by`` is added to every answer (a version that does not answer as evaluated).
    """

    def __init__(self, repository: ModelRepository, wrong_by: float = 0.0) -> None:
        self.repository, self.wrong_by = repository, wrong_by
        self.loaded: dict[str, list[int]] = {}
        self.loads: list[str] = []
        self._sessions: dict[tuple[str, int], ort.InferenceSession] = {}

    def load(self, model: str) -> None:
        self.loads.append(model)
        config = self.repository.config(FAMILY, model)
        present = self.repository.versions(model)
        policy = config.version_policy
        if policy.HasField("specific"):
            versions = [v for v in policy.specific.versions if v in present]
        else:
            versions = present[-(policy.latest.num_versions or 1):]
        if not versions:
            raise RuntimeError(f"failed to load {model!r}: no version to load")
        for step in config.ensemble_scheduling.step:
            if step.model_version not in self.loaded.get(step.model_name, []):
                raise RuntimeError(f"failed to load {model!r}: {step.model_name} version {step.model_version} "
                                   "is not loaded")
        self.loaded[model] = sorted(versions)

    def ready_versions(self, model: str) -> list[int]:
        return list(self.loaded.get(model, []))

    def served_version(self, model: str) -> str:
        return str(self.loaded[model][-1])

    def infer_sync(self, model: str, version: int | str, inputs: dict[str, np.ndarray],
                   outputs: list[str]) -> dict[str, np.ndarray]:
        version = int(version)
        if version not in self.loaded.get(model, []):
            raise RuntimeError(f"{model} version {version} is not loaded")
        key = (model, version)
        if key not in self._sessions:
            self._sessions[key] = ort.InferenceSession(self.repository.read_member(model, version),
                                                       providers=["CPUExecutionProvider"])
        answers = self._sessions[key].run(outputs, inputs)
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


def member_policy(repository: ModelRepository, member: str, name: str = CONFIG_NAME):
    return repository.config(FAMILY, member, name).version_policy


def policy_of(repository: ModelRepository, member: str, name: str = CONFIG_NAME) -> tuple:
    """("specific", [versions]) or ("latest", N) of a member's config in the repository."""
    policy = member_policy(repository, member, name)
    if policy.HasField("specific"):
        return "specific", list(policy.specific.versions)
    return "latest", policy.latest.num_versions


def config_files(repository: ModelRepository) -> dict[str, bytes]:
    return {o.key: repository.store.get_bytes(o.key) for o in repository.store.list() if o.key.endswith(".pbtxt")}


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


def serving(registry: Registry, triton: FakeTriton, version: int, files: dict[str, bytes]) -> None:
    """Versions 1..`version` published, and `version` loaded and serving (what earlier runs left)."""
    for v in range(1, version + 1):
        registry.publish(FAMILY, v, files)
    for member in MEMBERS:
        triton.load(member)
    registry.switch(MODEL, FAMILY, version, reason="earlier run")


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
        # member configs (both variants) are in the repository, loading the latest 3 versions
        for name in (CONFIG_NAME, GPU):
            assert f"{member}/{name}" in store.written
            assert policy_of(repository, member, name) == ("latest", MEMBER_VERSIONS_LOADED)
    assert repository.versions(ENSEMBLE) == [1] and repository.complete_versions(FAMILY) == [1]
    assert repository.next_version(FAMILY) == 2
    assert repository.served_version(FAMILY) is None  # written, not pinned


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
    # version 2: the member files made it, the ensemble placeholder did not (the publish died)
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


# ---- ModelRepository: pins and version policies -------------------------------------------------

def test_pin_ensemble_pins_the_ensemble_and_every_step(repository, files):
    for v in (1, 2):
        repository.write_version(FAMILY, v, files)
    repository.pin_ensemble(FAMILY, 2)
    config = parse_config(repository.store.get_bytes(f"{ENSEMBLE}/{CONFIG_NAME}").decode())
    assert list(config.version_policy.specific.versions) == [2]
    assert [s.model_name for s in config.ensemble_scheduling.step] == [s.model_name for s in FAMILY.config.steps]
    assert [s.model_version for s in config.ensemble_scheduling.step] == [2] * len(FAMILY.config.steps)
    assert repository.served_version(FAMILY) == 2
    # every config variant of the ensemble in the repository says the same
    variants = [k for k in config_files(repository) if k.startswith(f"{ENSEMBLE}/")]
    for key in variants:
        pinned = parse_config(repository.store.get_bytes(key).decode())
        assert list(pinned.version_policy.specific.versions) == [2]
        assert {s.model_version for s in pinned.ensemble_scheduling.step} == {2}

    repository.pin_ensemble(FAMILY, 1)
    assert repository.served_version(FAMILY) == 1
    with pytest.raises(FileNotFoundError):
        repository.pin_ensemble(FAMILY, 3)
    assert repository.served_version(FAMILY) == 1


def test_keep_member_loadable_makes_an_old_version_loadable(repository, files):
    for v in range(1, 6):
        repository.write_version(FAMILY, v, files)
    gpu_sources = {m: parse_config((FAMILY.sources / m / GPU).read_text()) for m in MEMBERS}

    repository.keep_member_loadable(FAMILY, 1)
    for member in MEMBERS:
        for name in (CONFIG_NAME, GPU):  # both variants in step
            assert policy_of(repository, member, name) == ("specific", [1, 4, 5])
        # the GPU variant stays the GPU variant: only its version policy changed
        gpu = repository.config(FAMILY, member, GPU)
        gpu.ClearField("version_policy")
        source = gpu_sources[member]
        source.ClearField("version_policy")
        assert gpu == source
        assert repository.config(FAMILY, member).instance_group[0].kind != gpu.instance_group[0].kind

    repository.keep_member_loadable(FAMILY, 4)  # among the latest 3: back to the plain policy
    for member in MEMBERS:
        for name in (CONFIG_NAME, GPU):
            assert policy_of(repository, member, name) == ("latest", MEMBER_VERSIONS_LOADED)


def test_keep_member_loadable_with_few_versions_keeps_latest(repository, files):
    for v in (1, 2):
        repository.write_version(FAMILY, v, files)
    repository.keep_member_loadable(FAMILY, 1)
    assert all(policy_of(repository, m, n) == ("latest", MEMBER_VERSIONS_LOADED) for m in MEMBERS
               for n in (CONFIG_NAME, GPU))


def test_a_new_version_keeps_an_old_version_loadable(repository, files):
    """Writing version 6 after a rollback to 1 leaves the members' specific policy alone."""
    for v in range(1, 6):
        repository.write_version(FAMILY, v, files)
    repository.keep_member_loadable(FAMILY, 1)
    repository.write_version(FAMILY, 6, files)
    assert all(policy_of(repository, m) == ("specific", [1, 4, 5]) for m in MEMBERS)


# ---- Registry: switch, rollback -----------------------------------------------------------------

def test_switch_pins_loads_and_records(registry, repository, records, triton, files):
    for v in (1, 2):
        registry.publish(FAMILY, v, files)
    for member in MEMBERS:
        triton.load(member)
    seconds = registry.switch(MODEL, FAMILY, 2, reason="run passed its gates", run_id="run-2")
    assert seconds >= 0
    assert repository.served_version(FAMILY) == 2 and registry.serving_version(FAMILY) == 2
    assert triton.served_version(ENSEMBLE) == "2" and triton.loads[-1] == ENSEMBLE
    state = records.serving(MODEL)
    assert state["version"] == 2
    assert [(h["version"], h["reason"], h["run_id"]) for h in state["history"]] == [(2, "run passed its gates",
                                                                                       "run-2")]

    registry.switch(MODEL, FAMILY, 1, reason="back")
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1
    state = records.serving(MODEL)
    assert state["version"] == 1 and [h["version"] for h in state["history"]] == [2, 1]
    assert state["history"][-1]["run_id"] is None


def test_switch_without_triton_only_pins(repository, records, files):
    registry = Registry(repository, records)  # the first build: Triton is not running yet
    registry.publish(FAMILY, 1, files)
    registry.switch(MODEL, FAMILY, 1, reason="first version")
    assert repository.served_version(FAMILY) == 1 and records.serving(MODEL)["version"] == 1
    with pytest.raises(RuntimeError, match="TritonClient"):
        registry.rollback(MODEL, FAMILY, 1)


def test_a_switch_triton_refuses_leaves_the_pin_where_it_was(registry, repository, records, triton, files):
    serving(registry, triton, 1, files)
    registry.publish(FAMILY, 2, files)  # published, but its members were never loaded
    with pytest.raises(RuntimeError):
        registry.switch(MODEL, FAMILY, 2, reason="should not happen")
    assert triton.served_version(ENSEMBLE) == "1" and records.serving(MODEL)["version"] == 1
    assert repository.served_version(FAMILY) == 1


def test_rollback_serves_an_earlier_version(registry, repository, records, triton, files):
    serving(registry, triton, 4, files)
    registry.rollback(MODEL, FAMILY, 1)
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1
    for member in MEMBERS:
        assert policy_of(repository, member) == ("specific", [1, 3, 4])
        assert triton.ready_versions(member) == [1, 3, 4]  # the old one beside the ones that served
    state = records.serving(MODEL)
    assert state["version"] == 1 and state["history"][-1]["reason"] == "rollback by operator"


def test_rollback_to_a_version_that_is_not_complete_changes_nothing(registry, repository, records, triton, files):
    serving(registry, triton, 2, files)
    for member in MEMBERS:  # version 3: members only, as a publish that died halfway leaves it
        repository.store.put_bytes(f"{member}/3/model.onnx", files[member])
    configs, serving_record, loads = config_files(repository), records.serving(MODEL), list(triton.loads)
    for version in (3, 9, 0):
        with pytest.raises(VersionNotAvailable, match=rf"version {version} .*\[1, 2\]"):
            registry.rollback(MODEL, FAMILY, version)
    assert config_files(repository) == configs
    assert records.serving(MODEL) == serving_record
    assert triton.loads == loads and triton.served_version(ENSEMBLE) == "2"


# ---- Registry: load and verify ------------------------------------------------------------------

def test_load_and_verify_passes_when_triton_answers_as_evaluated(registry, repository, triton, files, rows, digits):
    serving(registry, triton, 1, files)
    registry.publish(FAMILY, 2, files)
    seconds = registry.load_and_verify(FAMILY, 2, rows, digits.ensemble.run({"pixels": rows}))
    assert seconds >= 0
    for member in MEMBERS:
        assert triton.ready_versions(member) == [1, 2]  # loaded beside the serving one
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1


def test_load_and_verify_refuses_wrong_answers_and_serving_is_untouched(registry, repository, records, triton,
                                                                         files, rows, digits):
    serving(registry, triton, 1, files)
    registry.publish(FAMILY, 2, files)
    expected = digits.ensemble.run({"pixels": rows})
    triton.wrong_by = 0.01
    with pytest.raises(RuntimeError, match="differs from the evaluated model"):
        registry.load_and_verify(FAMILY, 2, rows, expected)
    assert triton.served_version(ENSEMBLE) == "1" and repository.served_version(FAMILY) == 1
    assert records.serving(MODEL)["version"] == 1

    triton.wrong_by = 1e-6  # within the tolerance
    registry.load_and_verify(FAMILY, 2, rows, expected)
    wrong_shape = {name: value[:-1] for name, value in expected.items()}
    with pytest.raises(RuntimeError, match="differs"):
        registry.load_and_verify(FAMILY, 2, rows, wrong_shape)


def test_load_and_verify_refuses_a_version_triton_did_not_load(registry, repository, triton, files, rows, digits):
    serving(registry, triton, 1, files)
    registry.publish(FAMILY, 2, files)
    triton.load = lambda model: triton.loads.append(model)  # Triton answers, loads nothing new
    with pytest.raises(RuntimeError, match="did not load"):
        registry.load_and_verify(FAMILY, 2, rows, digits.ensemble.run({"pixels": rows}))
    assert repository.served_version(FAMILY) == 1


def test_load_and_verify_after_a_rollback_keeps_the_serving_version_loaded(registry, repository, triton, files,
                                                                           rows, digits):
    serving(registry, triton, 4, files)
    registry.rollback(MODEL, FAMILY, 1)
    registry.publish(FAMILY, 5, files)
    registry.load_and_verify(FAMILY, 5, rows, digits.ensemble.run({"pixels": rows}))
    for member in MEMBERS:
        assert 1 in triton.ready_versions(member)


# ---- Registry: describe -------------------------------------------------------------------------

def test_describe_lists_complete_versions_with_lineage(registry, repository, records, triton, files):
    serving(registry, triton, 2, files)
    records.save_version(MODEL, {"model": MODEL, "version": 1, "created_at": "2026-01-01T00:00:00+00:00",
                                 "run_id": "run-1", "metrics": {"candidate": {"accuracy": 0.97}},
                                 "gates": [{"name": "holdout", "passed": True}, {"name": "latency", "passed": False}]})
    for member in MEMBERS:  # a half-written version 3 is not listed
        repository.store.put_bytes(f"{member}/3/model.onnx", files[member])

    described = registry.describe(MODEL, FAMILY)
    assert described["model"] == MODEL and described["serving"] == 2
    first, second = described["versions"]
    assert (first["version"], first["serving"], second["version"], second["serving"]) == (1, False, 2, True)
    assert first["run_id"] == "run-1" and first["created_at"] == "2026-01-01T00:00:00+00:00"
    assert first["metrics"] == {"accuracy": 0.97} and first["gates_passed"] is False
    assert first["lineage"]["gates"][0]["name"] == "holdout"
    assert second["lineage"] == {"note": "no lineage record"} and second["gates_passed"] is None
    assert second["run_id"] is None

    brief = registry.describe(MODEL, FAMILY, lineage=False)
    assert brief == {"model": MODEL, "serving": 2,
                     "versions": [{"version": 1, "serving": False}, {"version": 2, "serving": True}]}
