"""`edge-gateway export`: readings newer than a cutoff to a Parquet file, page by page, so a
large export neither holds everything in memory nor hits the API's row limit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from gateway.buffer import queries
from gateway.sqlclient import query

PAGE_ROWS = 50_000


def count_since(buffer_path: Path, cutoff: float, token: str | None) -> int:
    table = query(
        buffer_path,
        queries.count_received_since(cutoff),
        token=token,
    )
    return int(table.column(0)[0].as_py())


def export_since(
    buffer_path: Path,
    output: Path,
    cutoff: float,
    *,
    token: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
    page_rows: int = PAGE_ROWS,
) -> int:
    """Write readings with ingest_time >= cutoff (epoch seconds), in id order; returns rows."""
    after = 0
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        while True:
            # Keyset paging on id: a page capped by the API's row limit still continues right.
            page = query(
                buffer_path,
                queries.received_since_page(cutoff, after, page_rows),
                token=token,
            )
            if writer is None:
                writer = pq.ParquetWriter(output, page.schema, compression="zstd")
            if page.num_rows == 0:
                break
            writer.write_table(page)
            written += page.num_rows
            after = int(page.column("id")[-1].as_py())
            progress(page.num_rows)
    finally:
        if writer is not None:
            writer.close()
    return written
