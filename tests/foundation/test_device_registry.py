"""The device registry: one row per device, kept from committed batches, written once a second,
level with the readings again after a crash between two writes."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from gateway.buffer import devices as registry_module
from gateway.buffer.store import BufferStore
from gateway.config import GatewayConfig
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.model import RawMessage, joined_devices

T0 = 1_800_000_000.0


def decoder() -> BatchDecoder:
    return BatchDecoder(TopicRouter(GatewayConfig().routes), RedeliveryFilter(), 1024)


def msg(topic: str, payload: bytes, at: float) -> RawMessage:
    return RawMessage(topic, payload, 1, 1, False, False, at, 1)


def registry_rows(store: BufferStore) -> dict[str, dict[str, object]]:
    rows = store.query("SELECT * FROM devices ORDER BY device").to_pylist()
    return {str(r["device"]): r for r in rows}


@pytest.fixture(autouse=True)
def every_commit_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "WRITE_INTERVAL", 0.0)


def test_registry_counts_messages_readings_quarantine_routes_and_availability(
    tmp_path: Path,
) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    dec = decoder()
    batch = dec.decode(
        [
            msg("zigbee2mqtt/kitchen/door", b'{"contact": true, "battery": 91}', T0),
            msg("zigbee2mqtt/kitchen/door/availability", b'{"state":"online"}', T0 + 1),
            msg("zigbee2mqtt/kitchen/door", b'{"contact": tru', T0 + 2),  # quarantined
            msg("zigbee2mqtt/kitchen/door/set", b'{"state": "ON"}', T0 + 3),  # no readings
            msg("sensors/home/boiler/temperature", b"61.5", T0 + 4),
        ]
    )
    store.append(batch, [])
    store.append(dec.decode([msg("sensors/home/boiler/temperature", b"61", T0 + 5)]), [])
    store.write_devices()
    rows = registry_rows(store)
    door = rows["kitchen/door"]
    assert (door["messages"], door["readings"], door["quarantined"]) == (4, 3, 1)
    assert door["availability"] == "online" and door["availability_changes"] == 0
    assert door["routes"] == [
        "zigbee2mqtt/{device...}",
        "zigbee2mqtt/{device...}/availability",
        "zigbee2mqtt/{device...}/set",
    ]
    assert door["first_seen"].timestamp() == T0  # type: ignore[attr-defined]
    assert door["last_seen"].timestamp() == T0 + 3  # type: ignore[attr-defined]
    boiler = rows["boiler"]
    assert (boiler["messages"], boiler["readings"], boiler["availability"]) == (2, 2, None)

    # offline and online again within one batch, then offline: three changes, since the last.
    store.append(
        dec.decode(
            [
                msg("zigbee2mqtt/kitchen/door/availability", b"offline", T0 + 10),
                msg("zigbee2mqtt/kitchen/door/availability", b"online", T0 + 11),
                msg("zigbee2mqtt/kitchen/door/availability", b"online", T0 + 12),
            ]
        ),
        [],
    )
    store.append(
        dec.decode([msg("zigbee2mqtt/kitchen/door/availability", b"offline", T0 + 20)]), []
    )
    store.close()
    store = BufferStore(tmp_path / "b.duckdb")  # close wrote what was pending
    door = registry_rows(store)["kitchen/door"]
    assert (door["availability"], door["availability_changes"]) == ("offline", 3)
    assert door["availability_since"].timestamp() == T0 + 20  # type: ignore[attr-defined]
    assert door["messages"] == 8
    store.close()


def test_registry_is_written_at_most_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "WRITE_INTERVAL", 3600.0)
    store = BufferStore(tmp_path / "b.duckdb")
    dec = decoder()
    store.append(dec.decode([msg("sensors/a/d1/t", b"1", T0)]), [])
    store.write_devices()  # the first write
    store.append(dec.decode([msg("sensors/a/d2/t", b"1", T0)]), [])
    store.write_devices()  # within the hour: not
    store.append(dec.decode([msg("sensors/a/d3/t", b"1", T0)]), [])
    assert set(registry_rows(store)) == {"d1"}
    store.close()
    store = BufferStore(tmp_path / "b.duckdb")
    assert set(registry_rows(store)) == {"d1", "d2", "d3"}
    store.close()


def _commit_then_die(path: str) -> None:
    store = BufferStore(Path(path))
    dec = decoder()
    store.append(dec.decode([msg("zigbee2mqtt/plug/availability", b"online", T0)]), [])
    store.write_devices()
    registry_module.WRITE_INTERVAL = 3600.0  # the next batches are committed, not registered
    store.append(dec.decode([msg("sensors/a/plug/power", b"12.5", T0 + 1)]), [])
    store.append(dec.decode([msg("zigbee2mqtt/plug/availability", b"offline", T0 + 2)]), [])
    os._exit(0)  # no close: as a kill -9 after the commits


def test_a_crash_between_two_writes_is_caught_up_from_the_readings(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    child = multiprocessing.get_context("spawn").Process(target=_commit_then_die, args=(str(path),))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    store = BufferStore(path)
    plug = registry_rows(store)["plug"]
    # The readings after the last write are counted; their messages are not known any more.
    assert plug["readings"] == 3 and plug["messages"] == 1
    assert (plug["availability"], plug["availability_changes"]) == ("offline", 1)
    assert plug["availability_since"].timestamp() == T0 + 2  # type: ignore[attr-defined]
    assert plug["last_seen"].timestamp() == T0 + 2  # type: ignore[attr-defined]
    store.close()
    store = BufferStore(path)  # caught up once, not again
    assert registry_rows(store)["plug"]["readings"] == 3
    store.close()


def test_registry_rows_show_in_the_sql_surface_with_time_types(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    store.append(decoder().decode([msg("sensors/a/d1/t", b"1", time.time())]), [])
    store.write_devices()
    table = store.query("SELECT device, last_seen, routes FROM devices")
    assert table.column("device").to_pylist() == ["d1"]
    kind = table.schema.field("last_seen").type
    assert isinstance(kind, pa.TimestampType) and kind.tz is not None
    store.close()


BRIDGE_DEVICES = b"""[
 {"ieee_address": "0x00124b0018e2b6c2", "type": "Coordinator", "friendly_name": "Coordinator",
  "definition": null, "interview_completed": true, "interviewing": false},
 {"ieee_address": "0x00158d00018255df", "type": "Router", "friendly_name": "kitchen/plug",
  "power_source": "Mains (single phase)", "interviewing": false,
  "definition": {"model": "ZNCZ02LM", "vendor": "Xiaomi", "description": "Mi power plug"}},
 {"ieee_address": "0x0017880104e45517", "type": "EndDevice", "friendly_name": "new-one",
  "interviewing": true, "definition": null}
]"""


def test_bridge_devices_give_each_device_its_model_and_vendor(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    dec = decoder()
    batch = dec.decode([msg("zigbee2mqtt/bridge/devices", BRIDGE_DEVICES, T0)])
    assert batch.quarantine_count == 0
    stored = {
        (d, m, t)
        for d, m, t in zip(
            *(batch.readings.column(c).to_pylist() for c in ("device", "metric", "text")),
            strict=True,
        )
    }
    assert stored == {
        ("Coordinator", "ieee_address", "0x00124b0018e2b6c2"),
        ("kitchen/plug", "model", "ZNCZ02LM"),
        ("kitchen/plug", "vendor", "Xiaomi"),
        ("kitchen/plug", "ieee_address", "0x00158d00018255df"),
        ("kitchen/plug", "power_source", "Mains (single phase)"),
    }
    store.append(batch, [])
    store.append(dec.decode([msg("zigbee2mqtt/kitchen/plug", b'{"power": 12}', T0 + 1)]), [])
    store.write_devices()
    rows = registry_rows(store)
    plug = rows["kitchen/plug"]
    assert (plug["model"], plug["vendor"], plug["readings"], plug["messages"]) == (
        "ZNCZ02LM",
        "Xiaomi",
        5,
        1,  # its own message; the bridge's list is the bridge's
    )
    assert rows["zigbee2mqtt"]["messages"] == 1 and rows["zigbee2mqtt"]["readings"] == 0
    bad = dec.decode([msg("zigbee2mqtt/bridge/devices", b'{"not": "a list"}', T0)])
    assert "zigbee2mqtt_devices decoder: bridge/devices must be a JSON array" in str(
        bad.quarantine.column("reason")[0]
    )
    store.close()


def test_batches_committed_as_one_keep_every_device_and_availability_in_order() -> None:
    dec = decoder()
    first = dec.decode(
        [
            msg("zigbee2mqtt/plug/availability", b"online", T0),
            msg("zigbee2mqtt/door", b"{broken", T0 + 1),
        ]
    )
    second = dec.decode(
        [
            msg("zigbee2mqtt/plug/availability", b"offline", T0 + 2),
            msg("sensors/a/boiler/t", b"60", T0 + 3),
        ]
    )
    joined = joined_devices([first.devices, second.devices])
    assert set(joined) == {"plug", "door", "boiler"}
    plug = joined["plug"]
    assert plug.availability_log == [("online", int(T0 * 1e6)), ("offline", int((T0 + 2) * 1e6))]
    assert (plug.messages, plug.first_seen, plug.last_seen) == (
        2,
        int(T0 * 1e6),
        int((T0 + 2) * 1e6),
    )
    assert joined["door"].quarantined == 1


def test_memory_holds_only_the_devices_heard_from_since_the_last_write(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    dec = decoder()
    for start in range(0, 3000, 1000):
        names = [f"sensors/a/flood-{i}/t" for i in range(start, start + 1000)]
        store.append(dec.decode([msg(topic, b"1", T0) for topic in names]), [])
        assert len(store.registry._pending) == 1000
        store.write_devices()
        assert not store.registry._pending
    assert store.query("SELECT count(*) AS n FROM devices")["n"][0].as_py() == 3000
    store.append(dec.decode([msg("sensors/a/flood-7/t", b"2", T0 + 1)]), [])
    store.write_devices()
    again = registry_rows(store)["flood-7"]
    assert (again["messages"], again["readings"]) == (2, 2)  # read, added to, written back
    store.close()
