"""`edge-gateway demo`: a private Mosquitto, simulated devices and the gateway, in one go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import fail, out, setup_logging
from gateway.cli.options import positive

SINKS = ("all", "none")


def demo(
    duration: Annotated[
        float | None,
        typer.Option(
            callback=positive, help="Stop after this many seconds (default: until Ctrl-C)."
        ),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its buffer.")] = Path(".demo"),
    sinks: Annotated[
        str, typer.Option(help="all: ship to local Snowflake and Kafka; none.")
    ] = "all",
) -> None:
    """Start a private Mosquitto, simulated devices and the gateway, and show what arrives."""
    from gateway.demo import run_demo
    from gateway.errors import GatewayError

    if sinks not in SINKS:
        raise fail(f"--sinks must be all or none, not {sinks!r}", 2)
    setup_logging("warning")
    try:
        run_demo(workdir, duration, out(), sinks=sinks)
    except GatewayError as exc:
        raise fail(str(exc)) from None
