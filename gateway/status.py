"""`edge-gateway status`: figures from the running gateway's API, or from the buffer file itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gateway.apiclient import GatewayApi
from gateway.buffer import figures
from gateway.buffer.connection import connect
from gateway.errors import BufferStoreError


def fetch_status(buffer_path: Path, token: str | None = None) -> dict[str, Any]:
    api = GatewayApi.find(buffer_path, token)
    if api is not None:
        data: dict[str, Any] = api.get_json("/api/status", timeout=5)
        data["running"] = True
        return data
    if not buffer_path.exists():
        raise BufferStoreError(f"buffer {buffer_path}: no such file (is the path right?)")
    con = connect(buffer_path, read_only=True)
    try:
        counters = figures.counters(con)
        rows = figures.table_rows(con)
        last_reading = figures.last_reading_time(con)
    finally:
        con.close()
    return {
        "running": False,
        "buffer": {
            "path": str(buffer_path),
            "file_bytes": buffer_path.stat().st_size,
            "rows": rows["readings"],
            "last_reading": last_reading,
            "quarantine_rows": rows["quarantine"],
            "counters": counters,
        },
    }


def render_status(data: dict[str, Any]) -> RenderableType:
    """A compact view: one row per figure, then one row per sink."""
    grid = Table(show_header=False, box=None)
    grid.add_column(style="bold")
    grid.add_column()
    if data["running"]:
        ingest, broker = data["ingest"], data["broker"]
        grid.add_row("gateway", f"{data['gateway_id']} running for {_duration(data['uptime_s'])}")
        grid.add_row(
            "broker",
            f"{broker['address']} "
            + ("[green]connected[/green]" if broker["connected"] else "[red]DISCONNECTED[/red]")
            + (f" ({escape(broker['last_error'])})" if broker["last_error"] else ""),
        )
        grid.add_row("readings/s", f"{ingest['readings_per_s']:.1f}")
        grid.add_row("readings", str(ingest["readings"]))
        grid.add_row("quarantined", str(ingest["quarantined"]))
        grid.add_row("duplicates dropped", str(ingest["duplicates_dropped"]))
        rules = data.get("rules") or {}
        if rules.get("enabled"):
            alerts = rules["active_alerts"]
            grid.add_row(
                "rules",
                f"{rules['loaded']} loaded, fired {rules['fired']} times, "
                + (f"[red]{alerts} active alerts[/red]" if alerts else "no active alerts")
                + (
                    f" [red](reload failed: {escape(rules['last_reload_error'])})[/red]"
                    if rules.get("last_reload_error")
                    else ""
                ),
            )
        for sink in data.get("sinks") or []:
            age = sink["oldest_unsent_age_s"]
            line = f"{sink['backlog_rows']} rows behind" + (
                f", oldest {_duration(age)}" if age else ""
            )
            if sink.get("last_error"):
                line += f" [red]({escape(str(sink['last_error'])[:80])})[/red]"
            grid.add_row(f"sink {sink['sink']}/{sink['stream']}", line)
    else:
        grid.add_row("gateway", "not running (figures from the buffer file)")
        grid.add_row("readings stored", str(data["buffer"]["rows"]))
        grid.add_row("last reading", str(data["buffer"]["last_reading"]))
        grid.add_row("quarantined", str(data["buffer"]["quarantine_rows"]))
    buffer = data["buffer"]
    grid.add_row("buffer", f"{buffer['path']} ({buffer['file_bytes'] / 1e6:.1f} MB)")
    counters = buffer.get("counters", {})
    if counters:
        grid.add_row("totals", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return grid


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def show_status(buffer_path: Path, console: Console, token: str | None = None) -> None:
    console.print(render_status(fetch_status(buffer_path, token)))


def watch_status(
    buffer_path: Path,
    console: Console,
    token: str | None = None,
    interval: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Redraw the view every `interval` seconds until Ctrl-C (or `stop()`)."""
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while not stop():
                try:
                    view: RenderableType = render_status(fetch_status(buffer_path, token))
                except (OSError, BufferStoreError) as exc:
                    view = Text(f"cannot read status: {exc}", style="red")
                live.update(view, refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return
