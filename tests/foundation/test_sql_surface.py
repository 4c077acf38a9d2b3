"""The SQL surface is read-only: no writes, no ATTACH, no files, no settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buffer.connection import connect
from gateway.buffer.sql import run_query
from gateway.buffer.store import BufferStore
from gateway.errors import BufferStoreError, ReadOnlySqlError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BufferStore]:
    opened = BufferStore(tmp_path / "b.duckdb")
    yield opened
    opened.close()


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM readings",
        "INSERT INTO counters VALUES ('x', 1)",
        "UPDATE counters SET value = 0",
        "DROP TABLE readings",
        "CREATE TABLE t AS SELECT 1",
        "ATTACH '/tmp/other.duckdb' AS other",
        "COPY readings TO '/tmp/out.csv'",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "PRAGMA enable_profiling",
        "SELECT 1; DELETE FROM readings",
    ],
)
def test_statements_that_would_change_anything_are_refused(store: BufferStore, sql: str) -> None:
    with pytest.raises(ReadOnlySqlError):
        store.query(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('/tmp/x.parquet')",
    ],
)
def test_reading_files_is_refused(store: BufferStore, sql: str) -> None:
    with pytest.raises(ReadOnlySqlError, match="disabled by configuration"):
        store.query(sql)


def test_selects_work_and_respect_the_row_limit(store: BufferStore) -> None:
    table = store.query("SELECT range AS n FROM range(100)", row_limit=7)
    assert table.num_rows == 7


def test_a_syntax_error_names_the_problem(store: BufferStore) -> None:
    with pytest.raises(BufferStoreError, match="syntax error"):
        store.query("SELEC 1")


def test_offline_read_only_connection_cannot_write(tmp_path: Path) -> None:
    BufferStore(tmp_path / "b.duckdb").close()
    con = connect(tmp_path / "b.duckdb", read_only=True)
    try:
        with pytest.raises(ReadOnlySqlError):
            run_query(con, "DELETE FROM readings")
        assert run_query(con, "SELECT count(*) AS n FROM readings")["n"][0].as_py() == 0
    finally:
        con.close()
