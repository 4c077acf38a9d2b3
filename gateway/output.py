"""Renders Arrow tables for the terminal: a rich table, CSV or JSON lines."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
from rich.console import Console
from rich.table import Table

OutputFormat = Literal["table", "csv", "json"]


def _cell(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def render(table: pa.Table, fmt: OutputFormat, console: Console) -> None:
    rows = table.to_pylist()
    if fmt == "json":
        objects = [{k: _cell(v) for k, v in row.items()} for row in rows]
        print(json.dumps(objects, default=str, ensure_ascii=False, indent=1))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow(["" if v is None else _cell(v) for v in row.values()])
        print(buffer.getvalue(), end="")
        return
    grid = Table(show_header=True, header_style="bold")
    for name in table.column_names:
        grid.add_column(name)
    for row in rows:
        grid.add_row(*["" if v is None else str(_cell(v)) for v in row.values()])
    console.print(grid)
    console.print(f"[dim]{table.num_rows} row{'s' if table.num_rows != 1 else ''}[/dim]")
