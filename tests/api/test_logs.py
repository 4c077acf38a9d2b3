"""Log lines: key=value or JSON as the config says, one line per event, secrets masked, and
repeats of one message held back; checked on a real `edge-gateway run` too."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import LogfmtFormatter, RepeatFilter, configure_logging, mask_secrets
from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    stream = io.StringIO()
    handlers: list[logging.Handler] = []
    root = logging.getLogger()
    level = root.level
    yield stream, handlers
    for handler in handlers:
        root.removeHandler(handler)
    root.setLevel(level)


def test_logfmt_is_one_line_of_key_value_pairs_with_context(
    capture: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    stream, handlers = capture
    handlers.append(configure_logging("info", "logfmt", stream=stream))
    logging.getLogger("gateway.sinks.kafka").warning(
        "sink %s: send failed:\n%s", "upstream", "broker down", extra={"sink": "upstream"}
    )
    [line] = stream.getvalue().splitlines()
    assert line.startswith("time=")
    assert " level=warning logger=gateway.sinks.kafka " in line
    assert 'msg="sink upstream: send failed:\\nbroker down"' in line
    assert line.endswith(" sink=upstream")


def test_json_lines_parse_and_carry_the_exception(
    capture: tuple[io.StringIO, list[logging.Handler]],
) -> None:
    stream, handlers = capture
    handlers.append(configure_logging("info", "json", stream=stream))
    log = logging.getLogger("gateway.rules.service")
    log.info("rule %s fired", "freezer-too-warm", extra={"rule_id": "freezer-too-warm"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("rule %s failed", "freezer-too-warm")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "info" and first["msg"] == "rule freezer-too-warm fired"
    assert first["rule_id"] == "freezer-too-warm"
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connect failed: password=hunter2 user=bob", "hunter2"),
        ("config: {'token': 'abc123xyz'}", "abc123xyz"),
        ('"api_key": "k-998877"', "k-998877"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("webhook https://alice:pa55w0rd@hooks.example/x failed", "pa55w0rd"),
    ],
)
def test_secrets_never_reach_a_log_line(text: str, secret: str) -> None:
    masked = mask_secrets(text)
    assert secret not in masked
    assert "***" in masked


def test_repeats_are_held_back_and_then_counted() -> None:
    now = [1000.0]
    repeat = RepeatFilter(window=60, burst=3, clock=lambda: now[0])

    def record(host: str) -> logging.LogRecord:
        return logging.LogRecord(
            "gateway.ingest.mqtt", logging.WARNING, "", 0, "cannot reach %s", (host,), None
        )

    shown = [repeat.filter(record(f"broker-{i}")) for i in range(10)]
    assert shown == [True] * 3 + [False] * 7
    other = logging.LogRecord("gateway.app", logging.INFO, "", 0, "another event", None, None)
    assert repeat.filter(other)
    now[0] += 61
    after = record("broker-x")
    assert repeat.filter(after)
    line = LogfmtFormatter().format(after)
    assert line.endswith(" repeated=7")


def test_a_running_gateway_logs_json_without_its_secrets(tmp_path: Path, broker: Mosquitto) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: log-test, password: mqtt-s3cret,
       username: gw}}
buffer: {{path: {tmp_path / "buffer.duckdb"}}}
api: {{port: 0, token: api-s3cret-token}}
logging: {{format: json}}
"""
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        runtime = tmp_path / "buffer.duckdb.runtime.json"
        assert wait_until(runtime.exists, 20)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("gateway edge-1 running") for m in messages), messages
    assert any(m.startswith("gateway stopped") for m in messages), messages
    assert all({"time", "level", "logger", "msg"} <= set(line) for line in lines)
    assert b"s3cret" not in stderr
