"""``rts models ...``: versions of every model: list, build the first one, retrain, roll back."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from services.cli.common import fail, models, package, print_json, settings
from services.registry.publish import Registry, VersionNotAvailable
from services.retraining.jobs import submit_run, wait_for_run
from services.retraining.requests import retrain_request
from services.retraining.run import build_first_version
from services.registry.repository import ModelRepository
from services.storage import repository_store
from services.triton.client import TritonClient

app = typer.Typer(help="Model versions: list, init, retrain, roll back", no_args_is_help=True)


@app.command("list")
def list_versions(model: Annotated[Optional[str], typer.Argument(help="one model; default: all")] = None,
                  lineage: Annotated[bool, typer.Option(help="print each version's full lineage as JSON")] = False):
    """Versions in the model repository with their holdout metric; '*' marks the one serving."""
    chosen = settings()
    packages = [package(chosen, model)] if model else list(models(chosen).values())
    registry = Registry.open(chosen)
    described = [registry.describe(p.name, p.family) for p in packages]
    if lineage:
        return print_json(described)
    for p, d in zip(packages, described):
        metric = p.task.primary_metric
        typer.echo(f"{p.name} ({p.task.kind}), serving {d['serving']}")
        typer.echo(f"  {'':2}{'version':>7}  {'holdout ' + metric:>16}  {'created':19}  run")
        for v in d["versions"]:
            value = (v.get("metrics") or {}).get(metric)
            shown = f"{value:.4f}" if isinstance(value, float) else "-"
            typer.echo(f"  {'*' if v['serving'] else ' ':2}{v['version']:>7}  {shown:>16}  "
                       f"{(v.get('created_at') or '-')[:19]:19}  {v.get('run_id') or '-'}")


@app.command("init")
def init(model: Annotated[Optional[list[str]], typer.Argument(help="models to build; default: all")] = None):
    """Build version 1 of each model that has none yet (trained here, in seconds; what `make up` does first)."""
    chosen = settings()
    packages = [package(chosen, m) for m in model] if model else list(models(chosen).values())
    repository = ModelRepository(repository_store(chosen))
    for p in packages:
        if repository.versions(p.family.ensemble):
            typer.echo(f"{p.name}: {chosen.model_repository_uri} already has versions "
                       f"{repository.versions(p.family.ensemble)}")
            continue
        typer.echo(f"{p.name}: training version 1 into {chosen.model_repository_uri} ...")
        record = build_first_version(p, chosen)
        if record["outcome"] != "published":
            raise fail(f"{p.name} version 1 was not published: {record.get('reason')}")
        metrics = record["stages"]["evaluate_and_gate"]["metrics"]["candidate"]
        typer.echo(f"{p.name}: version 1, holdout {p.task.primary_metric} {metrics[p.task.primary_metric]:.4f} "
                   f"({sum(s.get('seconds', 0) for s in record['stages'].values()):.1f}s)")


@app.command("retrain")
def retrain(model: Annotated[str, typer.Argument(help="the model to retrain")],
            reason: Annotated[str, typer.Option(help="why (kept in the run's record)")] = "requested from the CLI",
            force: Annotated[bool, typer.Option(help="train and publish even with no new data since the "
                                                "serving version")] = False,
            wait: Annotated[bool, typer.Option(help="wait for the run and print its record")] = True):
    """Start a retraining run of a model on the Ray cluster now (a Ray Job)."""
    chosen = settings()
    p = package(chosen, model)
    typer.echo(f"submitting a retraining run of {p.name} to Ray at {chosen.ray.jobs_url} ...", err=True)
    run_id = submit_run(chosen, p.name, [retrain_request(p.name, reason, source="rts/cli", force=force)])
    if not wait:
        return print_json({"run_id": run_id, "model": p.name, "outcome": "submitted"})
    typer.echo(f"run {run_id}: waiting (the Ray dashboard's Jobs view shows its logs) ...", err=True)
    print_json(wait_for_run(chosen, run_id))


@app.command("rollback")
def rollback(model: Annotated[str, typer.Argument(help="the model")],
             version: Annotated[int, typer.Argument(help="a complete published version to serve again")]):
    """Serve an earlier version again (seconds; no restart)."""
    chosen = settings()
    p = package(chosen, model)
    with TritonClient(chosen.triton.grpc_address) as triton:
        try:
            seconds = Registry.open(chosen, triton).rollback(p.name, p.family, version)
        except VersionNotAvailable as exc:
            raise fail(str(exc)) from None
    print_json({"model": p.name, "serving": version, "seconds": round(seconds, 3)})
