"""A running gateway imports the drivers its config uses and no others: with no sinks configured,
none of the sink drivers is loaded (the Snowflake connector alone is 37 MB of RSS), whatever
else the gateway starts (buffer, pipeline, API). A list of what was imported, not a size."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until

SINK_DRIVERS = {"snowflake", "confluent_kafka", "fastavro", "botocore", "boto3"}


def test_a_gateway_without_sinks_imports_no_sink_driver(tmp_path: Path, broker: Mosquitto) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
mqtt: {{host: {broker.host}, port: {broker.port}, client_id: imports-test}}
buffer: {{path: {tmp_path / "buffer.duckdb"}}}
api: {{port: 0}}
"""
    )
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "gateway", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until((tmp_path / "buffer.duckdb.runtime.json").exists, 30), "never ready"
    finally:
        process.send_signal(signal.SIGTERM)
        _, report = process.communicate(timeout=30)
    assert process.returncode == 0, report[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in report.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "gateway.pipeline" in modules and "duckdb" in modules  # it did run the gateway
    assert {name.split(".")[0] for name in modules} & SINK_DRIVERS == set()
