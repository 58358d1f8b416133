"""What every command shares: settings read once (a bad variable is one line, not a traceback), JSON output."""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import ValidationError

from services.modelkit import ModelPackage
from services.modelkit.discovery import load_models
from services.settings import Settings, get_settings


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def settings(**sections: dict[str, Any]) -> Settings:
    """The process settings, with command-line options laid over their sections."""
    try:
        base = get_settings()
        if not sections:
            return base
        data = base.model_dump(exclude_unset=True, by_alias=True)
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **{k: v for k, v in values.items() if v is not None}}
        return Settings(**data)
    except ValidationError as exc:
        raise fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}".removeprefix(
            "settings: Value error, ") for e in exc.errors())) from None


def models(settings_: Settings) -> dict[str, ModelPackage]:
    try:
        return load_models(settings_)
    except (ImportError, TypeError, ValueError) as exc:
        raise fail(str(exc)) from None


def package(settings_: Settings, name: str) -> ModelPackage:
    found = models(settings_)
    if name not in found:
        raise fail(f"no model named {name!r}; models here: {', '.join(sorted(found))}")
    return found[name]


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))
