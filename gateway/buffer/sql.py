"""The read-only SQL surface over the buffer: one checked statement at a time, results as Arrow."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from gateway.errors import BufferStoreError, ReadOnlySqlError

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but SELECT/EXPLAIN (writes, ATTACH, COPY, SET, PRAGMA, INSTALL, ...)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise BufferStoreError(f"SQL: {exc}") from None
    if not statements:
        raise ReadOnlySqlError("SQL: no statement given")
    if len(statements) > 1:
        raise ReadOnlySqlError("SQL: one statement at a time, please")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = str(kind).rsplit(".", 1)[-1]
        raise ReadOnlySqlError(
            f"SQL: {name} statements are refused; the buffer's SQL surface is read-only "
            "(SELECT and EXPLAIN only)"
        )


def run_query(con: duckdb.DuckDBPyConnection, sql: str, row_limit: int | None = None) -> pa.Table:
    """Run one read-only statement; file access is already locked off on the connection."""
    check_read_only(con, sql)
    try:
        relation = con.sql(sql)
        if relation is None:
            return pa.table({})
        if row_limit is None:
            return relation.to_arrow_table()
        reader = relation.to_arrow_reader(batch_size=min(row_limit, 10_000))
        batches: list[pa.RecordBatch] = []
        rows = 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows >= row_limit:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
        return table.slice(0, row_limit)
    except duckdb.PermissionException as exc:
        raise ReadOnlySqlError(f"SQL: {exc}".splitlines()[0]) from None
    except duckdb.Error as exc:
        raise BufferStoreError(f"SQL: {exc}") from None
