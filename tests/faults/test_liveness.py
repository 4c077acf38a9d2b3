"""The liveness guard against a stall that crashes nothing (gateway/liveness.py): `/healthz` turns
503 naming the part that stopped (the writer thread, the event loop) and 200 again once it
moves on; systemd's watchdog gets READY=1, then WATCHDOG=1 keepalives only while every part makes
progress. A real gateway against a real Mosquitto, stalled on purpose from the test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    ReconnectConfig,
    Subscription,
)
from gateway.liveness import SystemdNotifier
from gateway.services.mosquitto import Mosquitto
from gateway.sqlclient import query, running_api
from gateway.status import fetch_status
from gateway.testing import GatewayThread, publisher, wait_until

# Short, so the tests are quick; still well above what a loaded 2-core box delays a tick by.
STALL_AFTER = 3.0
WAIT = STALL_AFTER + 30.0  # generous: a stall is detected within STALL_AFTER plus a tick


def config(tmp_path: Path, broker: Mosquitto, client_id: str) -> GatewayConfig:
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=client_id,
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
            reconnect=ReconnectConfig(min_delay=0.1, max_delay=0.5),
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb", flush_interval=0.02),
        api=ApiConfig(port=0),
    )


def short_stall(gateway: Gateway) -> None:
    gateway.liveness.stall_after = STALL_AFTER


def health(gw: GatewayThread) -> tuple[int, dict[str, Any]]:
    assert gw.gateway.api_address is not None
    host, port = gw.gateway.api_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def stalled(gw: GatewayThread) -> dict[str, float]:
    status, body = health(gw)
    parts: dict[str, float] = body.get("stalled", {})
    assert (status == 503) == bool(parts), body
    return parts


@pytest.fixture
def gateway(tmp_path: Path, broker: Mosquitto) -> Iterator[GatewayThread]:
    with GatewayThread(config(tmp_path, broker, "gw-liveness"), setup=short_stall) as gw:
        assert wait_until(lambda: health(gw)[0] == 200, WAIT)
        yield gw


def test_a_stuck_writer_turns_healthz_unhealthy_and_healthy_again(
    gateway: GatewayThread, broker: Mosquitto, tmp_path: Path
) -> None:
    release = threading.Event()
    stuck = gateway.gateway._writer.submit(release.wait, 120)  # a call that does not return
    pub = publisher(broker.host, broker.port)
    try:
        assert wait_until(lambda: "writer" in stalled(gateway), WAIT)
        status, body = health(gateway)
        assert status == 503 and body["healthy"] is False and body["status"] == "stalled"
        assert body["stalled"]["writer"] >= STALL_AFTER
        assert set(body["stalled"]) == {"writer"}  # the event loop still moves
        # `edge-gateway sql` and `status` still find the stalled gateway (the file is its own).
        buffer = tmp_path / "buffer.duckdb"
        assert running_api(buffer) is not None
        assert query(buffer, "SELECT 42 AS answer").to_pylist() == [{"answer": 42}]
        assert fetch_status(buffer)["running"] is True
        pub.publish("sensors/site/dev/temp", b"21.5", qos=1).wait_for_publish(10)
    finally:
        release.set()
        pub.loop_stop()
    stuck.result(10)
    assert wait_until(lambda: health(gateway)[0] == 200, WAIT)
    assert health(gateway)[1]["healthy"] is True
    assert wait_until(lambda: gateway.committed_readings() == 1, WAIT)  # it caught up


def test_a_stuck_mqtt_callback_turns_healthz_unhealthy_naming_the_event_loop_and_healthy_again(
    gateway: GatewayThread, broker: Mosquitto
) -> None:
    """The MQTT connection is served on the event loop: a callback that never returns stops the
    loop, and /healthz (on the API's thread) names the event loop, not the writer it can no
    longer probe."""
    ingest = gateway.gateway.ingest
    assert ingest is not None
    pub = publisher(broker.host, broker.port)
    try:
        # paho takes this mutex around every callback: the message published below leaves the
        # event loop waiting for it, as a callback that never returns would.
        with ingest._client._in_callback_mutex:
            pub.publish("sensors/site/dev/temp", b"21.5", qos=1).wait_for_publish(10)
            assert wait_until(lambda: "event_loop" in stalled(gateway), WAIT)
            status, body = health(gateway)
            assert status == 503 and body["stalled"]["event_loop"] >= STALL_AFTER
            assert set(body["stalled"]) == {"event_loop"}
    finally:
        pub.loop_stop()
    assert wait_until(lambda: health(gateway)[0] == 200, WAIT)
    assert wait_until(lambda: gateway.committed_readings() == 1, WAIT)


class NotifyListener:
    """A stand-in for systemd's notify socket: collects every datagram sent to it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append(data.decode())

    def count(self, message: str) -> int:
        with self._lock:
            return self.messages.count(message)

    def first(self) -> str:
        with self._lock:
            return self.messages[0]

    def seen(self, predicate: Callable[[str], bool]) -> bool:
        with self._lock:
            return any(predicate(m) for m in self.messages)

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    directory = tempfile.mkdtemp(prefix="notify-")  # a unix socket's path must be short
    listener = NotifyListener(os.path.join(directory, "notify.sock"))
    try:
        yield listener
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_the_watchdog_gets_keepalives_only_while_every_part_makes_progress(
    tmp_path: Path,
    broker: Mosquitto,
    notify_socket: NotifyListener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = notify_socket.sock.getsockname()
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # keepalives every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = notify_socket
    with GatewayThread(config(tmp_path, broker, "gw-watchdog"), setup=short_stall) as gw:
        liveness = gw.gateway.liveness
        assert wait_until(lambda: listener.count("WATCHDOG=1") >= 3, WAIT)
        assert listener.first() == "READY=1\nSTATUS=running"  # before any keepalive

        def received_all_sent() -> bool:
            return listener.count("WATCHDOG=1") == liveness.keepalives

        release = threading.Event()
        stuck = gw.gateway._writer.submit(release.wait, 120)
        try:
            assert wait_until(lambda: liveness.withheld >= 1, WAIT)
            assert wait_until(received_all_sent, WAIT)
            before, withheld = listener.count("WATCHDOG=1"), liveness.withheld
            assert wait_until(lambda: liveness.withheld >= withheld + 3, WAIT)
            assert wait_until(received_all_sent, WAIT)
            assert listener.count("WATCHDOG=1") == before  # none while the writer is stuck
            assert listener.seen(lambda m: m.startswith("STATUS=stalled: writer "))
        finally:
            release.set()
        stuck.result(10)
        assert wait_until(lambda: listener.count("WATCHDOG=1") > before, WAIT)  # fed again
        assert listener.seen(lambda m: m == "STATUS=running")  # the recovery, for systemctl
    assert wait_until(lambda: listener.seen(lambda m: m.startswith("STOPPING=1")), WAIT)


def test_the_notifier_speaks_to_abstract_sockets_and_ignores_another_process_watchdog() -> None:
    name = f"@edge-gateway-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name[1:])
        receiver.settimeout(10)
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"})
        assert notifier is not None and notifier.watchdog_usec == 2_000_000
        assert notifier.notify("READY=1", "STATUS=running")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=running"
        notifier.close()
        env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "2000000"}
        ours = SystemdNotifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid())})
        theirs = SystemdNotifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
        assert ours is not None and ours.watchdog_usec == 2_000_000
        assert theirs is not None and theirs.watchdog_usec is None  # notifies, keeps no watchdog
        ours.close()
        theirs.close()
    assert SystemdNotifier.from_environ({}) is None
    assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1"}) is None
    gone = SystemdNotifier(f"@edge-gateway-nobody-{uuid.uuid4().hex}")
    assert gone.notify("WATCHDOG=1") is False  # logged once; never raises into the gateway
    gone.close()
