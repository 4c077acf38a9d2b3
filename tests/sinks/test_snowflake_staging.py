"""Snowflake staging: staged names are unique per gateway and buffer, a PUT that did not upload
is not taken for a delivery, and a resend older than the load history cannot load twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sinkhelpers import WriterThread, fill, readings, ship, snowflake_config, snowflake_rows, unique

from gateway.buffer.outbox import rows_after
from gateway.buffer.store import BufferStore
from gateway.errors import SinkError
from gateway.services.fakesnow import FakeSnow
from gateway.sinks.base import Attempt
from gateway.sinks.config import SnowflakeSinkConfig
from gateway.sinks.shipping import Shipping
from gateway.sinks.snowflake import SnowflakeSink

DAY = 86400.0


def batch_of(store: BufferStore, first: int, last: int) -> pa.Table:
    with store.reading() as con:
        return rows_after(con, "readings", first - 1, last, last - first + 1)


def forget_load_history(server: FakeSnow, config: SnowflakeSinkConfig) -> None:
    """What 64 days do to Snowflake's load history; fakesnow keeps it forever."""
    snowflake_rows(
        server,
        config,
        "DELETE FROM _fs_information_schema._fs_load_history "
        f"WHERE SCHEMA_NAME = '{config.schema_}'",
    )


def test_two_gateways_with_the_same_sink_name_both_load_every_row_once(
    tmp_path: Path, on_writer: WriterThread, fakesnow: FakeSnow
) -> None:
    """Two boxes from one example config: sink `warehouse`, one stage, one table, and buffers
    that both start at position 1."""
    schema = unique("S")
    event_ids: set[str] = set()
    for gateway in ("plant-a", "plant-b"):
        store = BufferStore(tmp_path / f"{gateway}.duckdb")
        try:
            fill(store, readings(500))
            event_ids |= {f"{store.buffer_uid}-{i}" for i in range(1, 501)}
            config = snowflake_config(
                fakesnow, name="warehouse", schema=schema, streams=["readings"]
            )
            ship(Shipping([config], gateway, store, on_writer), store)
        finally:
            store.close()
    rows = snowflake_rows(fakesnow, config, "SELECT event_id, gateway_id FROM readings")
    assert len(rows) == 1000
    assert {e for e, _ in rows} == event_ids
    assert sorted({g for _, g in rows}) == ["plant-a", "plant-b"]


def test_a_resend_older_than_the_load_history_is_not_loaded_twice(
    store: BufferStore, fakesnow: FakeSnow
) -> None:
    fill(store, readings(1000))
    config = snowflake_config(fakesnow)
    started = time.time()
    later = started + 61 * DAY  # the resend happens 61 days after the first try
    sink = SnowflakeSink(config, "gw1", store.buffer_uid, clock=lambda: later)
    since = int(started * 1000)

    async def send() -> None:
        # The first try loaded half of the range (a split, say), then its record stayed.
        await sink.write_batch(batch_of(store, 1, 500), Attempt("readings", 1, 500, since))
        forget_load_history(fakesnow, config)
        full = batch_of(store, 1, 1000)
        again = Attempt("readings", 1, 1000, since, resumed=True)
        # Recorded under this very name: only its age tells the load history may not know it.
        again = replace(again, marks=sink.marks(full, again))
        await sink.write_batch(full, again)
        await sink.aclose()

    asyncio.run(send())
    assert snowflake_rows(
        fakesnow, config, "SELECT count(*), count(DISTINCT event_id) FROM readings"
    ) == [(1000, 1000)]
    scratch = snowflake_rows(
        fakesnow,
        config,
        "SELECT count(*) FROM information_schema.tables "
        f"WHERE table_schema = '{config.schema_}' AND table_name <> 'READINGS'",
    )
    assert scratch == [(0,)], "the scratch table is dropped"


class _Result:
    def __init__(self, description: Sequence[tuple[str]], rows: list[tuple[Any, ...]]) -> None:
        self.description = description
        self._rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows


class _StagedBeforeCursor:
    """Plays Snowflake where fakesnow cannot: fakesnow's PUT always overwrites and answers
    UPLOADED, and it has no REMOVE. Here the stage already holds another file of the same name
    (a decoy, really staged): the first PUT answers SKIPPED without uploading, as Snowflake
    does with OVERWRITE=FALSE, and REMOVE drops the decoy (a later real PUT overwrites it)."""

    def __init__(self, inner: Any, sink: StagedBefore) -> None:
        self._inner = inner
        self._sink = sink

    def execute(self, sql: str, *args: Any) -> Any:
        sink = self._sink
        if sql.startswith("PUT ") and sink.decoy_staged is None:
            ours = Path(sql.split("'")[1].removeprefix("file://"))
            table = pq.read_table(ours)
            decoy = table.set_column(
                table.column_names.index("EVENT_ID"),
                "EVENT_ID",
                pa.array([f"decoy-{i}" for i in range(table.num_rows)]),
            )
            sink.decoy_dir.mkdir(exist_ok=True)
            pq.write_table(decoy, sink.decoy_dir / ours.name)
            self._inner.execute(sql.replace(str(ours), str(sink.decoy_dir / ours.name)))
            sink.decoy_staged = True
            description = [("source",), ("target",), ("status",), ("message",)]
            return _Result(description, [(ours.name, ours.name, "SKIPPED", "")])
        if sql.startswith("REMOVE ") and sink.decoy_staged:
            sink.decoy_staged = False
            return _Result([("name",), ("result",)], [])
        return self._inner.execute(sql, *args)

    def close(self) -> None:
        self._inner.close()


class StagedBefore(SnowflakeSink):
    def __init__(self, *args: Any, decoy_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoy_dir = decoy_dir
        self.decoy_staged: bool | None = None

    def _cursor(self) -> Any:
        return _StagedBeforeCursor(super()._cursor(), self)


def test_a_put_that_skipped_the_upload_is_not_taken_for_a_delivery(
    store: BufferStore, fakesnow: FakeSnow, tmp_path: Path
) -> None:
    fill(store, readings(300))
    config = snowflake_config(fakesnow)
    sink = StagedBefore(config, "gw1", store.buffer_uid, decoy_dir=tmp_path / "decoy")
    table = batch_of(store, 1, 300)
    attempt = Attempt("readings", 1, 300, int(time.time() * 1000))
    attempt = replace(attempt, marks=sink.marks(table, attempt))

    async def send() -> None:
        with pytest.raises(SinkError, match="SKIPPED"):
            await sink.write_batch(table, attempt)  # COPY would have loaded the decoy
        await sink.write_batch(table, replace(attempt, resumed=True))
        await sink.aclose()

    asyncio.run(send())
    loaded = snowflake_rows(fakesnow, config, "SELECT event_id FROM readings")
    assert sorted(e for (e,) in loaded) == sorted(f"{store.buffer_uid}-{i}" for i in range(1, 301))


def test_files_written_ahead_load_under_their_batch_name_and_none_is_left_behind(
    store: BufferStore, fakesnow: FakeSnow
) -> None:
    """`prepare` writes a batch's file while the batch before loads (the forwarder's
    read-ahead). The send of that batch stages the file under the batch's own name; a rejected
    row stays out; files written ahead for batches never sent go when the sink closes."""
    fill(store, readings(900))
    config = snowflake_config(fakesnow)
    sink = SnowflakeSink(config, "gw1", store.buffer_uid)
    since = int(time.time() * 1000)
    first, second, third = (
        batch_of(store, 1, 300),
        batch_of(store, 301, 600),
        batch_of(store, 601, 900),
    )
    bad = second.set_column(
        second.column_names.index("metric"),
        "metric",
        pa.array(["x" * (config.max_record_bytes + 1), *second["metric"].to_pylist()[1:]]),
    )

    async def send() -> list[int]:
        sink.prepare("readings", first)
        sink.prepare("readings", bad)
        await sink.write_batch(first, Attempt("readings", 1, 300, since))
        result = await sink.write_batch(bad, Attempt("readings", 301, 600, since))
        sink.prepare("readings", third)  # never sent
        assert len(list(sink._tmp.glob("*.parquet"))) == 1
        await sink.aclose()
        return [r.position for r in result.rejected]

    assert asyncio.run(send()) == [301]
    assert not sink._tmp.exists()
    loaded = snowflake_rows(fakesnow, config, "SELECT event_id FROM readings")
    assert sorted(e for (e,) in loaded) == sorted(
        f"{store.buffer_uid}-{i}" for i in range(1, 601) if i != 301
    )
    history = snowflake_rows(
        fakesnow,
        config,
        "SELECT FILE_NAME FROM _fs_information_schema._fs_load_history "
        f"WHERE SCHEMA_NAME = '{config.schema_}'",
    )
    names = sorted(str(row[0]).rsplit("/", 1)[-1] for row in history)
    assert names == [
        sink.staged_name(Attempt("readings", 1, 300, since)),
        sink.staged_name(Attempt("readings", 301, 600, since)),
    ]
