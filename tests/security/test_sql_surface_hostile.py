"""The SQL surface, attacked: no statement or function can write, attach, read a file or reach the
network, whatever way it is dressed up (tests/foundation/test_sql_surface.py covers the plain
statements)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.sql import run_query
from gateway.buffer.store import BufferStore
from gateway.errors import BufferStoreError, GatewayError, ReadOnlySqlError
from gateway.model import DECODED_QUARANTINE_SCHEMA, IngestBatch
from gateway.rules.testing import R
from gateway.rules.testing import readings as committed_readings


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BufferStore]:
    opened = BufferStore(tmp_path_factory.mktemp("sql") / "b.duckdb")
    table = committed_readings([R(i, "dev", "t", float(i)) for i in range(100)])
    decoded = table.drop_columns(["id", "event_id"])
    opened.append(IngestBatch(decoded, DECODED_QUARANTINE_SCHEMA.empty_table()), [])
    yield opened
    opened.close()


def fingerprint(store: BufferStore) -> Any:
    with store.reading() as con:
        return con.execute(
            "SELECT (SELECT count(*) FROM readings), (SELECT sum(hash(r)) FROM readings AS r), "
            "(SELECT list(name || value ORDER BY name) FROM counters), "
            "(SELECT count(*) FROM duckdb_databases()), (SELECT count(*) FROM duckdb_tables())"
        ).fetchall()


class _Counting(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"a,b\n1,2\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Counting.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM query('DELETE FROM readings')",
        "SELECT * FROM query_table('readings'); DROP TABLE readings",
        "FROM '/etc/passwd'",
        "SELECT * FROM read_blob('/etc/passwd')",
        "SELECT * FROM read_json_auto('/etc/os-release')",
        "SELECT * FROM sniff_csv('/etc/passwd')",
        "SELECT * FROM parquet_metadata('/tmp/x.parquet')",
        "CALL pragma_database_size()",
        "CHECKPOINT",
        "VACUUM",
        "EXPORT DATABASE '/tmp/leak'",
        "LOAD httpfs",
        "DETACH buffer",
        "USE memory",
        "RESET enable_external_access",
        "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
        "CREATE MACRO m(a) AS a",
        "PREPARE p AS DELETE FROM readings",
        "/* SELECT */ DELETE FROM readings",
        "WITH x AS (SELECT 1) DELETE FROM readings",
        "SELECT 1; ATTACH ':memory:' AS m",
        "ATTACH 'ducklake:/tmp/x' AS lake",
        "INSERT INTO readings SELECT * FROM readings",
        "UPDATE readings SET value = 0 RETURNING *",
        "SET GLOBAL enable_external_access = true",
    ],
)
def test_dressed_up_writes_and_file_access_are_refused(store: BufferStore, sql: str) -> None:
    before = fingerprint(store)
    with pytest.raises(BufferStoreError):
        store.query(sql)
    assert fingerprint(store) == before


def test_the_network_is_out_of_reach(store: BufferStore, web: str) -> None:
    for sql in (
        f"SELECT * FROM read_csv('{web}/data.csv')",
        f"SELECT * FROM '{web}/data.csv'",
        f"SELECT * FROM read_text('{web}/x')",
    ):
        with pytest.raises(ReadOnlySqlError):
            store.query(sql)
    assert _Counting.hits == 0


def test_settings_stay_locked(store: BufferStore) -> None:
    table = store.query(
        "SELECT name, value FROM duckdb_settings() "
        "WHERE name IN ('enable_external_access', 'lock_configuration') ORDER BY name",
    )
    assert table.to_pylist() == [
        {"name": "enable_external_access", "value": "false"},
        {"name": "lock_configuration", "value": "true"},
    ]


_WORDS = st.sampled_from(
    [
        "SELECT", "DELETE", "FROM", "readings", "INSERT", "INTO", "UPDATE", "SET", "ATTACH",
        "COPY", "TO", "'/tmp/x'", "read_csv('/etc/passwd')", "query('DROP TABLE readings')",
        ";", "--", "/*", "*/", "(", ")", "*", "1", "WITH", "AS", "x", "DROP", "TABLE",
        "PRAGMA", "CALL", "INSTALL", "LOAD", "httpfs", "VALUES", "CREATE", "OR", "REPLACE",
        "counters", "'", '"', "$$", "RETURNING", "EXPLAIN", "ANALYZE",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=12).map(" ".join))
def test_no_statement_built_from_hostile_words_changes_anything(
    store: BufferStore, sql: str
) -> None:
    before = fingerprint(store)
    # Refused or not valid SQL: both fine, as long as it says so with a GatewayError.
    with contextlib.suppress(GatewayError):
        store.query(sql, row_limit=10)
    assert fingerprint(store) == before


def test_read_only_file_connection_also_refuses(tmp_path: Path) -> None:
    from gateway.buffer.connection import connect

    BufferStore(tmp_path / "b.duckdb").close()
    con = connect(tmp_path / "b.duckdb", read_only=True)
    try:
        for sql in ("SELECT * FROM query('DELETE FROM readings')", "FROM '/etc/passwd'"):
            with pytest.raises(BufferStoreError):
                run_query(con, sql)
    finally:
        con.close()
