"""``rts up``: the whole system on this machine until Ctrl-C; ``rts down``: end what an earlier ``rts up``
of this checkout left running (after a kill -9, a lost terminal, a crash)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from services.cli.common import fail, settings
from services.runtime.leftovers import STATE_FILE, down as end_leftovers, find_leftovers
from services.runtime.stack import Stack, StackInTheWay


def up(config: Annotated[Optional[Path], typer.Option(help="Serve config YAML (default: RTS_SERVE_CONFIG)")] = None):
    """Run Triton, a Ray head with its dashboard, the Serve application and the retraining listener."""
    try:
        Stack(settings(), config).run_forever()
    except StackInTheWay as exc:
        raise fail(str(exc)) from None


def down(
    timeout: Annotated[float, typer.Option(help="seconds `rts up` gets to stop its children before SIGKILL")] = 90.0,
):
    """End the stack an earlier `rts up` of this checkout started, and only that."""
    current = settings()
    state_path = current.var_dir / "run" / STATE_FILE
    ended = end_leftovers(state_path, timeout_s=timeout, say=typer.echo)
    typer.echo(f"ended: {', '.join(ended)}" if ended else "nothing of this checkout's `rts up` was running")
    left = find_leftovers(current, state_path)
    if left.problems:
        typer.echo(left.message(), err=True)
        raise typer.Exit(1)
