"""Bytes read ahead from a connection that then drops are never read as the next connection's.

The ingest client reads the socket in large chunks and serves paho's small reads from memory
(gateway/ingest/mqtt.py, `_IngestClient._sock_recv`). When a connection ends while packets still
wait in that memory, they belong to the connection that is gone: read on the next one, they
would come before its CONNACK, under packet ids of another connection.

A scripted broker sends, in one write: message 1, a packet of a reserved type (a protocol
error: the client drops the connection) and message 2. Message 2 is read ahead but never
parsed. On the next connection the broker redelivers 1 and sends 3: the buffer holds 1 and 3,
each once, and 2 not at all (this broker never sends it again)."""

from __future__ import annotations

import struct
from pathlib import Path

from faulthelpers import buffer_values
from scripted_broker import ScriptedBroker, gateway_config, packet, utf8

from gateway.testing import GatewayThread, wait_until

TOPIC = "sensors/plant/dev1/seq"


def qos1_publish(mid: int, payload: bytes) -> bytes:
    return packet(0x32, utf8(TOPIC) + struct.pack("!H", mid) + payload)


def test_packets_read_ahead_of_a_dropped_connection_are_discarded(
    scripted: ScriptedBroker, tmp_path: Path
) -> None:
    config = gateway_config(scripted, tmp_path / "buffer.duckdb", "gw-read-ahead")
    gw = GatewayThread(config).start()
    try:
        first = scripted.connection()
        scripted.session_present = True
        reserved_type = packet(0x00, b"")  # packet type 0 is reserved: a protocol error
        first.sock.sendall(qos1_publish(1, b"1") + reserved_type + qos1_publish(2, b"2"))

        second = scripted.connection()
        first.drop()
        second.publish(1, TOPIC, b"1", dup=True)
        second.publish(3, TOPIC, b"3")
        assert second.wait_acked(3, times=1), "message 3 was not committed and acked"
        assert second.wait_acked(1, times=1), "the redelivery of 1 was not acked"
        second.ack_publishes()
        assert wait_until(lambda: gw.gateway.stats.readings >= 2)
        second.drop()
    finally:
        gw.stop()
    assert buffer_values(config.buffer.path) == {1: 1, 3: 1}
