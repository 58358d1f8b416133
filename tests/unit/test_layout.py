"""The folder picture is the truth: imports go one way, and the platform never names a model.

- A model package is the unit: no platform module (services/ outside services/models/, ray_apps/)
  imports a model package, and no platform source mentions a bundled model or its Triton models by
  name, not even in an example. Model packages import only the contract (services.modelkit) and
  what it stands on.
- Imports go one way, from the request path and the retraining loop down to the ports:
  cli > runtime, ray_apps > serving > retraining > rollout > registry > modelkit > triton, events > storage,
  telemetry > settings, errors. A package imports only packages below it.
- No platform import hides inside a function (they hid two-way ties); third-party libraries may
  still be imported lazily where they are heavy or optional.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from services.modelkit.discovery import bundled_packages, load_package
from services.settings import REPO_ROOT

LAYERS = {
    "settings": 0, "errors": 0,
    "storage": 1, "telemetry": 1,
    "triton": 2, "events": 2,
    "modelkit": 3,
    "registry": 4,
    "rollout": 5,
    "retraining": 6,
    "serving": 7,
    "runtime": 8, "ray_apps": 8,
    "cli": 9,
}
MODEL_MAY_IMPORT = {"modelkit", "errors", "settings", "triton"}


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


PLATFORM = [p for p in sources(REPO_ROOT / "services") if "models" not in p.relative_to(REPO_ROOT).parts[:2]] + \
    sources(REPO_ROOT / "ray_apps")
MODELS = sources(REPO_ROOT / "services" / "models")


def package_of(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return parts[0] if parts[0] == "ray_apps" else parts[1]


def imported(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, inside a function) for every import of our own code in `path`."""
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(("services.", "ray_apps.")) or name in ("services", "ray_apps"):
                found.append((node.lineno, name, id(node) in inner))
    return found


def target_package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "ray_apps":
        return "ray_apps"
    return parts[1] if len(parts) > 1 else None


def test_every_platform_package_has_a_layer():
    assert {package_of(p) for p in PLATFORM} <= set(LAYERS) | {"__init__"}


@pytest.mark.parametrize("path", PLATFORM, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_platform_imports_go_one_way_and_never_reach_a_model(path):
    own = package_of(path)
    for line, module, in_function in imported(path):
        target = target_package(module)
        assert target != "models", f"{path.name}:{line} imports the model package {module}"
        assert not in_function, f"{path.name}:{line} hides an import of {module} inside a function"
        if target is None or target == own or own == "__init__":
            continue
        assert target in LAYERS, f"{path.name}:{line} imports {module}, which belongs to no layer"
        assert LAYERS[target] < LAYERS[own], (f"{path.name}:{line}: {own} (layer {LAYERS[own]}) imports {module} "
                                              f"({target}, layer {LAYERS[target]}): imports go one way, down")


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_model_packages_import_only_the_contract_and_themselves(path):
    own = path.relative_to(REPO_ROOT / "services" / "models").parts[0]
    for line, module, _ in imported(path):
        parts = module.split(".")
        if parts[1] == "models":
            assert len(parts) < 3 or parts[2] == own, f"{path}:{line}: one model package imports another ({module})"
        else:
            assert parts[1] in MODEL_MAY_IMPORT, f"{path}:{line}: a model package imports platform code {module}"


def bundled_names() -> set[str]:
    names = set()
    for path in bundled_packages():
        package = load_package(path)
        names |= {package.name, *package.family.models}
    return names


def test_no_platform_source_names_a_bundled_model():
    names = bundled_names()
    assert {"digits", "diabetes"} <= names  # the check below checks something
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b", re.I)
    found = [f"{p.relative_to(REPO_ROOT)}:{i}: {line.strip()}" for p in PLATFORM
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "platform code names a model:\n" + "\n".join(found)


def test_the_serve_configs_name_no_model():
    for path in (REPO_ROOT / "ray_apps" / "configs").glob("*.yaml"):
        assert not re.search(r"\b(digits|diabetes)\b", path.read_text()), path
