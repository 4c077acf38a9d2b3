"""Runs a read-only query for the CLI: through a running gateway's API, else on the file itself.

DuckDB lets one process hold a database file for writing, so while the gateway runs, queries go
through its API; when it is stopped, the file is opened read-only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa

from gateway.app import runtime_file
from gateway.buffer.sql import run_query
from gateway.buffer.store import connect
from gateway.errors import BufferStoreError, ReadOnlySqlError

ARROW_STREAM = "application/vnd.apache.arrow.stream"


def running_api(buffer_path: Path) -> str | None:
    """The API base URL of a gateway running on this buffer, if one answers."""
    path = runtime_file(buffer_path)
    try:
        info = json.loads(path.read_text())
        url = str(info["api"])
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):  # noqa: S310 (loopback URL we wrote)
                return url
        except urllib.error.HTTPError as exc:
            # A stalled gateway answers 503 yet still holds the file and serves SQL and status.
            with exc:
                body = json.loads(exc.read())
            stalled = exc.code == 503 and isinstance(body, dict) and body.get("healthy") is False
            return url if stalled else None
    except (OSError, ValueError, KeyError):
        return None


def query(
    buffer_path: Path, sql: str, *, token: str | None = None, limit: int | None = None
) -> pa.Table:
    url = running_api(buffer_path)
    if url is not None:
        return _query_api(url, sql, token, limit)
    if not buffer_path.exists():
        raise BufferStoreError(f"buffer {buffer_path}: no such file (is the path right?)")
    con = connect(buffer_path, read_only=True)
    try:
        return run_query(con, sql, limit)
    finally:
        con.close()


def _query_api(url: str, sql: str, token: str | None, limit: int | None) -> pa.Table:
    body = json.dumps({"sql": sql, "limit": limit}).encode()
    request = urllib.request.Request(  # noqa: S310 (loopback URL)
        f"{url}/api/sql",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": ARROW_STREAM},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return pa.ipc.open_stream(response.read()).read_all()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]
        except (ValueError, KeyError):
            message = f"HTTP {exc.code}"
        if exc.code == 403:
            raise ReadOnlySqlError(message) from None
        raise BufferStoreError(message) from None
