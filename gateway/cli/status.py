"""`edge-gateway status`: the gateway at a glance, from its API or from the stopped buffer.

The figures and the view are gateway/status.py's.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.common import buffer_path, fail, out
from gateway.cli.options import BufferOption, ConfigOption, TokenOption, positive


def status(
    config: ConfigOption = None,
    buffer: BufferOption = None,
    token: TokenOption = None,
    watch: Annotated[
        bool | None,
        typer.Option("--watch/--once", help="Keep redrawing (the default on a terminal)."),
    ] = None,
    interval: Annotated[
        float, typer.Option(callback=positive, help="Seconds between redraws.")
    ] = 1.0,
) -> None:
    """Readings per second, broker, rules, sinks' backlog, buffer size and quarantine count."""
    from gateway.errors import GatewayError
    from gateway.status import show_status, watch_status

    console = out()
    live = console.is_terminal if watch is None else watch
    try:
        path = buffer_path(config, buffer)
        if live:
            watch_status(path, console, token, interval)
        else:
            show_status(path, console, token)
    except (GatewayError, OSError) as exc:  # OSError: the API refused (e.g. no token)
        raise fail(str(exc)) from None
