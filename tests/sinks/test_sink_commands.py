"""`edge-gateway sinks` shows cursors and backlog; `replay` re-sends without doubling."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml
from sinkhelpers import (
    WriterThread,
    event_id_of,
    fill,
    kafka_config,
    kafka_messages,
    readings,
    snowflake_config,
    snowflake_rows,
)
from typer.testing import CliRunner

from gateway.buffer.store import BufferStore
from gateway.cli import app
from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu
from gateway.sinks.shipping import Shipping


def test_sinks_shows_backlog_and_replay_restores_lost_rows_without_doubling(
    tmp_path: Path,
    on_writer: WriterThread,
    tansu: Tansu,
    fakesnow: FakeSnow,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = BufferStore(tmp_path / "buffer.duckdb")
    kafka = kafka_config(tansu.bootstrap_servers, streams=["readings"])
    snow = snowflake_config(fakesnow, streams=["readings"])
    fill(store, readings(2000))
    shipping = Shipping([kafka, snow], "gw1", store, on_writer, lambda: store.next_reading_id - 1)

    async def ship() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(shipping.run(stop))
        deadline = time.monotonic() + 60
        while min(f.position for f in shipping.forwarders) < 2000:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(ship())
    fill(store, readings(500, start=2000))  # buffered after the sinks stopped: the backlog
    store.close()

    monkeypatch.setenv("SNOW_PASSWORD", fakesnow.password)
    sinks = [
        kafka.model_dump(mode="json", exclude={"client_secrets"}),
        {**snow.model_dump(mode="json", by_alias=True), "password": "${SNOW_PASSWORD}"},
    ]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "gateway_id": "gw1",
                "buffer": {"path": str(tmp_path / "buffer.duckdb")},
                "sinks": sinks,
            }
        )
    )
    runner = CliRunner()
    shown = runner.invoke(app, ["sinks", "-c", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    entries = {e["sink"]: e for e in json.loads(shown.output)}
    for name in (kafka.name, snow.name):
        assert entries[name]["position"] == 2000 and entries[name]["head"] == 2500
        assert entries[name]["backlog_rows"] == 500
        assert entries[name]["oldest_unsent_age_s"] is not None
    monkeypatch.setenv("COLUMNS", "200")
    table = runner.invoke(app, ["sinks", "-c", str(config)])
    assert table.exit_code == 0 and kafka.name in table.output and "2000 / 2500" in table.output

    # Someone deleted rows upstream; a replay brings them back and doubles nothing.
    snowflake_rows(fakesnow, snow, "DELETE FROM readings WHERE value < 50")
    assert snowflake_rows(fakesnow, snow, "SELECT count(*) FROM readings") == [(1500,)]
    for name in (snow.name, kafka.name):
        replayed = runner.invoke(
            app, ["replay", "-c", str(config), "--sink", name, "--since", "1h"]
        )
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 2000 readings" in replayed.output
    assert snowflake_rows(
        fakesnow, snow, "SELECT count(*), count(DISTINCT event_id) FROM readings"
    ) == [(2000, 2000)]
    ids = [event_id_of(m) for m in kafka_messages(tansu.bootstrap_servers, kafka.name)]
    assert len(ids) == 2000 and len(set(ids)) == 2000
