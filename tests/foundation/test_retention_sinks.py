"""Retention keeps what any configured sink lacks: enabled sinks by their forwarders' positions,
disabled ones by their cursors in the buffer; a disabled sink gives up its unsent readings only
when `retention.release_disabled_sinks` names it, and what that deletes is counted and logged."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pytest

from gateway.buffer.store import BufferStore
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.model import DECODED_QUARANTINE_SCHEMA, DECODED_READINGS_SCHEMA, IngestBatch
from gateway.sinks.config import KafkaSinkConfig
from gateway.sinks.forwarder import Forwarder
from gateway.sinks.shipping import Shipping

DAY = 86400.0
OLD = time.time() - 10 * DAY  # every reading is past max_age


def readings(n: int, at: float = OLD) -> IngestBatch:
    micros = pa.array([int(at * 1e6)] * n, pa.int64()).view(pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "event_time": micros,
            "ingest_time": micros,
            "device": ["d"] * n,
            "metric": ["m"] * n,
            "value": [float(i) for i in range(n)],
            "text": pa.nulls(n, pa.string()),
            "unit": pa.nulls(n, pa.string()),
            "topic": ["sensors/h/d/m"] * n,
            "tags": pa.nulls(n, pa.string()),
        },
        schema=DECODED_READINGS_SCHEMA,
    )
    return IngestBatch(table, DECODED_QUARANTINE_SCHEMA.empty_table())


def kafka(name: str, *, enabled: bool, streams: list[str] | None = None) -> KafkaSinkConfig:
    data: dict[str, Any] = {
        "type": "kafka",
        "name": name,
        "enabled": enabled,
        "bootstrap_servers": "127.0.0.1:9",
    }
    if streams is not None:
        data["streams"] = streams
    return KafkaSinkConfig.model_validate(data)


LIVE_AND_ARCHIVE = [kafka("live", enabled=True), kafka("archive", enabled=False)]


@dataclass
class RunningForwarder:
    """What retention asks of an enabled sink's forwarder: its confirmed position."""

    position: int
    stream: str = "readings"
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.started.set()


async def no_writer(*_: Any) -> Any:
    raise AssertionError("retention's protection does not write")


@pytest.fixture
def store(tmp_path: Path) -> BufferStore:
    store = BufferStore(tmp_path / "buffer.duckdb", recycle_after=None)
    store.append(readings(1000), [])
    return store


def shipping(
    store: BufferStore,
    configs: list[KafkaSinkConfig],
    cursors: dict[str, int],
    live: int | None = None,
    **options: Any,
) -> Shipping:
    """Disabled sinks' cursors as a past run left them; `live`: an enabled sink's position."""

    def set_cursors(_con: object) -> None:
        for name, position in cursors.items():
            store.set_cursor(name, position)

    store.write(set_cursors)
    result = Shipping(list(configs), "gw1", store, no_writer, **options)
    if live is not None:
        result.forwarders = [cast(Forwarder, RunningForwarder(live))]
    return result


def purge_by_age(store: BufferStore, ship: Shipping, **extra: Any) -> Any:
    return store.purge(
        now=time.time(),
        max_age=DAY,
        max_bytes=1 << 40,
        protected_after=ship.protected_position(),
        drop_unsent=False,
        **extra,
    )


def ids(store: BufferStore) -> tuple[int, int]:
    row = store.query("SELECT coalesce(min(id), 0) AS lo, count(*) AS n FROM readings")
    return int(row["lo"][0].as_py()), int(row["n"][0].as_py())


def test_a_disabled_sinks_unsent_readings_survive_an_age_purge(store: BufferStore) -> None:
    """The enabled sink has all 1,000; the disabled one stopped at 300 when it was switched off."""
    ship = shipping(store, LIVE_AND_ARCHIVE, {"archive": 300}, 1000)
    assert ship.protected_position() == 300
    result = purge_by_age(store, ship)
    assert result.readings == 300 and result.unsent == 0
    assert ids(store) == (301, 700)


def test_a_disabled_sinks_unsent_readings_survive_the_size_cap(store: BufferStore) -> None:
    ship = shipping(store, LIVE_AND_ARCHIVE, {"archive": 300}, 1000)
    for _ in range(20):  # each round deletes the oldest tenth at most
        store.purge(
            now=time.time(),
            max_age=100 * DAY,
            max_bytes=1,
            protected_after=ship.protected_position(),
            drop_unsent=False,
        )
    assert ids(store) == (301, 700)


@pytest.mark.parametrize(
    ("cursors", "kept"), [({"a": 300, "b": 600}, (301, 700)), ({"a": 300}, (1, 1000))]
)
def test_with_every_sink_disabled_their_unsent_readings_still_survive(
    store: BufferStore, cursors: dict[str, int], kept: tuple[int, int]
) -> None:
    """`b` never ran in the second case: its cursor is 0, so it still lacks everything."""
    ship = shipping(store, [kafka("a", enabled=False), kafka("b", enabled=False)], cursors)
    assert not ship.forwarders
    purge_by_age(store, ship)
    assert ids(store) == kept


def test_a_disabled_sink_without_the_readings_stream_protects_nothing(store: BufferStore) -> None:
    ship = shipping(store, [kafka("alerts-only", enabled=False, streams=["alerts"])], {}, None)
    assert ship.protected_position() is None
    assert purge_by_age(store, ship).readings == 1000


def test_a_disabled_sink_released_by_the_config_gives_up_its_readings_counted_and_logged(
    store: BufferStore, caplog: pytest.LogCaptureFixture
) -> None:
    ship = shipping(store, LIVE_AND_ARCHIVE, {"archive": 300}, 1000, release=["archive"])
    assert ship.protected_position() == 1000
    assert ship.released_position() == 300
    result = purge_by_age(store, ship, released_after=ship.released_position())
    assert result.readings == 1000 and result.released == 700 and result.unsent == 0
    assert ids(store) == (0, 0)
    assert store.counters()["purged_released_total"] == 700
    assert "700 readings disabled sinks had not confirmed" in caplog.text


def test_every_sink_disabled_and_released_leaves_nothing_protected(store: BufferStore) -> None:
    configs = [kafka("a", enabled=False), kafka("b", enabled=False)]
    ship = shipping(store, configs, {"a": 300, "b": 600}, release=["a", "b"])
    assert ship.protected_position() is None
    assert ship.released_position() == 300
    store.append(readings(10, at=time.time()), [])  # new: the age limit keeps them
    result = purge_by_age(store, ship, released_after=ship.released_position())
    assert (result.readings, result.released) == (1000, 700)
    assert ids(store) == (1001, 10)
    store.purge(  # the size cap counts what it takes from released sinks too
        now=time.time(),
        max_age=DAY,
        max_bytes=1,
        protected_after=ship.protected_position(),
        drop_unsent=False,
        released_after=ship.released_position(),
    )
    left = ids(store)[1]
    assert left < 10
    assert store.counters()["purged_released_total"] == 700 + 10 - left


def test_releasing_a_sink_the_config_does_not_have_is_refused() -> None:
    sink = {"type": "kafka", "name": "archive", "enabled": False, "bootstrap_servers": "k:9092"}
    typo = {"sinks": [sink], "buffer": {"retention": {"release_disabled_sinks": ["archiv"]}}}
    with pytest.raises(ConfigError) as refused:
        parse_config(typo)
    assert refused.value.problems == [
        "(top level): buffer.retention.release_disabled_sinks: 'archiv' is not the name of a "
        "configured sink"
    ]
    ok = {"sinks": [sink], "buffer": {"retention": {"release_disabled_sinks": ["archive"]}}}
    assert parse_config(ok).buffer.retention.release_disabled_sinks == ["archive"]
