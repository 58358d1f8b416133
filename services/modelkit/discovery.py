"""Which model packages this process serves and retrains: from configuration, never from code.

Usage::

    models = load_models(get_settings())        # {"churn": <package>, "fraud": <package>}
    package = models["churn"]

``RTS_MODELS`` lists import paths of model packages (``mycompany.models.churn``); each package's
``__init__.py`` exports ``MODEL``, a ``ModelPackage`` subclass. Unset, every package found under
``services/models/`` is used. The first one is the default model of ``POST /v1/predict``.
"""

from __future__ import annotations

import importlib
from typing import Sequence

from services.errors import UnknownModel
from services.modelkit.package import ModelPackage
from services.settings import REPO_ROOT, LimitsSettings, Settings

BUNDLED_PACKAGE = "services.models"
BUNDLED = REPO_ROOT / "services" / "models"


def bundled_packages() -> list[str]:
    """Import paths of the packages under services/models/: in the order its ``ORDER`` lists, then by name."""
    names = sorted(p.name for p in BUNDLED.iterdir()
                   if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_"))
    order = list(getattr(importlib.import_module(BUNDLED_PACKAGE), "ORDER", ()))
    names.sort(key=lambda name: (order.index(name) if name in order else len(order), name))
    return [f"{BUNDLED_PACKAGE}.{name}" for name in names]


def model_paths(settings: Settings) -> list[str]:
    return list(settings.models) or bundled_packages()


def load_package(path: str, limits: LimitsSettings | None = None) -> ModelPackage:
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ImportError(f"model package {path!r} cannot be imported ({exc}); RTS_MODELS lists import paths "
                          "of packages on the Python path") from exc
    cls = getattr(module, "MODEL", None)
    if not (isinstance(cls, type) and issubclass(cls, ModelPackage)):
        raise TypeError(f"model package {path!r} must export MODEL, a subclass of "
                        f"services.modelkit.ModelPackage (found {type(cls).__name__})")
    package = cls(limits)
    package.import_path = path  # how other processes (Ray Train workers) load the same package
    return package


def load_models(settings: Settings, paths: Sequence[str] | None = None) -> dict[str, ModelPackage]:
    models: dict[str, ModelPackage] = {}
    for path in paths if paths is not None else model_paths(settings):
        package = load_package(path, settings.limits)
        if package.name in models:
            raise ValueError(f"two model packages are named {package.name!r}")
        models[package.name] = package
    if not models:
        raise ValueError("no model packages: set RTS_MODELS or add a package under services/models/")
    return models


def model_named(models: dict[str, ModelPackage], name: str) -> ModelPackage:
    try:
        return models[name]
    except KeyError:
        raise UnknownModel(f"no model named {name!r}; served models: {sorted(models)}") from None
