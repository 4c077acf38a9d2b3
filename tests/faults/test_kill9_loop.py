"""kill -9 of the gateway at random moments, again and again, under steady load: every reading
the broker acknowledged is in the buffer, in Kafka and in Snowflake exactly once."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faulthelpers import (
    SteadyPublisher,
    buffer_values,
    fault_loops,
    gateway_ready,
    kafka_values,
    lost_and_doubled,
    snowflake_values,
    unique,
    write_config,
)

from gateway.services.fakesnow import FakeSnow
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.sqlclient import running_api
from gateway.testing import GatewayProcess, wait_until


@pytest.fixture
def gateway_runs() -> Iterator[list[GatewayProcess]]:
    runs: list[GatewayProcess] = []
    yield runs
    for run in runs:
        run.kill()


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_and_doubles_nothing_in_any_sink(
    broker: Mosquitto,
    tansu: Tansu,
    fakesnow: FakeSnow,
    tmp_path: Path,
    gateway_runs: list[GatewayProcess],
) -> None:
    loops = fault_loops(4)
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    topic_prefix, schema = unique("kill"), unique("KILL").upper()
    batching = {"max_rows": 400, "max_age": "100ms"}  # many small COPYs and sends to land in
    retry = {"min_delay": "100ms", "max_delay": "1s"}
    sinks: list[dict[str, Any]] = [
        {
            "type": "kafka",
            "name": "kafka",
            "bootstrap_servers": tansu.bootstrap_servers,
            "topic": f"{topic_prefix}.{{site}}",
            "alerts_topic": f"{topic_prefix}-alerts",
            "batching": batching,
            "retry": retry,
        },
        {
            "type": "snowflake",
            "name": "warehouse",
            "account": fakesnow.account,
            "user": fakesnow.user,
            "password": "${FAKESNOW_PASSWORD}",
            "database": "EDGE",
            "schema": schema,
            "host": fakesnow.host,
            "port": fakesnow.port,
            "protocol": "http",
            "batching": batching,
            "retry": retry,
        },
    ]
    config = write_config(tmp_path, broker, "gw-kill-loop", sinks=sinks)
    buffer = tmp_path / "buffer.duckdb"
    gateway = GatewayProcess(config, env={"FAKESNOW_PASSWORD": fakesnow.password})
    gateway_runs.append(gateway)
    total = 1500 * loops + 1500
    # The first run creates the gateway's persistent session; from then on the broker keeps
    # every reading for it, whether the gateway is up, killed or restarting.
    gateway.start()
    assert wait_until(lambda: gateway_ready(buffer), timeout=30), gateway.tail()
    load = SteadyPublisher(broker, total=total, rate=800.0).start()
    moments: list[str] = []
    try:
        for round_ in range(loops):
            if round_:
                gateway.start()
            if round_ % 2 == 0:
                # A random moment of the run: start-up, ingest, commit, or a send in flight.
                time.sleep(rng.uniform(0.5, 3.0))
                moments.append("random")
            else:
                # While batches go up: the warehouse count just moved, so COPYs and sends are on.
                before = sum(snowflake_values(fakesnow, schema).values())

                def uploading(before: int = before) -> bool:
                    return sum(snowflake_values(fakesnow, schema).values()) > before

                moved = wait_until(uploading, timeout=30, interval=0.2)
                time.sleep(rng.uniform(0.0, 0.3))
                moments.append("uploading" if moved else "random")
            gateway.kill()
        assert load.wait_all_acked(timeout=120), "the broker did not acknowledge every reading"
        acked = load.acked()
        gateway.start()
        assert wait_until(lambda: running_api(buffer) is not None, timeout=30), gateway.tail()
        assert wait_until(
            lambda: set(snowflake_values(fakesnow, schema)) >= acked, timeout=180, interval=1.0
        ), gateway.tail()
        assert wait_until(
            lambda: set(kafka_values(tansu.bootstrap_servers, topic_prefix)) >= acked,
            timeout=60,
            interval=1.0,
        ), gateway.tail()
        assert gateway.terminate() == 0, gateway.tail()
    finally:
        load.stop()
    report = {
        "buffer": lost_and_doubled(acked, buffer_values(buffer)),
        "kafka": lost_and_doubled(acked, kafka_values(tansu.bootstrap_servers, topic_prefix)),
        "snowflake": lost_and_doubled(acked, snowflake_values(fakesnow, schema)),
    }
    assert report == {"buffer": (0, 0), "kafka": (0, 0), "snowflake": (0, 0)}, (
        f"seed {seed}, kills {moments}: (lost, doubled) per place {report}"
    )
    assert len(acked) == total
    assert gateway.starts == loops + 1, moments
