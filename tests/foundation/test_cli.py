"""The command line as a user meets it: config check, status, export, sql on a stopped buffer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from gateway.buffer.connection import connect
from gateway.buffer.store import BufferStore
from gateway.config import RouteConfig
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.model import RawMessage


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def filled_buffer(path: Path, readings: int, age: float = 0.0) -> Path:
    store = BufferStore(path)
    decoder = BatchDecoder(
        TopicRouter([RouteConfig(pattern="sensors/{site}/{device}/{metric}")]),
        RedeliveryFilter(),
        1024,
    )
    now = time.time() - age
    messages = [
        RawMessage(f"sensors/s/d{i % 3}/t", str(i).encode(), 1, i + 1, False, False, now)
        for i in range(readings)
    ]
    messages.append(RawMessage("nowhere", b"x", 1, 99_999, False, False, now))
    store.append(decoder.decode(messages), [])
    store.close()
    return path


def test_config_check_lists_problems_with_paths_and_fails(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("mqtt:\n  port: 1884\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 0\n  password: ${NOT_SET_ANYWHERE}\n")
    result = cli("config", "check", str(good), str(bad))
    assert result.returncode == 1
    assert f"{good}: ok" in result.stdout
    assert "mqtt.password: environment variable NOT_SET_ANYWHERE is not set" in result.stderr


def test_config_check_never_prints_secrets(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  password: s3cr3t-value\n  port: 99999\n")
    result = cli("config", "check", str(bad))
    assert result.returncode == 1
    assert "mqtt.port: must be 1..65535" in result.stderr
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_status_of_a_stopped_buffer(tmp_path: Path) -> None:
    path = filled_buffer(tmp_path / "b.duckdb", 30)
    result = cli("status", "--buffer", str(path))
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
    assert "readings stored  30" in result.stdout
    assert "quarantined      1" in result.stdout


def test_export_writes_recent_readings_to_parquet(tmp_path: Path) -> None:
    path = filled_buffer(tmp_path / "b.duckdb", 25)
    out = tmp_path / "out.parquet"
    result = cli("export", "--buffer", str(path), "--since", "1h", str(out))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == 25
    assert set(table.column_names) >= {"event_id", "event_time", "device", "metric", "value"}


def test_export_skips_readings_older_than_since(tmp_path: Path) -> None:
    path = filled_buffer(tmp_path / "b.duckdb", 10, age=7200)
    out = tmp_path / "out.parquet"
    assert cli("export", "--buffer", str(path), "--since", "1h", str(out)).returncode == 0
    assert pq.read_table(out).num_rows == 0


def test_sql_on_a_missing_buffer_says_so(tmp_path: Path) -> None:
    result = cli("sql", "--buffer", str(tmp_path / "nope.duckdb"), "SELECT 1")
    assert result.returncode == 1
    assert "no such file" in result.stderr


def test_bad_format_is_refused(tmp_path: Path) -> None:
    path = filled_buffer(tmp_path / "b.duckdb", 1)
    result = cli("sql", "--buffer", str(path), "--format", "xml", "SELECT 1")
    assert result.returncode == 2
    assert "--format must be table, csv or json" in result.stderr


def test_a_buffer_file_from_before_retained_readings_is_not_damaged(tmp_path: Path) -> None:
    """A file written before the `retained_readings` table existed: `buffer check` and `rules
    test` read it as it is (nothing retained), `buffer recover` keeps every reading, and the
    next open adds the table."""
    buffer = filled_buffer(tmp_path / "buffer.duckdb", 20)
    con = connect(buffer, read_only=False)
    con.execute("DROP TABLE retained_readings")
    con.close()
    rule = tmp_path / "rule.yaml"
    rule.write_text(
        "rules:\n  - id: hot\n    select: {metric: t}\n    trigger: {type: threshold, above: 18}\n"
        "    actions:\n      - alert: {severity: warning, message: hot}\n"
    )

    check = cli("buffer", "check", "-b", str(buffer))
    assert check.returncode == 0, check.stderr
    assert "retained_readings 0" in check.stdout
    backtest = cli(
        "rules", "test", str(rule), "--since", "1h", "-b", str(buffer), "--format", "json"
    )
    assert backtest.returncode == 0, backtest.stderr
    assert [row["device"] for row in json.loads(backtest.stdout)] == ["d1"]  # value 19

    recovered = cli("buffer", "recover", "-b", str(buffer))
    assert recovered.returncode == 0, recovered.stderr
    BufferStore(buffer).close()  # the next open creates the table
    con = connect(buffer, read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM readings").fetchone() == (20,)
        assert con.execute("SELECT count(*) FROM retained_readings").fetchone() == (0,)
    finally:
        con.close()


def test_bad_numbers_and_choices_are_refused_naming_the_option(tmp_path: Path) -> None:
    path = str(filled_buffer(tmp_path / "b.duckdb", 1))
    for args, named in (
        (("sql", "-b", path, "--limit", "0", "SELECT 1"), "'--limit'"),
        (("status", "-b", path, "--once", "--interval", "0"), "'--interval'"),
        (("demo", "--sinks", "some", "--workdir", str(tmp_path / "demo")), "--sinks"),
    ):
        result = cli(*args)
        assert result.returncode == 2, args
        assert named in result.stderr, result.stderr
    assert not (tmp_path / "demo").exists()  # refused before anything started


def test_export_into_a_missing_directory_is_refused_before_reading(tmp_path: Path) -> None:
    path = filled_buffer(tmp_path / "b.duckdb", 1)
    out = tmp_path / "no" / "such" / "out.parquet"
    result = cli("export", "--buffer", str(path), str(out))
    assert result.returncode == 2
    assert f"{out}: directory {out.parent} does not exist" in result.stderr


def test_config_check_warns_of_routes_the_subscriptions_do_not_deliver(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "mqtt:\n"
        "  subscriptions:\n"
        "    - {topic: 'zigbee2mqtt/+'}\n"
        "    - {topic: 'sensors/#'}\n"
        "routes:\n"
        "  - pattern: 'zigbee2mqtt/{device...}'\n"
        "    decoder: zigbee2mqtt\n"
        "  - pattern: 'sensors/{site}/{device}/{metric}'\n"
        "  - pattern: 'tele/{device}/LWT'\n"
        "    decoder: availability\n"
        "  - pattern: 'z/{device...}/{metric}'\n"
    )
    result = cli("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: ok" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"{config}: warning: routes[0] 'zigbee2mqtt/{{device...}}': mqtt.subscriptions receive "
        "only some of its topics (zigbee2mqtt/+); subscribe to 'zigbee2mqtt/#' to receive them all",
        f"{config}: warning: routes[2] 'tele/{{device}}/LWT': no subscription receives its "
        "topics; subscribe to 'tele/+/LWT'",
        f"{config}: warning: routes[3] 'z/{{device...}}/{{metric}}': no subscription receives its "
        "topics; subscribe to 'z/#'",
    ]
    multi = tmp_path / "bad.yaml"
    multi.write_text("routes:\n  - pattern: 'a/{device...}/{metric...}'\n")
    refused = cli("config", "check", str(multi))
    assert refused.returncode == 1
    assert "routes.0.pattern" in refused.stderr and "only one multi-level capture" in refused.stderr
