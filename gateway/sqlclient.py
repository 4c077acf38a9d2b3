"""Runs a read-only query for the CLI: through a running gateway's API, else on the file itself.

DuckDB lets one process hold a database file for writing, so while the gateway runs, queries go
through its API (gateway/apiclient.py); when it is stopped, the file is opened read-only.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from gateway.apiclient import GatewayApi
from gateway.buffer.connection import connect
from gateway.buffer.sql import run_query
from gateway.errors import BufferStoreError


def running_api(buffer_path: Path) -> str | None:
    """The API base URL of a gateway running on this buffer, if one answers."""
    api = GatewayApi.find(buffer_path)
    return api.url if api is not None else None


def query(
    buffer_path: Path, sql: str, *, token: str | None = None, limit: int | None = None
) -> pa.Table:
    api = GatewayApi.find(buffer_path, token)
    if api is not None:
        return api.sql(sql, limit)
    return query_file(buffer_path, sql, limit)


def query_file(path: Path, sql: str, limit: int | None = None) -> pa.Table:
    """The statement on the buffer file opened read-only (no gateway holds it)."""
    if not path.exists():
        raise BufferStoreError(f"buffer {path}: no such file (is the path right?)")
    con = connect(path, read_only=True)
    try:
        return run_query(con, sql, limit)
    finally:
        con.close()
