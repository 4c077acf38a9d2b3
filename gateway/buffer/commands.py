"""`edge-gateway buffer check|recover`: verify a stopped gateway's buffer, rebuild a damaged one."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gateway.cli.options import BufferOption, ConfigOption

app = typer.Typer(help="Check and recover the buffer file.", no_args_is_help=True)

console = Console()
err = Console(stderr=True, soft_wrap=True)


def _path(config: Path | None, buffer: Path | None) -> Path:
    if buffer is not None:
        return buffer
    from gateway.config import GatewayConfig, load_config

    cfg = load_config(config) if config else GatewayConfig()
    return Path(cfg.buffer.path)


@app.command("check")
def check(config: ConfigOption = None, buffer: BufferOption = None) -> None:
    """Read every table in full; exit 1 naming each damaged table (stop the gateway first)."""
    from gateway.buffer.recovery import check_buffer
    from gateway.errors import GatewayError

    try:
        path = _path(config, buffer)
    except GatewayError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    report = check_buffer(path)
    if report.ok:
        counts = ", ".join(f"{table} {n}" for table, n in report.rows.items())
        console.print(f"{path}: ok ({counts})", highlight=False, markup=False)
        return
    for where, problem in report.problems.items():
        err.print(f"{path}: {where}: {problem}", highlight=False, markup=False)
    if "held by another process" not in report.problems.get("file", ""):
        err.print(
            f"{path} is damaged; stop the gateway and run "
            f"`edge-gateway buffer recover -b {path}` (the damaged file is kept beside it)",
            highlight=False,
            markup=False,
        )
    raise typer.Exit(1)


@app.command("recover")
def recover(config: ConfigOption = None, buffer: BufferOption = None) -> None:
    """Rebuild a damaged buffer from what is readable; prints what was lost (gateway stopped)."""
    from gateway.buffer.recovery import recover_buffer
    from gateway.errors import GatewayError

    try:
        path = _path(config, buffer)
        report = recover_buffer(path)
    except GatewayError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    salvaged = ", ".join(f"{table} {n}" for table, n in report.salvaged.items()) or "nothing"
    console.print(f"{path}: rebuilt; salvaged {salvaged}", highlight=False, markup=False)
    if report.damaged_copy is not None:
        console.print(f"damaged file kept as {report.damaged_copy}", highlight=False, markup=False)
    for table in report.unreadable:
        console.print(f"lost: {table} could not be read at all", highlight=False, markup=False)
    for table, ranges in report.lost_ranges.items():
        for lo, hi in ranges:
            console.print(f"lost: {table} ids {lo}..{hi}", highlight=False, markup=False)
    if report.positions_restart_at is not None:
        console.print(
            f"positions restart at {report.positions_restart_at} (the old ones were unreadable)",
            highlight=False,
            markup=False,
        )
    console.print(
        f"recovered lost={report.lost} unsent_lost={report.unsent_lost}",
        highlight=False,
        markup=False,
    )
