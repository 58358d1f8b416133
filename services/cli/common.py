"""What every command shares: settings read once (a bad variable is one line, not a traceback), JSON output."""

from __future__ import annotations

import json
from typing import Any

import httpx
import typer
from pydantic import ValidationError

from services.errors import validation_problems
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
        raise fail("; ".join(p.removeprefix("settings: Value error, ")
                             for p in validation_problems(exc, "settings"))) from None


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


def admin(settings_: Settings, method: str, path: str, body: dict | None = None, timeout_s: float = 60) -> Any:
    """Call the running gateway's admin API (the rollout controller owns every stage change, so operators go
    through it too); a refusal or an unreachable gateway is one line."""
    url = f"http://127.0.0.1:{settings_.serve.http_port}/admin{path}"
    token = settings_.admin.token.get_secret_value() if settings_.admin.token else ""
    if not token:
        raise fail("set RTS_ADMIN_TOKEN to the gateway's admin token (make up prints it)")
    try:
        response = httpx.request(method, url, json=body, timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise fail(f"no gateway at {url} ({type(exc).__name__}); is the stack up (make up)?") from None
    try:
        data = response.json()
    except ValueError:
        data = {"detail": response.text}
    if response.status_code >= 400:
        error = data.get("error") if isinstance(data.get("error"), dict) else data
        raise fail(f"{response.status_code}: {error.get('message') or error.get('detail') or data}")
    return data
