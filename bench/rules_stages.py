"""Where a command's time goes inside the gateway: bench/rules.py's live test (the gateway built
as `edge-gateway run` builds it, in its own process, 100 rules, every reading buffered), with
the probe's path timestamped at each hand-off.

    recv     the event loop reads the probe's bytes from the socket
    message  the ingest has parsed the PUBLISH packet and hands it on (`_on_packet`)
    take     the pipeline has taken it from the pending list
    decode   the pipeline starts decoding the batch holding it
    rules    the rules start on the decoded readings (before the Arrow table is built)
    publish  the command is handed to the MQTT client
    send     paho writes the command to the socket

Prints the median and p99 of each step and of recv -> send, beside the whole publish -> command
latency and the broker's own round trip measured in the same run. Run: python bench/rules_stages.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rules as bench  # bench/rules.py: the live test this one instruments

STAGES = ("recv", "message", "take", "decode", "rules", "publish", "send")
PROBE = b"probe/level"
COMMAND = bench.COMMAND_TOPIC


def _instrument(marks: list[tuple[str, float]]) -> None:
    """Wrap the functions at each hand-off so they note when the probe passes."""
    import paho.mqtt.client as paho

    from gateway.ingest.decoding import BatchDecoder, BeforeTables
    from gateway.ingest.mqtt import MqttIngest
    from gateway.model import IngestBatch, RawMessage, ReadingColumns
    from gateway.rules.service import RulesService

    clock = time.perf_counter
    recv, send = paho.Client._sock_recv, paho.Client._sock_send
    command = COMMAND.encode()

    def sock_recv(self: paho.Client, size: int) -> bytes:
        data = recv(self, size)
        if PROBE in data:
            marks.append(("recv", clock()))
        return data

    def sock_send(self: paho.Client, buf: bytes | bytearray) -> int:
        if command in buf:
            marks.append(("send", clock()))
        return send(self, buf)

    decode = BatchDecoder.decode

    def timed_decode(
        self: BatchDecoder, messages: list[RawMessage], before_tables: BeforeTables | None = None
    ) -> IngestBatch:
        if any(m.topic.endswith("probe/level") for m in messages):
            marks.append(("decode", clock()))
        return decode(self, messages, before_tables)

    evaluate = RulesService.evaluate

    def timed_evaluate(self: RulesService, columns: ReadingColumns, retained: list[int]) -> None:
        if "probe" in columns.device:
            marks.append(("rules", clock()))
        evaluate(self, columns, retained)

    on_packet, take = MqttIngest._on_packet, MqttIngest.take

    def timed_on_packet(
        self: MqttIngest,
        topic_bytes: bytes,
        payload: bytes,
        qos: int,
        mid: int,
        dup: bool,
        retain: bool,
        identifiers: tuple[int, ...] = (),
    ) -> None:
        if topic_bytes.endswith(PROBE):
            marks.append(("message", clock()))
        on_packet(self, topic_bytes, payload, qos, mid, dup, retain, identifiers)

    def timed_take(self: MqttIngest, max_count: int, max_bytes: int | None = None) -> Any:
        taken = take(self, max_count, max_bytes)
        if any(m.topic.endswith("probe/level") for m in taken):
            marks.append(("take", clock()))
        return taken

    publish = MqttIngest.publish

    def timed_publish(
        self: MqttIngest, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> None:
        if topic == COMMAND:
            marks.append(("publish", clock()))
        publish(self, topic, payload, qos, retain)

    paho.Client._sock_recv = sock_recv  # type: ignore[method-assign,assignment]
    paho.Client._sock_send = sock_send  # type: ignore[method-assign]
    BatchDecoder.decode = timed_decode  # type: ignore[method-assign]
    RulesService.evaluate = timed_evaluate  # type: ignore[method-assign]
    MqttIngest.publish = timed_publish  # type: ignore[method-assign]
    MqttIngest._on_packet = timed_on_packet  # type: ignore[method-assign]
    MqttIngest.take = timed_take  # type: ignore[method-assign]


def _report(marks: list[tuple[str, float]]) -> None:
    probes: list[dict[str, float]] = []
    for stage, at in marks:
        if stage == "recv":
            probes.append({"recv": at})
        elif probes and stage not in probes[-1]:
            probes[-1][stage] = at
    whole = [p for p in probes if len(p) == len(STAGES)]
    print(f"stages of {len(whole)} probes (ms, median / p99):", flush=True)
    for a, b in [*itertools.pairwise(STAGES), ("recv", "send")]:
        ms = sorted((p[b] - p[a]) * 1e3 for p in whole)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(f"  {a:>8} -> {b:<8} {statistics.median(ms):7.3f} / {p99:7.3f}", flush=True)


def run_gateway(config: Any, stop: Any, ready: Any) -> None:
    marks: list[tuple[str, float]] = []
    _instrument(marks)
    from gateway.testing import GatewayThread

    with GatewayThread(config):
        ready.set()
        stop.wait()
    _report(marks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--probe-rate", type=float, default=50.0)
    parser.add_argument("--load", type=float, default=1000.0, help="background msg/s")
    args = parser.parse_args()
    bench.run_gateway = run_gateway  # the live test starts this in the gateway's process
    latencies, raw = bench.live_latency(args.probes, args.probe_rate, args.load)
    p50, p99 = bench.percentile(latencies, 0.5), bench.percentile(latencies, 0.99)
    print(
        f"publish -> command: p50 {p50:.2f} ms, p99 {p99:.2f} ms; broker round trip "
        f"p50 {bench.percentile(raw, 0.5):.2f} ms, p99 {bench.percentile(raw, 0.99):.2f} ms; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
