"""The `edge-gateway` command line; heavy imports live inside commands so `--help` starts fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from gateway.buffer.commands import app as buffer_app
from gateway.errors import GatewayError
from gateway.rules.commands import app as rules_app
from gateway.sinks import commands as sink_commands
from simulators.commands import app as simulate_app

app = typer.Typer(
    name="edge-gateway",
    help="IoT edge gateway: MQTT in, local rules, durable DuckDB buffer, Snowflake/Kafka out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(rules_app, name="rules")
app.add_typer(simulate_app, name="simulate")
app.add_typer(buffer_app, name="buffer")
app.command("sinks")(sink_commands.sinks)
app.command("replay")(sink_commands.replay)

console = Console()
err = Console(stderr=True, soft_wrap=True)

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


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    return typer.Exit(code)


def setup_logging(
    level: str,
    fmt: Literal["logfmt", "json", "text"] = "text",
    repeat_window: float = 60.0,
    repeat_burst: int = 5,
) -> None:
    from gateway.logs import configure_logging

    configure_logging(
        level, fmt, repeat_window=repeat_window, repeat_burst=repeat_burst, stream=sys.stderr
    )


def _load(config: Path | None):  # type: ignore[no-untyped-def]
    from gateway.config import GatewayConfig, load_config

    return load_config(config) if config else GatewayConfig()


def _buffer_path(config: Path | None, buffer: Path | None) -> Path:
    if buffer is not None:
        return buffer
    return Path(_load(config).buffer.path)


@config_app.command("check")
def config_check(
    files: Annotated[list[Path], typer.Argument(help="Config files to validate.")],
) -> None:
    """Validate config files; prints every problem with its key path and exits non-zero."""
    from gateway.config import load_config
    from gateway.errors import ConfigError

    failed = False
    for file in files:
        try:
            load_config(file)
            console.print(f"{file}: ok")
        except ConfigError as exc:
            failed = True
            err.print(str(exc), highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C."""
    import asyncio
    import signal

    from gateway.app import Gateway

    try:
        cfg = _load(config)
    except GatewayError as exc:
        raise fail(str(exc)) from None
    setup_logging(
        cfg.log_level, cfg.logging.format, cfg.logging.repeat_window, cfg.logging.repeat_burst
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(cfg).run(stop)

    try:
        asyncio.run(main())
    except GatewayError as exc:
        raise fail(str(exc)) from None


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SELECT statement.")],
    config: ConfigOption = None,
    buffer: BufferOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="EDGE_GATEWAY_TOKEN", help="API token.")
    ] = None,
) -> None:
    """Query the buffer with read-only SQL, whether the gateway is running or stopped."""
    from gateway.output import render
    from gateway.sqlclient import query as run_sql

    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format must be table, csv or json, not {fmt!r}", 2)
    try:
        table = run_sql(_buffer_path(config, buffer), query, token=token, limit=limit)
    except GatewayError as exc:
        raise fail(str(exc)) from None
    render(table, fmt, console)  # type: ignore[arg-type]


@app.command()
def export(
    output: Annotated[Path, typer.Argument(help="Parquet file to write.")],
    since: Annotated[str, typer.Option(help="How far back, e.g. 1h, 7d.")] = "1h",
    config: ConfigOption = None,
    buffer: BufferOption = None,
    token: Annotated[
        str | None, typer.Option(envvar="EDGE_GATEWAY_TOKEN", help="API token.")
    ] = None,
) -> None:
    """Export readings newer than --since to a Parquet file (with a progress bar)."""
    import time

    from gateway.export import count_since, export_since
    from gateway.progress import progress_bar
    from gateway.units import parse_duration

    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise fail(f"--since: {exc}", 2) from None
    cutoff = time.time() - seconds
    path = _buffer_path(config, buffer)
    try:
        total = count_since(path, cutoff, token)
        with progress_bar(console, f"exporting readings since {since} ago", total) as advance:
            written = export_since(path, output, cutoff, token=token, progress=advance)
    except GatewayError as exc:
        raise fail(str(exc)) from None
    console.print(f"wrote {written} readings to {output}")


@app.command()
def status(
    config: ConfigOption = None,
    buffer: BufferOption = None,
    token: Annotated[
        str | None, typer.Option(envvar="EDGE_GATEWAY_TOKEN", help="API token.")
    ] = None,
    watch: Annotated[
        bool | None,
        typer.Option("--watch/--once", help="Keep redrawing (the default on a terminal)."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between redraws.")] = 1.0,
) -> None:
    """Readings per second, broker, rules, sinks' backlog, buffer size and quarantine count."""
    from gateway.status import show_status, watch_status

    live = console.is_terminal if watch is None else watch
    try:
        if live:
            watch_status(_buffer_path(config, buffer), console, token, interval)
        else:
            show_status(_buffer_path(config, buffer), console, token)
    except GatewayError as exc:
        raise fail(str(exc)) from None


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its buffer.")] = Path(".demo"),
    sinks: Annotated[
        str, typer.Option(help="all: ship to local Snowflake and Kafka; none.")
    ] = "all",
) -> None:
    """Start a private Mosquitto, simulated devices and the gateway, and show what arrives."""
    from gateway.demo import run_demo

    setup_logging("warning")
    try:
        run_demo(workdir, duration, console, sinks=sinks)
    except GatewayError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()
