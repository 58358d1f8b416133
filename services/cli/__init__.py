"""Operator CLI: ``rts --help``. One module per noun: ``up``/``down`` (the local stack), ``listen`` (the
retraining listener), ``models`` (versions: list, init, retrain, rollback), ``k8s`` (generated parts of the
Kubernetes manifests)."""

from __future__ import annotations

import typer

from services.cli import k8s, listen, models, up

app = typer.Typer(help="Ray Serve + Triton serving platform", no_args_is_help=True, add_completion=False)
app.command("up")(up.up)
app.command("down")(up.down)
app.command("listen")(listen.listen)
app.add_typer(models.app, name="models")
app.add_typer(k8s.app, name="k8s")
