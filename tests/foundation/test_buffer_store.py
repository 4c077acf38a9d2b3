"""The buffer: one transaction per batch, positions, redelivery entries and retention."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.buffer.outbox import rows_after
from gateway.buffer.store import BufferStore
from gateway.config import MqttConfig, RouteConfig
from gateway.errors import BufferStoreError
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.mqtt import MqttIngest
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.model import IngestBatch, RawMessage


def message(
    topic: str,
    payload: bytes,
    mid: int = 1,
    dup: bool = False,
    at: float = 0.0,
    qos: int = 1,
    session: int = 1,
) -> RawMessage:
    return RawMessage(topic, payload, qos, mid, dup, False, at or time.time(), session)


def decoder(redelivery: RedeliveryFilter | None = None, max_payload: int = 1024) -> BatchDecoder:
    router = TopicRouter([RouteConfig(pattern="sensors/{site}/{device}/{metric}")])
    return BatchDecoder(
        router, redelivery if redelivery is not None else RedeliveryFilter(), max_payload
    )


def count(store: BufferStore, table: str) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {table}")["n"][0].as_py())


def test_batch_commits_readings_and_quarantine_with_dense_positions(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    batch = decoder().decode(
        [
            message("sensors/home/k/temperature", b"21.5", mid=1),
            message("sensors/home/k/humidity", b'{"value": 40}', mid=2),
            message("unrouted/topic", b"1", mid=3),
            message("sensors/home/k/temperature", b"{broken", mid=4),
        ]
    )
    result = store.append(batch, [])
    assert result.first_id == 1 and result.readings.num_rows == 2 and result.quarantined == 2
    assert result.readings["id"].to_pylist() == [1, 2]
    assert result.readings["event_id"][0].as_py() == f"{store.buffer_uid}-1"
    reasons = store.query("SELECT topic, reason FROM quarantine ORDER BY id")
    rows = reasons.to_pylist()
    assert rows[0] == {"topic": "unrouted/topic", "reason": "no route matches this topic"}
    assert rows[1]["topic"] == "sensors/home/k/temperature"
    assert rows[1]["reason"].startswith("auto decoder: malformed JSON: ")
    second = store.append(decoder().decode([message("sensors/h/k/t", b"1", mid=5)]), [])
    assert second.first_id == 3
    store.close()


def test_positions_continue_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    store = BufferStore(path)
    store.append(
        decoder().decode([message("sensors/h/d/m", b"1"), message("sensors/h/d/m", b"2")]), []
    )
    uid = store.buffer_uid
    store.close()
    reopened = BufferStore(path)
    assert reopened.buffer_uid == uid
    assert reopened.append(decoder().decode([message("sensors/h/d/m", b"3")]), []).first_id == 3
    reopened.close()


def test_oversized_payload_is_quarantined_with_its_head(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    big = b"9" * 100_000
    batch = decoder(max_payload=1024).decode([message("sensors/h/d/m", big)])
    store.append(batch, [])
    row = store.query(
        "SELECT payload_bytes, octet_length(payload) AS kept, reason FROM quarantine",
    )
    assert row["payload_bytes"][0].as_py() == 100_000
    assert row["kept"][0].as_py() == 4096
    assert "exceeds max_payload_bytes 1024" in row["reason"][0].as_py()
    store.close()


def test_redelivered_message_is_recognised_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    store = BufferStore(path)
    redelivery = RedeliveryFilter(store.inflight_entries())
    first = [message("sensors/h/d/m", b"7", mid=11), message("sensors/h/d/m", b"7", mid=12)]
    batch = decoder(redelivery).decode(first)
    rows, _ = redelivery.remember(batch.messages)
    store.append(batch, rows, redelivery.confirmed_upto)
    store.close()  # crash before the acks reached the broker

    store = BufferStore(path)
    redelivery = RedeliveryFilter(store.inflight_entries())
    again = decoder(redelivery).decode(
        [
            message("sensors/h/d/m", b"7", mid=11, dup=True, session=2),  # redelivery
            message("sensors/h/d/m", b"7", mid=12, dup=True, session=2),  # redelivery
            message("sensors/h/d/m", b"7", mid=13, session=2),  # a new reading, same bytes
        ]
    )
    assert again.duplicates == 2 and again.readings.num_rows == 1
    store.close()


def test_a_redelivery_in_the_same_batch_as_its_first_delivery_is_recognised() -> None:
    """After a reconnect the broker redelivers what we had not acked yet, while the first
    deliveries still wait for their commit, often in the same batch."""
    redelivery = RedeliveryFilter()
    batch = decoder(redelivery).decode(
        [
            message("sensors/h/d/m", b"1", mid=21, session=1),
            message("sensors/h/d/m", b"2", mid=22, session=1),
            message("sensors/h/d/m", b"1", mid=21, dup=True, session=2),
            message("sensors/h/d/m", b"2", mid=22, dup=True, session=2),
            message("sensors/h/d/m", b"3", mid=22, dup=True, session=2),  # other bytes: kept
        ]
    )
    assert batch.duplicates == 2
    assert batch.readings.column("value").to_pylist() == [1.0, 2.0, 3.0]
    rows, _ = redelivery.remember(batch.messages)
    assert sorted((mid, topic) for mid, topic, _, _ in rows) == [
        (21, "sensors/h/d/m"),
        (22, "sensors/h/d/m"),
        (22, "sensors/h/d/m"),
    ]


def test_readings_from_retained_messages_are_marked_until_retention_purges_them(
    tmp_path: Path,
) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    now = time.time()
    retained = RawMessage("sensors/h/d/m", b"5", 1, 1, False, True, now - 86400 * 10, 1)
    old = decoder().decode([message("sensors/h/d/m", b"4", at=now - 86400 * 10), retained])
    assert old.retained == [1]
    store.append(old, [])
    new = decoder().decode(
        [
            message("sensors/h/d/m", b"6", at=now),
            RawMessage("sensors/h/d/m", b"7", 1, 2, False, True, now, 1),
        ]
    )
    store.append(new, [])
    marked = "SELECT id FROM retained_readings ORDER BY id"
    assert store.query(marked)["id"].to_pylist() == [2, 4]
    store.purge(now=now, max_age=86400, max_bytes=10**12, protected_after=None, drop_unsent=False)
    assert store.query(marked)["id"].to_pylist() == [4]
    store.close()


def test_same_bytes_under_a_reused_packet_id_are_a_new_reading() -> None:
    redelivery = RedeliveryFilter()
    decode = decoder(redelivery).decode
    batch = decode([message("sensors/h/d/m", b"open", mid=5)])
    redelivery.remember(batch.messages)
    # The broker reuses packet id 5 for a new message with the same bytes (not a DUP) ...
    batch = decode([message("sensors/h/d/m", b"open", mid=5)])
    assert batch.readings.num_rows == 1
    # ... and a DUP of a packet id we never committed is a first delivery, kept too.
    assert decode([message("sensors/h/d/m", b"open", mid=6, dup=True)]).readings.num_rows == 1


def test_redelivery_entries_go_once_the_broker_confirmed_the_acks() -> None:
    redelivery = RedeliveryFilter()
    decode = decoder(redelivery).decode
    _, first = redelivery.remember(decode([message("sensors/h/d/m", b"x", mid=9)]).messages)
    _, second = redelivery.remember(decode([message("sensors/h/d/m", b"y", mid=10)]).messages)
    # Unconfirmed (the connection dropped before the acks arrived): still a redelivery.
    assert decode([message("sensors/h/d/m", b"x", mid=9, dup=True)]).duplicates == 1
    redelivery.confirm(first)
    # Batch 1's acks arrived: packet id 9 may carry a new message; batch 2 still waits.
    assert decode([message("sensors/h/d/m", b"x", mid=9, dup=True)]).readings.num_rows == 1
    assert decode([message("sensors/h/d/m", b"y", mid=10, dup=True)]).duplicates == 1
    assert second == first + 1


def test_a_redelivery_still_waiting_when_the_acks_are_confirmed_is_recognised() -> None:
    """Right after a reconnect the broker resends what it has not seen acked; our acks and the
    barrier behind them reach it after that. So the barrier's PUBACK can arrive while those
    redeliveries still wait in the pending list behind a full batch: their entries must stay
    until the writer has taken them. Drives the ingest's paho callbacks by hand, in the order
    the network thread would call them."""
    ingest = MqttIngest(MqttConfig(host="127.0.0.1", port=1883, client_id="gw"), max_pending=100)
    redelivery = RedeliveryFilter()
    decode = decoder(redelivery).decode
    connack = paho.ConnectFlags(session_present=True)  # a live connection: its messages get acks
    success = ReasonCode(PacketTypes.CONNACK, "Success")
    ingest._on_connect(ingest._client, None, connack, success, None)

    def deliver(mid: int, payload: bytes, dup: bool = False) -> None:
        msg = paho.MQTTMessage(mid, b"sensors/h/d/m")
        msg.payload, msg.qos, msg.dup = payload, 1, dup
        ingest._on_message(ingest._client, None, msg)

    def commit() -> IngestBatch:  # one batch of the gateway's pipeline
        messages = ingest.take(1)
        batch = decode(messages)
        _, batch.number = redelivery.remember(batch.messages)
        redelivery.confirm(ingest.acks_confirmed())
        ingest.ack(messages, batch.number)
        return batch

    deliver(5, b"1")
    assert commit().readings.num_rows == 1  # committed, acked, its barrier sent
    deliver(6, b"2")
    deliver(5, b"1", dup=True)  # sent by the broker before it read our ack for packet 5
    (barrier,) = ingest._barriers
    puback = PacketTypes.PUBACK
    ingest._on_publish(ingest._client, None, barrier, ReasonCode(puback), Properties(puback))  # type: ignore[no-untyped-call]
    assert commit().readings.column("value").to_pylist() == [2.0]
    assert commit().duplicates == 1
    assert ingest.acks_confirmed() == 1  # every message received before the PUBACK is taken


class CommitReportsFailure:
    """A connection whose next commit goes through but raises, as a commit whose WAL write
    reached the file before an error (not one that invalidates the database)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.armed = True

    def commit(self) -> None:
        self.con.commit()
        if self.armed:
            self.armed = False
            raise duckdb.IOException("IO Error: injected after the commit")

    def __getattr__(self, name: str) -> object:
        return getattr(self.con, name)


def test_a_commit_that_raised_but_reached_the_file_is_not_written_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer retries a failed commit with the same batch; the store looks in the file
    whether the failed attempt landed, also when the handle was not reopened in between."""
    store = BufferStore(tmp_path / "b.duckdb", recycle_after=None)
    store.append(decoder().decode([message("sensors/h/d/m", b"1", mid=1)]), [])
    monkeypatch.setattr(store, "_con", CommitReportsFailure(store._con))
    batch = decoder().decode([message("sensors/h/d/m", b"2", mid=2), message("x/y", b"3", mid=3)])
    with pytest.raises(BufferStoreError, match="commit failed"):
        store.append(batch, [])
    result = store.append(batch, [])  # the writer's retry
    assert result.first_id == 2 and result.quarantined == 1
    assert store.append(decoder().decode([message("sensors/h/d/m", b"4", mid=4)]), []).first_id == 3
    values = store.query("SELECT value FROM readings ORDER BY id")["value"].to_pylist()
    assert values == [1.0, 2.0, 4.0]
    assert count(store, "quarantine") == 1
    assert store.counters()["readings_total"] == 3
    store.close()


def test_retention_purges_old_sent_readings_and_keeps_unsent(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "b.duckdb")
    now = time.time()
    old = [message("sensors/h/d/m", str(i).encode(), at=now - 86400 * 10) for i in range(10)]
    store.append(decoder().decode(old), [])
    store.append(decoder().decode([message("sensors/h/d/m", b"new", at=now)]), [])
    # Sinks have confirmed up to position 4: only 1..4 may go.
    result = store.purge(
        now=now, max_age=86400, max_bytes=10**12, protected_after=4, drop_unsent=False
    )
    assert result.readings == 4
    assert count(store, "readings") == 7
    assert store.counters()["purged_readings_total"] == 4
    store.close()


def test_readonly_open_of_a_locked_buffer_says_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    store = BufferStore(path)
    code = (
        "from gateway.buffer.connection import connect; from pathlib import Path;"
        f"connect(Path({str(path)!r}), read_only=True)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "held by another process" in result.stderr
    store.close()


def test_a_file_that_is_not_a_buffer_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.duckdb"
    path.write_bytes(b"not a database" * 1000)
    with pytest.raises(BufferStoreError, match=r"junk.duckdb: cannot open"):
        BufferStore(path)
    assert duckdb  # the driver is the real one


def test_content_identities_are_found_after_a_purge_left_a_result_open(tmp_path: Path) -> None:
    """Retention's DELETEs read their count with fetchone(), which leaves the result open; the
    identity lookup that follows on the same connection must still work (it crashed the
    gateway's writer once)."""
    store = BufferStore(tmp_path / "b.duckdb")
    now = time.time()
    batch = decoder().decode([message("sensors/h/d/m", b"1", at=now)])
    batch.identities = [(42, now + 60.0)]
    store.append(batch, [])
    store.purge(now=now, max_age=86400, max_bytes=10**12, protected_after=None, drop_unsent=False)
    assert store.known_identities([42, 43], now) == {42}
    assert store.known_identities([42], now + 61.0) == set()  # expired
    store.close()


def test_reads_after_a_position_find_the_rows_past_a_gap(tmp_path: Path) -> None:
    """A sink reads the next rows by position range first (positions are dense); where
    retention left a gap wider than a batch, the rows past it are still found, in order."""
    store = BufferStore(tmp_path / "b.duckdb")
    now = time.time()
    old = [message("sensors/h/d/m", str(i).encode(), at=now - 86400 * 10) for i in range(6)]
    store.append(decoder().decode(old), [])
    fresh = [message("sensors/h/d/m", str(i).encode(), at=now) for i in range(6, 10)]
    store.append(decoder().decode(fresh), [])
    store.purge(now=now, max_age=86400, max_bytes=10**12, protected_after=6, drop_unsent=False)
    with store.reading() as con:
        assert rows_after(con, "readings", 0, None, 3)["id"].to_pylist() == [7, 8, 9]
        assert rows_after(con, "readings", 0, 8, 3)["id"].to_pylist() == [7, 8]
        assert rows_after(con, "readings", 7, None, 2)["id"].to_pylist() == [8, 9]
        assert rows_after(con, "readings", 9, None, 5)["id"].to_pylist() == [10]
        assert rows_after(con, "readings", 10, None, 5).num_rows == 0
    store.close()
