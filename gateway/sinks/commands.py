"""`edge-gateway sinks` (each sink's cursor, backlog, last error, throughput) and
`edge-gateway replay` (send a range again, idempotently)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gateway.cli.options import BufferOption, ConfigOption, TokenOption

err = Console(stderr=True)

PAGE_ROWS = 10_000


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    return typer.Exit(code)


def _config(config: Path | None) -> Any:
    from gateway.config import GatewayConfig, load_config

    return load_config(config) if config else GatewayConfig()


def sink_status(buffer_path: Path, config: Any, token: str | None = None) -> list[dict[str, Any]]:
    """From the running gateway's API, or else from the buffer file opened read-only."""
    from gateway.apiclient import GatewayApi

    api = GatewayApi.find(buffer_path, token)
    if api is not None:
        entries: list[dict[str, Any]] = api.get_json("/api/sinks")["sinks"]
        for entry in entries:
            entry["running"] = True
        return entries
    return _status_from_file(buffer_path, config)


def _status_from_file(buffer_path: Path, config: Any) -> list[dict[str, Any]]:
    from gateway.buffer import outbox
    from gateway.buffer.connection import connect
    from gateway.errors import BufferStoreError

    if not buffer_path.exists():
        raise BufferStoreError(f"buffer {buffer_path}: no such file (is the path right?)")
    con = connect(buffer_path, read_only=True)
    try:
        cursors = outbox.cursors(con)
        dead = outbox.dead_letter_counts(con)
        types = {c.name: c.type for c in config.sinks}
        places = {(c.name, stream) for c in config.sinks if c.enabled for stream in c.streams}
        now = time.time()
        entries = []
        for sink, stream in sorted(places | set(cursors)):
            entries.append(
                {
                    "sink": sink,
                    "type": types.get(sink, "?"),
                    "stream": stream,
                    **outbox.backlog(con, stream, cursors.get((sink, stream), 0), now),
                    "dead_letters": dead.get((sink, stream), 0),
                    "rows_per_s": None,
                    "last_error": None,
                    "running": False,
                }
            )
        return entries
    finally:
        con.close()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def sinks(
    config: ConfigOption = None,
    buffer: BufferOption = None,
    token: TokenOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each sink's cursor, backlog (rows, age of the oldest), last error and throughput."""
    from gateway.errors import GatewayError

    try:
        cfg = _config(config)
        entries = sink_status(buffer or Path(cfg.buffer.path), cfg, token)
    except GatewayError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(entries, indent=1, default=str))
        return
    console = Console()
    if not entries:
        console.print("no sinks configured (see docs/sinks.md)")
        return
    grid = Table(header_style="bold")
    for column in (
        "sink",
        "stream",
        "cursor",
        "backlog",
        "oldest unsent",
        "rows/s",
        "dead",
        "last error",
    ):
        grid.add_column(column)
    for e in entries:
        rate = e.get("rows_per_s")
        grid.add_row(
            e["sink"] if e["type"] == "?" else f"{e['sink']} ({e['type']})",
            e["stream"],
            f"{e['position']} / {e['head']}",
            str(e["backlog_rows"]),
            _age(e.get("oldest_unsent_age_s")),
            "-" if rate is None else f"{rate:.0f}",
            str(e.get("dead_letters", 0)),
            (e.get("last_error") or "")[:80],
        )
    console.print(grid)
    if entries and not entries[0].get("running"):
        console.print("[dim]gateway not running: figures from the buffer file[/dim]")


def replay(
    sink: Annotated[str, typer.Option("--sink", help="Name of the sink, as in the config.")],
    since: Annotated[str, typer.Option(help="How far back, e.g. 2h, 7d.")],
    stream: Annotated[str, typer.Option(help="readings or alerts.")] = "readings",
    config: ConfigOption = None,
    buffer: BufferOption = None,
    token: TokenOption = None,
) -> None:
    """Send rows ingested since --since to a sink again, without doubling what it holds.

    Only rows the sink has confirmed are replayed (the forwarder sends the rest). Kafka: event
    ids already in the topics are skipped; Snowflake: loaded through a scratch table and only
    event ids the table lacks are inserted.
    """
    import asyncio

    from rich.progress import Progress

    from gateway.buffer import queries
    from gateway.errors import GatewayError, SinkBackpressureError
    from gateway.sinks.base import Attempt
    from gateway.sinks.registry import build_sink
    from gateway.sqlclient import query
    from gateway.units import parse_duration

    if stream not in ("readings", "alerts"):
        raise _fail("--stream must be readings or alerts", 2)
    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise _fail(f"--since: {exc}", 2) from None
    try:
        cfg = _config(config)
    except GatewayError as exc:
        raise _fail(str(exc)) from None
    chosen = next((c for c in cfg.sinks if c.name == sink), None)
    if chosen is None:
        names = ", ".join(c.name for c in cfg.sinks) or "none configured"
        raise _fail(f"no sink named {sink!r} in the config (sinks: {names})", 2)
    path = buffer or Path(cfg.buffer.path)
    console = Console()
    cutoff = time.time() - seconds
    try:
        confirmed = {
            e["stream"]: int(e["position"])
            for e in sink_status(path, cfg, token)
            if e["sink"] == sink
        }
    except GatewayError as exc:
        raise _fail(str(exc)) from None
    upto = confirmed.get(stream, 0)

    async def run() -> int:
        buffer_id = str(query(path, queries.BUFFER_UID, token=token)["value"][0].as_py())
        target = build_sink(chosen, cfg.gateway_id, buffer_id)
        sent = 0
        try:
            total = int(
                query(path, queries.count_confirmed_since(stream, cutoff, upto), token=token)["n"][
                    0
                ].as_py()
            )
            after = 0
            with Progress(console=console) as progress:
                task = progress.add_task(f"replaying {stream} to {sink}", total=total)
                while True:
                    page = query(
                        path,
                        queries.confirmed_since_page(stream, cutoff, upto, after, PAGE_ROWS),
                        token=token,
                        limit=PAGE_ROWS,
                    )
                    if page.num_rows == 0:
                        break
                    first = int(page["id"][0].as_py())
                    after = int(page["id"][-1].as_py())
                    attempt = Attempt(stream, first, after, int(cutoff * 1000), replay=True)
                    while True:
                        try:
                            await target.write_batch(page, attempt)
                            break
                        except SinkBackpressureError as exc:  # the same page, once there is room
                            await asyncio.sleep(exc.retry_after)
                    sent += page.num_rows
                    progress.update(task, advance=page.num_rows)
        finally:
            await target.aclose()
        return sent

    try:
        sent = asyncio.run(run())
    except GatewayError as exc:
        raise _fail(str(exc)) from None
    console.print(f"replayed {sent} {stream} to {sink} (rows it already had were not doubled)")
