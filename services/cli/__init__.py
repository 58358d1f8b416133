"""Operator CLI: ``rts --help``. One module per noun: ``up``/``down`` (the local stack), ``listen`` (the
retraining listener), ``models`` (versions: list, init, retrain, rollback)."""

from __future__ import annotations

import typer

from services.cli import listen, models, up

app = typer.Typer(help="Ray Serve + Triton serving platform", no_args_is_help=True, add_completion=False)
app.command("up")(up.up)
app.command("down")(up.down)
app.command("listen")(listen.listen)
app.add_typer(models.app, name="models")
