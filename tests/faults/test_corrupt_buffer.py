"""A torn or corrupt buffer file: the gateway refuses it with a clear error naming the recovery
command; `edge-gateway buffer check` names the damage; `buffer recover` rebuilds the file, says
exactly what was lost, and positions never go back (sinks name uploads by position)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
from faulthelpers import gateway_ready

from gateway.buffer.connection import connect
from gateway.buffer.recovery import check_buffer
from gateway.buffer.store import BufferStore
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch
from gateway.services.mosquitto import Mosquitto
from gateway.testing import publisher, wait_until

TOTAL = 300_000  # three DuckDB row groups, so damage can hit one and spare the others


def batch(start: int, n: int) -> IngestBatch:
    now = 1_700_000_000_000_000
    table = pa.table(
        {
            "event_time": pa.array([now + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "ingest_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
            "device": [f"dev{(start + i) % 50}" for i in range(n)],
            "metric": ["seq"] * n,
            "value": [float(start + i) for i in range(n)],
            "text": [None] * n,
            "unit": [None] * n,
            "topic": [f"sensors/plant/dev{(start + i) % 50}/seq" for i in range(n)],
            "tags": [None] * n,
        },
        schema=DECODED_READINGS_SCHEMA,
    )
    return IngestBatch(table, DECODED_QUARANTINE_SCHEMA.empty_table())


def filled_buffer(path: Path, total: int = TOTAL, step: int = 50_000) -> Path:
    store = BufferStore(path)
    for start in range(0, total, step):
        store.append(batch(start, min(step, total - start)), [])
    store.set_cursor("warehouse", total // 2)
    store.close()
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120
    )


def gateway_config(tmp_path: Path, buffer: Path, port: int) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {port}, client_id: gw-corrupt}}\n"
        f"buffer: {{path: {buffer}}}\napi: {{port: 0}}\nlog_level: warning\n"
    )
    return config


def readings_ids(path: Path) -> tuple[int, int, int]:
    con = connect(path, read_only=True)
    try:
        row = con.execute("SELECT count(*), min(id), max(id) FROM readings").fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0]), int(row[1] or 0), int(row[2] or 0)


def test_a_cut_short_buffer_is_refused_then_recovered_keeping_what_is_readable(
    tmp_path: Path, broker: Mosquitto
) -> None:
    buffer = filled_buffer(tmp_path / "buffer.duckdb")
    size = buffer.stat().st_size
    with buffer.open("r+b") as f:
        f.truncate(size * 2 // 3)  # a copy or a write that was cut off

    config = gateway_config(tmp_path, buffer, broker.port)
    run = cli("run", "-c", str(config))
    assert run.returncode == 1
    assert "cut short" in run.stderr
    assert f"edge-gateway buffer recover -b {buffer}" in run.stderr

    check = cli("buffer", "check", "-b", str(buffer))
    assert check.returncode == 1
    assert "readings" in check.stderr and "buffer recover" in check.stderr

    recover = cli("buffer", "recover", "-b", str(buffer))
    assert recover.returncode == 0, recover.stderr
    assert "damaged file kept as" in recover.stdout
    last = recover.stdout.strip().splitlines()[-1]
    assert last.startswith("recovered lost=")
    lost = int(last.split()[1].removeprefix("lost="))
    salvaged, _, high = readings_ids(buffer)
    assert salvaged + lost == TOTAL
    assert 0 < salvaged < TOTAL
    assert cli("buffer", "check", "-b", str(buffer)).returncode == 0
    assert list(tmp_path.glob("buffer.duckdb.damaged-*"))

    # The recovered buffer runs again, and new readings take positions after every old one.
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: gateway_ready(buffer), 30)
        pub = publisher(broker.host, broker.port, client_id="after-recovery")
        for i in range(10):
            pub.publish("sensors/plant/new/seq", str(TOTAL + i), qos=1).wait_for_publish(5)
        pub.loop_stop()
        from gateway.sqlclient import query

        assert wait_until(
            lambda: (
                query(buffer, "SELECT count(*) AS n FROM readings WHERE device = 'new'")["n"][
                    0
                ].as_py()
                == 10
            ),
            timeout=30,
        )
    finally:
        process.terminate()
        assert process.wait(30) == 0
        assert process.stderr is not None
        process.stderr.close()
    con = connect(buffer, read_only=True)
    try:
        new_ids = [
            r[0] for r in con.execute("SELECT id FROM readings WHERE device = 'new'").fetchall()
        ]
    finally:
        con.close()
    assert min(new_ids) == TOTAL + 1
    assert high <= TOTAL


def test_a_buffer_with_a_destroyed_header_restarts_positions_beyond_any_old_one(
    tmp_path: Path,
) -> None:
    buffer = filled_buffer(tmp_path / "buffer.duckdb", total=20_000, step=10_000)
    with buffer.open("r+b") as f:
        f.write(b"\0" * 4096)
    report = check_buffer(buffer)
    assert not report.ok
    assert "buffer recover" in report.problems["file"]

    recover = cli("buffer", "recover", "-b", str(buffer))
    assert recover.returncode == 0, recover.stderr
    assert "lost: file could not be read at all" in recover.stdout
    assert "positions restart at" in recover.stdout
    store = BufferStore(buffer)
    try:
        result = store.append(batch(0, 5), [])
    finally:
        store.close()
    # Microseconds since the epoch: beyond any position the old file can have handed out.
    assert result.first_id > 1_600_000_000_000_000


def test_a_torn_wal_tail_opens_with_every_complete_commit_and_nothing_half_written(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live.duckdb"
    store = BufferStore(live)
    for start in range(0, 5000, 1000):
        store.append(batch(start, 1000), [])
    # A power cut: the file and its WAL as they are on disk, no checkpoint.
    copy = tmp_path / "copy.duckdb"
    shutil.copy(live, copy)
    wal = live.with_name(live.name + ".wal").read_bytes()
    copy.with_name(copy.name + ".wal").write_bytes(wal[: len(wal) - 200])  # last write torn
    store.close()

    n, low, high = readings_ids(copy)
    assert n == 4000 and (low, high) == (1, 4000)  # the torn commit is gone, as a whole
    assert check_buffer(copy).ok


def test_a_file_duckdb_shortened_after_freeing_its_last_blocks_opens(tmp_path: Path) -> None:
    """After a delete and checkpoints DuckDB cuts free blocks off the end of the file but
    still counts them: such a file is whole, and the gateway must start on it."""
    path = tmp_path / "buffer.duckdb"
    store = BufferStore(path)
    for start in range(0, TOTAL, 10_000):
        store.append(batch(start, 10_000), [])
    with store.reading() as con:
        con.execute("CHECKPOINT")
        con.execute("DELETE FROM readings WHERE id > 100000")
        con.execute("CHECKPOINT")
    store.close()  # checkpoints again: the freed blocks at the end leave the file
    raw = connect(path, read_only=True)
    try:
        total_blocks, block_size = raw.execute(
            "SELECT total_blocks, block_size FROM pragma_database_size()"
        ).fetchone() or (0, 0)
    finally:
        raw.close()
    assert path.stat().st_size < 3 * 4096 + total_blocks * block_size  # the shape in question
    store = BufferStore(path)
    try:
        assert store.next_reading_id == TOTAL + 1  # positions never go back
    finally:
        store.close()
    assert readings_ids(path) == (100_000, 1, 100_000)
    assert check_buffer(path).ok
