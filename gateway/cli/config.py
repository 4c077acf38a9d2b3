"""`edge-gateway config check`: validate config files, naming each problem's file and key path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import err, out

app = typer.Typer(help="Check configuration files.", no_args_is_help=True)


@app.command("check")
def check(
    files: Annotated[list[Path], typer.Argument(help="Config files to validate.")],
) -> None:
    """Validate config files; prints every problem with its key path and exits non-zero.
    Warnings (valid, but a route the subscriptions do not fully deliver) leave the exit 0."""
    from gateway.config import load_config
    from gateway.errors import ConfigError

    failed = False
    for file in files:
        try:
            config = load_config(file)
            for warning in config.warnings():
                err().print(f"{file}: warning: {warning}", highlight=False, markup=False)
            out().print(f"{file}: ok", markup=False)
        except ConfigError as exc:
            failed = True
            err().print(str(exc), highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)
