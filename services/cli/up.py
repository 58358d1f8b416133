"""``rts up``: the whole system on this machine until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from services.cli.common import settings
from services.runtime.stack import Stack


def up(config: Annotated[Optional[Path], typer.Option(help="Serve config YAML (default: RTS_SERVE_CONFIG)")] = None):
    """Run Triton, a Ray head with its dashboard, the Serve application and the retraining listener."""
    Stack(settings(), config).run_forever()
