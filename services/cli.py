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

    settings = get_settings()
    print(json.dumps(build_initial_version(repository or settings.model_repository_uri, data_uri=settings.data_uri),
                     indent=2))


models = typer.Typer(help="Model versions: list, retrain, roll back", no_args_is_help=True)
app.add_typer(models, name="models")


def _print(value) -> None:
    import json

    print(json.dumps(value, indent=2, default=str))


@models.command("list")
def models_list(lineage: Annotated[bool, typer.Option(help="print each version's full lineage")] = False):
    """Versions in the model repository with their metrics; '*' marks the one serving."""
    from services.retraining.operations import list_versions

    result = list_versions(get_settings())
    if lineage:
        return _print(result)
    print(f"{'':2}{'version':>7}  {'holdout acc':>11}  {'created':25}  run")
    for v in result["versions"]:
        acc = f"{v['holdout_accuracy']:.4f}" if v["holdout_accuracy"] is not None else "-"
        print(f"{'*' if v['serving'] else ' ':2}{v['version']:>7}  {acc:>11}  {v['created_at'] or '-':25}  "
              f"{v['run_id'] or '-'}")


@models.command("retrain")
def models_retrain(reason: str = "requested from the CLI",
                   wait: Annotated[bool, typer.Option(help="wait for the run and print its record")] = True):
    """Start a retraining run on the Ray cluster now (a Ray Job)."""
    from services.retraining.operations import start_run

    print("submitting a retraining run to Ray ...", flush=True)
    _print(start_run(get_settings(), reason, wait=wait))


@models.command("rollback")
def models_rollback(version: int):
    """Serve an earlier version again (seconds; no restart)."""
    from services.retraining.operations import rollback_to

    _print(rollback_to(get_settings(), version))


@app.command()
def listen(source: str = "local"):
    """Run the retraining listener in the foreground (make up starts one for the local source)."""
    from services.retraining.listener import main as listener_main

    listener_main(["--source", source])


if __name__ == "__main__":
    app()
