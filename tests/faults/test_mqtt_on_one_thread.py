"""The ingest calls into paho from one thread only, the event loop's: no lock of ours and no
mutex of paho's is ever waited for, so the lock-order deadlock of a network thread against the
acks (a PUBACK handled while a batch is acked) cannot come back.

Driven through a real gateway and a real Mosquitto: QoS 1 messages committed and acked with
their barriers, a rule's command published, the broker killed (SIGKILL) and restarted on its
port, and more messages after the reconnect. Every paho entry point the ingest drives records
the thread it ran on."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    ReconnectConfig,
    RulesConfig,
    Subscription,
)
from gateway.ingest.mqtt import _IngestClient
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until

ENTRY_POINTS = (
    "loop_read",
    "_packet_handle",
    "_packet_write",
    "_packet_queue",
    "publish",
    "loop_misc",
)

RULE = """
rules:
  - id: hot
    select: {metric: temp}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "cmd/{device}/fan", payload: "{value}"}
"""


def test_every_paho_call_runs_on_the_event_loop_thread(
    broker: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (client, thread) per entry point: other gateways of the session may run meanwhile
    threads: dict[str, set[tuple[int, int]]] = {name: set() for name in ENTRY_POINTS}

    def recording(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: _IngestClient, *args: Any, **kwargs: Any) -> Any:
            threads[name].add((id(self), threading.get_ident()))
            return method(self, *args, **kwargs)

        return wrapper

    for name in ENTRY_POINTS:
        monkeypatch.setattr(_IngestClient, name, recording(name, getattr(_IngestClient, name)))

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULE)
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-one-thread",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
            reconnect=ReconnectConfig(min_delay=0.1, max_delay=0.5),
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb", max_batch=50),
        api=ApiConfig(enabled=False),
        rules=RulesConfig(files=[rules]),
    )
    with GatewayThread(config) as gw:
        loop_thread = gw._thread.ident
        ingest = gw.gateway.ingest
        assert ingest is not None
        ours = id(ingest._client)
        commands: list[bytes | bytearray] = []
        listener = publisher(broker.host, broker.port, client_id="cmd-listener")
        listener.on_message = lambda c, u, m: commands.append(m.payload)
        listener.subscribe("cmd/#", qos=1)

        def send(values: range) -> None:
            pub = publisher(broker.host, broker.port, client_id="one-thread-pub")
            # 29 then 31, 29, ...: every other reading crosses the rule's threshold
            infos = [
                pub.publish(f"sensors/h/d{i % 5}/temp", str(29 + 2 * (i // 5 % 2)), qos=1)
                for i in values
            ]
            assert wait_until(lambda: all(i.is_published() for i in infos), timeout=30)
            pub.disconnect()
            pub.loop_stop()

        send(range(0, 500))
        assert wait_until(lambda: gw.committed_readings() == 500, timeout=30)
        assert wait_until(lambda: len(commands) > 0, timeout=10)  # the rule's command went out
        listener.loop_stop()
        broker.kill()  # SIGKILL: no goodbye on the socket
        assert wait_until(lambda: not ingest.connected.is_set(), timeout=30)
        broker.start()
        assert wait_until(ingest.connected.is_set, timeout=30)
        send(range(500, 1000))
        assert wait_until(lambda: gw.committed_readings() >= 1000, timeout=30)
    for name, calls in threads.items():
        seen = {thread for client, thread in calls if client == ours}
        assert seen, f"paho's {name} was never called: the test drove nothing"
        assert seen == {loop_thread}, f"paho's {name} ran on threads {seen}, not the loop's"
