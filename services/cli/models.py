"""``rts models ...``: versions of every model: list, build the first one, retrain; and the rollout (status,
promote, rollback, policy, fault), through the running gateway's admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from services.cli.common import admin, fail, models, package, print_json, settings
from services.registry.publish import Registry
from services.rollout.routing import RoutingTable
from services.retraining.jobs import submit_run, wait_for_run
from services.retraining.requests import retrain_request
from services.retraining.run import build_first_version
from services.registry.repository import ModelRepository
from services.storage import repository_store

app = typer.Typer(help="Model versions and their rollout: list, init, retrain, status, promote, rollback, policy, fault", no_args_is_help=True)


@app.command("list")
def list_versions(model: Annotated[Optional[str], typer.Argument(help="one model; default: all")] = None,
                  lineage: Annotated[bool, typer.Option(help="print each version's full lineage as JSON")] = False):
    """Versions in the model repository with their holdout metric; '*' marks production."""
    chosen = settings()
    packages = [package(chosen, model)] if model else list(models(chosen).values())
    registry = Registry.open(chosen)
    described = [registry.describe(p.name, p.family) for p in packages]
    if lineage:
        return print_json(described)
    for p, d in zip(packages, described):
        metric = p.task.primary_metric
        typer.echo(f"{p.name} ({p.task.kind}), serving {d['serving']}")
        typer.echo(f"  {'':2}{'version':>7}  {'stage':11}  {'holdout ' + metric:>16}  {'created':19}  run")
        for v in d["versions"]:
            value = (v.get("metrics") or {}).get(metric)
            shown = f"{value:.4f}" if isinstance(value, float) else "-"
            typer.echo(f"  {'*' if v['serving'] else ' ':2}{v['version']:>7}  {v['stage']:11}  {shown:>16}  "
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


@app.command("status")
def status(model: Annotated[str, typer.Argument(help="the model")],
           as_json: Annotated[bool, typer.Option("--json", help="everything the controller knows, as JSON")] = False):
    """Stages of every version, the traffic share of each, and the rollout's latest decisions."""
    chosen = settings()
    p = package(chosen, model)
    data = admin(chosen, "GET", f"/models/{p.name}/status")
    if as_json:
        return print_json(data)
    routing = data.get("routing") or {}
    typer.echo(f"{p.name}: production {data.get('production')}, policy {data.get('policy', {}).get('strategy')}")
    shares = {str(v): share for v, share in RoutingTable.model_validate(routing).shares().items()} if routing else {}
    for version, stage in sorted((data.get("stages") or {}).items(), key=lambda kv: int(kv[0])):
        window = (data.get("windows") or {}).get(version) or {}
        share = shares.get(version)
        typer.echo(f"  {version:>4}  {stage:11}  share {'-' if share is None else f'{share:.0%}':>5}  "
                   f"requests {window.get('requests', 0):>6}  mirrored {window.get('shadow_requests', 0):>6}  "
                   f"feedback {window.get('feedback', 0):>5}  accuracy {window.get('accuracy', '-')}")
    holding = (data.get("state") or {}).get("holding")
    if holding and data.get("challengers"):
        typer.echo(f"  holding: {'; '.join(holding['reasons'])}")
    for decision in (data.get("decisions") or [])[-5:]:
        typer.echo(f"  decision: version {decision['version']} {decision['decision']}: {'; '.join(decision['reasons'])}")


@app.command("promote")
def promote(model: Annotated[str, typer.Argument(help="the model")],
            version: Annotated[Optional[int], typer.Argument(help="the version; default: the newest challenger")] = None):
    """Make a version production now (its predecessor stays loaded: rollback is instant)."""
    chosen = settings()
    p = package(chosen, model)
    print_json(admin(chosen, "POST", f"/models/{p.name}/promote", {"version": version}))


@app.command("rollback")
def rollback(model: Annotated[str, typer.Argument(help="the model")],
             version: Annotated[Optional[int], typer.Argument(help="a version to make production again; default: "
                                                              "archive the challengers, or with none go back to the "
                                                              "production before")] = None):
    """Roll back (seconds; no restart, no failed request)."""
    chosen = settings()
    p = package(chosen, model)
    print_json(admin(chosen, "POST", f"/models/{p.name}/rollback", {"version": version}))


@app.command("policy")
def policy(model: Annotated[str, typer.Argument(help="the model")],
           file: Annotated[Optional[Path], typer.Option("--file", "-f",
                                                        help="set this YAML policy (validated; no restart)")] = None):
    """Print the model's delivery policy, or set it from a YAML file."""
    chosen = settings()
    p = package(chosen, model)
    if file is None:
        return typer.echo(admin(chosen, "GET", f"/models/{p.name}/policy")["yaml"], nl=False)
    if not file.is_file():
        raise fail(f"{file} does not exist (or is not a file)")
    print_json(admin(chosen, "PUT", f"/models/{p.name}/policy", {"yaml": file.read_text()}))


@app.command("fault")
def fault(model: Annotated[str, typer.Argument(help="the model")],
          version: Annotated[int, typer.Argument(help="the version to hurt")],
          latency_ms: Annotated[float, typer.Option(help="extra latency per request")] = 0,
          error_rate: Annotated[float, typer.Option(help="share of requests that fail with 503")] = 0):
    """Inject latency or failures into one live version, to see the rollout roll it back (0 and 0 ends it)."""
    chosen = settings()
    p = package(chosen, model)
    print_json(admin(chosen, "POST", f"/models/{p.name}/faults",
                     {"version": version, "latency_ms": latency_ms, "error_rate": error_rate}))
