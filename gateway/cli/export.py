"""`edge-gateway export`: readings newer than --since to a Parquet file, with a progress bar.

The paging (past the API's row limit, without holding everything in memory) is in
gateway/export.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import buffer_path, fail, out
from gateway.cli.options import BufferOption, ConfigOption, TokenOption


def export(
    output: Annotated[Path, typer.Argument(help="Parquet file to write.")],
    since: Annotated[str, typer.Option(help="How far back, e.g. 1h, 7d.")] = "1h",
    config: ConfigOption = None,
    buffer: BufferOption = None,
    token: TokenOption = None,
) -> None:
    """Export readings newer than --since to a Parquet file (with a progress bar)."""
    import time

    from gateway.errors import GatewayError
    from gateway.export import count_since, export_since
    from gateway.progress import progress_bar
    from gateway.units import parse_duration

    try:
        seconds = parse_duration(since)
    except ValueError as exc:
        raise fail(f"--since: {exc}", 2) from None
    if not output.parent.is_dir():
        # Checked first: otherwise the whole count and first page run before the write fails.
        raise fail(f"{output}: directory {output.parent} does not exist", 2)
    cutoff = time.time() - seconds
    console = out()
    try:
        path = buffer_path(config, buffer)
        total = count_since(path, cutoff, token)
        with progress_bar(console, f"exporting readings since {since} ago", total) as advance:
            written = export_since(path, output, cutoff, token=token, progress=advance)
    except (GatewayError, OSError) as exc:  # OSError: the file cannot be written (it names it)
        raise fail(str(exc)) from None
    console.print(f"wrote {written} readings to {output}")
