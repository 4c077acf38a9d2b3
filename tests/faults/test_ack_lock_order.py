"""The ingest's acks and paho's network thread take their locks in one order: an ack never holds
a lock of ours while it calls into paho, and paho's callbacks never wait for one of ours.

The interleaving that froze the gateway, driven step by step: paho's network thread handles a
PUBACK (holding its out-message mutex) while the writer acks a batch. Before the fix, the ack
held `_barrier_lock` while publishing the barrier (which waits for that mutex), and the PUBACK
callback waited for `_barrier_lock`: ingest, sinks and rules all stopped, nothing crashed."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import MqttConfig, Subscription
from gateway.ingest.mqtt import MqttIngest
from gateway.model import RawMessage
from gateway.services.mosquitto import Mosquitto
from gateway.testing import wait_until

PAHO_CLIENT = str(Path("paho") / "mqtt" / "client.py")


def inside_paho_publish(thread: threading.Thread) -> bool:
    """True while `thread` is inside paho's Client.publish (where it waits for the mutex)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "publish" and code.co_filename.endswith(PAHO_CLIENT):
            return True
        frame = frame.f_back
    return False


def test_an_ack_while_paho_handles_a_puback_does_not_freeze_the_ingest(broker: Mosquitto) -> None:
    ingest = MqttIngest(
        MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-lock-order",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        )
    )
    ingest.start()
    frozen = False
    try:
        assert wait_until(ingest.connected.is_set)
        client = ingest._client
        committed = [RawMessage("sensors/a/b/c", b"1", 1, 7, False, False, 0.0, ingest.connects)]
        network_holds_mutex, puback_handled = threading.Event(), threading.Event()

        def network_thread_handling_a_puback() -> None:
            with client._out_message_mutex:  # as paho's _handle_pubackcomp holds it
                network_holds_mutex.set()
                assert wait_until(lambda: inside_paho_publish(acking), timeout=5)
                puback = PacketTypes.PUBACK
                ingest._on_publish(client, None, 1, ReasonCode(puback), Properties(puback))  # type: ignore[no-untyped-call]
            puback_handled.set()

        network = threading.Thread(target=network_thread_handling_a_puback, daemon=True)
        acking = threading.Thread(target=ingest.ack, args=(committed, 1), daemon=True)
        network.start()
        assert network_holds_mutex.wait(5)
        acking.start()
        network.join(10)
        acking.join(10)
        frozen = not puback_handled.is_set()
        assert not frozen, "paho's PUBACK callback is stuck behind the ingest's lock"
        assert not acking.is_alive(), "the ack is stuck"
    finally:
        if not frozen:  # else both threads are stuck for good, and stopping would be too
            ingest.stop()
