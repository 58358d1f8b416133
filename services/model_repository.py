"""Lay out a Triton model repository from the sources in ``triton_models/`` plus trained artifacts.

``triton_models/<model>/`` holds ``config.pbtxt`` (CPU, Python backend) and ``configs/gpu.pbtxt``
(GPU, onnxruntime). A built version folder holds ``model.onnx`` and, for Python-backend members,
``model.py`` (a copy of ``triton_models/onnx_python_backend.py``). Ensembles get a placeholder file
in their version folder because object stores have no empty folders.

Writes go to a hidden staging folder first and are moved into place with ``os.replace``, so Triton
never sees a half-written version.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from services.common.settings import REPO_ROOT

SOURCES = REPO_ROOT / "triton_models"
PYTHON_BACKEND = SOURCES / "onnx_python_backend.py"
ENSEMBLE_PLACEHOLDER = ".ensemble-version"


def is_ensemble(model_source: Path) -> bool:
    return 'platform: "ensemble"' in (model_source / "config.pbtxt").read_text()


def write_model_version(repository: Path, model: str, version: int, onnx_file: Path | None,
                        sources: Path = SOURCES) -> Path:
    """Write ``repository/model/version`` (and the model's configs) atomically; return the version folder."""
    source = sources / model
    if not (source / "config.pbtxt").is_file():
        raise FileNotFoundError(f"no Triton model source at {source}/config.pbtxt")
    model_dir = repository / model
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = repository / f".staging-{model}-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if is_ensemble(source):
            (staging / ENSEMBLE_PLACEHOLDER).write_text("ensemble versions have no files of their own\n")
        else:
            if onnx_file is None:
                raise ValueError(f"{model} is not an ensemble and needs an ONNX file")
            shutil.copyfile(onnx_file, staging / "model.onnx")
            shutil.copyfile(PYTHON_BACKEND, staging / "model.py")
        _copy_configs(source, model_dir)
        target = model_dir / str(version)
        if target.exists():
            raise FileExistsError(f"{target} already exists; versions are immutable")
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return model_dir / str(version)


def _copy_configs(source: Path, model_dir: Path) -> None:
    for rel in ["config.pbtxt", *(p.relative_to(source).as_posix() for p in (source / "configs").glob("*.pbtxt"))]:
        dest = model_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(source / rel, tmp)
        os.replace(tmp, dest)


def versions(repository: Path, model: str) -> list[int]:
    model_dir = repository / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
