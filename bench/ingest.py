"""Ingest benchmark: the gateway draining a QoS 1 backlog into its buffer vs a bare paho subscriber.

Both consumers drain the same kind of backlog from the same private Mosquitto: the broker first
queues N small JSON readings (QoS 1, many devices) for the consumer's persistent session, then the
consumer connects and the clock runs until the last message is received (bare paho, auto-ack) or
committed to the buffer and acked (the gateway). Each consumer runs in its own process, so the
RSS figure is the gateway's own.

Last line: `ingest gateway_msgs_per_s=<n> ceiling_msgs_per_s=<n> ratio=<x> rss_mb=<n>`
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, Subscription
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until

TOPIC_FILTER = "sensors/#"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def create_session(port: int, client_id: str) -> None:
    """Subscribe once with a persistent session, then leave: the broker queues for us."""
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_subscribe = lambda *args: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(TOPIC_FILTER, qos=1)
    done.wait(10)
    client.disconnect()
    client.loop_stop()


def publish_share(port: int, start: int, count: int, devices: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{start}")
    client.max_inflight_messages_set(2000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    for i in range(start, start + count):
        device = i % devices
        payload = orjson.dumps({"value": round(20 + (i % 100) / 10, 1), "unit": "°C", "seq": i})
        infos.append(
            client.publish(f"sensors/site{device % 4}/dev{device}/temperature", payload, qos=1)
        )
        # paho numbers unacknowledged messages with 16-bit ids: keep fewer than 65,535 out.
        if len(infos) >= 20_000 and len(infos) % 10_000 == 0:
            infos[-20_000].wait_for_publish(120)
    if infos:
        infos[-1].wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def load_backlog(port: int, total: int, devices: int, processes: int = 2) -> float:
    share = total // processes
    started = time.perf_counter()
    workers = [
        mp.Process(target=publish_share, args=(port, p * share, share, devices))
        for p in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return share * processes / (time.perf_counter() - started)


def bare_paho(port: int, total: int, result: mp.Queue) -> None:  # type: ignore[type-arg]
    received = 0
    done = threading.Event()
    first: list[float] = []

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        nonlocal received
        if not first:
            first.append(time.perf_counter())
        received += 1
        if received >= total:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho", clean_session=False)
    client.on_message = on_message
    started = time.perf_counter()
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(600)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    result.put((received / elapsed, rss_mb()))


def gateway_drain(port: int, total: int, workdir: str, result: mp.Queue) -> None:  # type: ignore[type-arg]
    config = GatewayConfig(
        mqtt=MqttConfig(
            host="127.0.0.1",
            port=port,
            client_id="bench-gateway",
            subscriptions=[Subscription(topic=TOPIC_FILTER, qos=1)],
        ),
        buffer=BufferConfig(path=Path(workdir) / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        log_level="warning",
    )
    gw = GatewayThread(config)
    started = time.perf_counter()
    gw.start()
    wait_until(lambda: gw.gateway.stats.readings >= total, timeout=600, interval=0.01)
    elapsed = time.perf_counter() - started
    readings = gw.gateway.stats.readings
    gw.stop()
    result.put((readings / elapsed, rss_mb()))


def measure(target: str, port: int, total: int, workdir: str) -> tuple[float, float]:
    result: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    if target == "paho":
        process = mp.Process(target=bare_paho, args=(port, total, result))
    else:
        process = mp.Process(target=gateway_drain, args=(port, total, workdir, result))
    process.start()
    rate, rss = result.get(timeout=900)
    process.join(60)
    return float(rate), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="alternate runs of each consumer")
    args = parser.parse_args()
    mp.set_start_method("spawn")
    best_gateway = best_paho = 0.0
    gateway_rss = 0.0
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(workdir=Path(tmp) / "broker") as broker:
        for round_no in range(args.rounds):
            for target, client_id in (("paho", "bench-paho"), ("gateway", "bench-gateway")):
                create_session(broker.port, client_id)
                pub_rate = load_backlog(broker.port, args.messages, args.devices)
                workdir = Path(tmp) / f"{target}-{round_no}"
                workdir.mkdir()
                rate, rss = measure(target, broker.port, args.messages, str(workdir))
                print(
                    f"round {round_no + 1} {target:8s} {rate:10,.0f} msg/s  "
                    f"rss {rss:6.1f} MB  (backlog published at {pub_rate:,.0f} msg/s)",
                    flush=True,
                )
                if target == "paho":
                    best_paho = max(best_paho, rate)
                else:
                    best_gateway = max(best_gateway, rate)
                    gateway_rss = max(gateway_rss, rss)
    ratio = best_gateway / best_paho if best_paho else 0.0
    print(
        f"ingest gateway_msgs_per_s={best_gateway:.0f} ceiling_msgs_per_s={best_paho:.0f} "
        f"ratio={ratio:.2f} rss_mb={gateway_rss:.0f}"
    )


if __name__ == "__main__":
    main()
