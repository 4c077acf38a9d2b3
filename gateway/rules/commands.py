"""`edge-gateway rules check|test`: validate rule files, and backtest them over buffered history."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa

app = typer.Typer(
    help="Check rule files and test them against buffered history.", no_args_is_help=True
)

console = Console()
err = Console(stderr=True, soft_wrap=True)

FilesArgument = Annotated[list[Path], typer.Argument(help="Rule files (YAML).")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", envvar="EDGE_GATEWAY_CONFIG", help="Gateway config (location, lateness)."
    ),
]


def _config(config: Path | None):  # type: ignore[no-untyped-def]
    from gateway.config import GatewayConfig, load_config

    return load_config(config) if config else GatewayConfig()


def _needs_location(files: list[Path]) -> bool:
    from gateway.rules.conditions import uses_sun
    from gateway.rules.schema import SunTrigger, load_rule_files

    return any(
        isinstance(item.rule.trigger, SunTrigger) or uses_sun(item.rule.conditions)
        for item in load_rule_files(files)
    )


@app.command("check")
def check(files: FilesArgument, config: ConfigOption = None) -> None:
    """Validate rule files; prints every problem with file, rule id and field."""
    from gateway.config import LocationConfig
    from gateway.errors import GatewayError, RuleError
    from gateway.rules.service import build_engine

    try:
        cfg = _config(config)
    except GatewayError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None
    location = cfg.location
    try:
        if location.latitude is None and _needs_location(files):
            err.print(
                "note: sun triggers/conditions need `location:` in the gateway config; "
                "checked here with latitude 0, longitude 0",
                markup=False,
                highlight=False,
            )
            location = LocationConfig(latitude=0.0, longitude=0.0, timezone=location.timezone)
        engine = build_engine(files, cfg.rules, location)
    except RuleError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{len(engine.rules)} rules ok in {', '.join(str(f) for f in files)}")


@app.command("test")
def backtest(
    files: FilesArgument,
    since: Annotated[str, typer.Option(help="How far back, e.g. 30m, 24h, 7d.")] = "24h",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    config: ConfigOption = None,
    buffer: Annotated[
        Path | None,
        typer.Option("--buffer", "-b", envvar="EDGE_GATEWAY_BUFFER", help="Buffer file."),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="EDGE_GATEWAY_TOKEN", help="API token.")
    ] = None,
) -> None:
    """Run rules over buffered readings and print what would have fired when (acts on nothing)."""
    import time

    from gateway.buffer import queries
    from gateway.buffer.history import HAS_RETAINED_SQL, history_sql
    from gateway.errors import GatewayError
    from gateway.output import render
    from gateway.progress import progress_bar
    from gateway.rules.backtest import history_pages, outputs_table, run_backtest
    from gateway.rules.service import build_engine
    from gateway.sqlclient import query
    from gateway.units import parse_duration

    if fmt not in ("table", "json"):
        err.print(f"--format must be table or json, not {fmt!r}")
        raise typer.Exit(2)
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        err.print(f"--since: {exc}")
        raise typer.Exit(2) from None
    now = time.time()
    cutoff = now - seconds
    try:
        cfg = _config(config)
        engine = build_engine(files, cfg.rules, cfg.location)
        path = buffer if buffer is not None else Path(cfg.buffer.path)
        flagged = int(query(path, HAS_RETAINED_SQL, token=token)["n"][0].as_py()) > 0

        def fetch(after: int, page: int) -> pa.Table:
            return query(path, history_sql(after, page, cutoff, flagged), token=token, limit=page)

        total = query(
            path,
            queries.count_events_since(cutoff),
            token=token,
        )
        readings = int(total["n"][0].as_py())
        with progress_bar(err, f"backtesting {since} of readings", readings) as advance:

            def pages() -> Iterator[pa.Table]:
                for table in history_pages(fetch):
                    advance(table.num_rows)
                    yield table

            outputs = run_backtest(engine, pages(), now)
    except GatewayError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    table = outputs_table(outputs)
    render(table, "json" if fmt == "json" else "table", console)
    if fmt == "table":
        stats = engine.stats
        err.print(
            f"{table.num_rows} actions from {stats.readings} readings since {since} ago "
            f"({stats.late_dropped} late readings dropped); nothing was sent",
            highlight=False,
        )
