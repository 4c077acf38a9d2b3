"""A broker that reuses a packet id while our ack of the earlier message is still on the wire,
then goes down before reading that ack, redelivers the earlier message: it is recognised.

Mosquitto 2.0.11 does this while a backlog past 65,535 drains (see test_packet_id_wrap.py), but
when it happens there cannot be steered, so a scripted broker plays it packet by packet:

  1. message A under id 7; the gateway commits it, acks it and sends its ack barrier;
  2. before reading that ack the broker sends message B under id 7 (its window is past 65,535);
  3. the gateway commits and acks B; the broker goes down having read neither ack;
  4. on reconnect (session kept) it redelivers both, A then B, as DUPs.

Before the fix the gateway took B as proof that A's ack had arrived and forgot A: A was stored
twice. An id now counts as in flight until a barrier confirms the broker read the ack."""

from __future__ import annotations

from pathlib import Path

from faulthelpers import buffer_values
from scripted_broker import ScriptedBroker, gateway_config

from gateway.testing import GatewayThread

TOPIC = "sensors/plant/dev1/seq"


def test_an_id_reused_before_the_broker_read_our_ack_does_not_double_the_earlier_message(
    scripted: ScriptedBroker, tmp_path: Path
) -> None:
    config = gateway_config(scripted, tmp_path / "buffer.duckdb", "gw-scripted")
    gw = GatewayThread(config).start()
    try:
        first_connection = scripted.connection()
        scripted.session_present = True  # from now on the broker has our session
        first_connection.publish(7, TOPIC, b"1")
        assert first_connection.wait_acked(7, times=1), "A was not committed and acked"
        first_connection.publish(7, TOPIC, b"2")  # our ack of A is unread: the id is reused
        assert first_connection.wait_acked(7, times=2), "B was not committed and acked"
        first_connection.drop()  # neither ack read, no barrier answered

        second = scripted.connection()
        second.publish(7, TOPIC, b"1", dup=True)
        second.publish(7, TOPIC, b"2", dup=True)
        assert second.wait_acked(7, times=2), "the redeliveries were not acked"
        second.ack_publishes()
    finally:
        gw.stop()
    assert buffer_values(config.buffer.path) == {1: 1, 2: 1}
    assert gw.gateway.ingest is not None and gw.gateway.ingest.ids_reused >= 1
