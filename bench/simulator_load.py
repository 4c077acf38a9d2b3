"""Load-mode benchmark: `edge-gateway simulate load` against a private Mosquitto, QoS 0 and 1.

The ceiling is the same generator writing into a loopback sink that answers CONNECT and discards
everything: what the publishing processes can produce on this machine when no broker works. For
QoS 0 the broker's own count of received PUBLISH packets ($SYS) is read back, so the figure is
what Mosquitto took in, not only what the generator wrote; QoS 1 counts acknowledged messages.

Last line: `simulator_load qos0_msgs_per_s=<n> qos1_msgs_per_s=<n> ceiling_msgs_per_s=<n>`
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.services.mosquitto import Mosquitto
from simulators.load import LoadSpec, LoadSummary, run_load


def _discard(conn: socket.socket) -> None:
    with conn:
        if not conn.recv(65536):
            return
        conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
        while conn.recv(1 << 20):
            pass


def discard_sink(port_out: mp.Queue) -> None:  # type: ignore[type-arg]
    server = socket.create_server(("127.0.0.1", 0))
    port_out.put(server.getsockname()[1])
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_discard, args=(conn,), daemon=True).start()


def broker_received(broker: Mosquitto, at_least: int, timeout: float = 15.0) -> int:
    """Mosquitto's own count of PUBLISH packets received, once it has caught up."""
    latest = [0]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="sys-reader")

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        latest[0] = int(msg.payload)

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/publish/messages/received")
    client.connect(broker.host, broker.port)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while latest[0] < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    return latest[0]


def show(label: str, summary: LoadSummary) -> None:
    per_second = ", ".join(f"{n:,}" for _, n, _ in summary.per_second)
    print(
        f"{label}: {summary.sent:,} in {summary.seconds:.1f}s = {summary.rate:,.0f} msg/s, "
        f"{summary.errors} errors; per second: {per_second}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    ports: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    sink = ctx.Process(target=discard_sink, args=(ports,), daemon=True)
    sink.start()
    sink_port = ports.get(timeout=30)
    try:
        ceiling = run_load(
            LoadSpec("127.0.0.1", sink_port, args.devices, 0, args.processes, args.seconds)
        )
    finally:
        sink.terminate()
        sink.join()
    show("ceiling (discard sink)", ceiling)

    with (
        tempfile.TemporaryDirectory() as tmp,
        Mosquitto(workdir=Path(tmp), extra_config="sys_interval 1") as broker,
    ):
        qos0 = run_load(
            LoadSpec(broker.host, broker.port, args.devices, 0, args.processes, args.seconds)
        )
        show("mosquitto QoS 0", qos0)
        received = broker_received(broker, qos0.sent)
        print(
            f"mosquitto counted {received:,} PUBLISH packets received "
            f"({received / qos0.seconds:,.0f} msg/s)"
        )
        qos1 = run_load(
            LoadSpec(broker.host, broker.port, args.devices, 0, args.processes, args.seconds, qos=1)
        )
        show("mosquitto QoS 1 (acknowledged)", qos1)
    qos0_rate = min(qos0.rate, received / qos0.seconds)
    print(
        f"simulator_load qos0_msgs_per_s={qos0_rate:.0f} qos1_msgs_per_s={qos1.rate:.0f} "
        f"ceiling_msgs_per_s={ceiling.rate:.0f}"
    )


if __name__ == "__main__":
    main()
