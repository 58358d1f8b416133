"""Operator CLI: ``rts --help``. One command group per noun as the project grows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from services.common.settings import get_settings

app = typer.Typer(help="Ray Serve + Triton serving platform", no_args_is_help=True)


@app.command()
def up(config: Annotated[Optional[Path], typer.Option(help="Serve config YAML (default: RTS_SERVE_CONFIG)")] = None):
    """Run Triton, a Ray head with its dashboard and the Serve application until Ctrl-C."""
    from services.runtime.stack import Stack

    Stack(get_settings(), config).run_forever()


@app.command()
def train(repository: Annotated[Optional[str], typer.Option(help="repository URI; default var/model_repository")] = None):
    """Train the digits ensemble into an empty model repository as version 1."""
    import json

    from services.models.digits.train import build_initial_version

    print(json.dumps(build_initial_version(repository or get_settings().model_repository_uri), indent=2))


if __name__ == "__main__":
    app()
