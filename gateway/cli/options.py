"""Options several commands share, defined once so that each means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar="EDGE_GATEWAY_CONFIG", help="Gateway config file (YAML)."
    ),
]
BufferOption = Annotated[
    Path | None,
    typer.Option(
        "--buffer", "-b", envvar="EDGE_GATEWAY_BUFFER", help="Buffer file (default: from config)."
    ),
]
TokenOption = Annotated[str | None, typer.Option(envvar="EDGE_GATEWAY_TOKEN", help="API token.")]


def positive(value: float | None) -> float | None:
    """An option callback: click's `min=` admits the bound itself, and 0 s means no pause."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be more than 0, not {value:g}")
    return value
