"""An MQTT 3.1.1 broker the test steps through packet by packet, for interleavings a real broker
cannot be steered into on demand (which packet id it sends, and which acks it has read before
it goes down). It speaks only what the gateway's client sends: CONNECT, SUBSCRIBE, PUBLISH,
PUBACK, PINGREQ and DISCONNECT. Everything else in the fault suite runs against real Mosquitto.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
from pathlib import Path

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    ReconnectConfig,
    RouteConfig,
    Subscription,
)
from gateway.testing import wait_until

CONNECT, PUBLISH, PUBACK, SUBSCRIBE, PINGREQ = 1, 3, 4, 8, 12


def packet(first_byte: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


def utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class Connection:
    """One client connection: the client's packets as (type, flags, body), in order. CONNECT,
    SUBSCRIBE and PINGREQ are answered as they come; PUBLISH only when the test says."""

    def __init__(self, sock: socket.socket, session_present: bool) -> None:
        self.sock = sock
        self.session_present = session_present
        self.packets: queue.Queue[tuple[int, int, bytes]] = queue.Queue()
        self.pubacks: list[int] = []  # packet ids the client acked, in order
        self.connected = threading.Event()  # CONNECT answered
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read_exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _read(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                first = self._read_exactly(1)[0]
                length, shift = 0, 0
                while True:
                    byte = self._read_exactly(1)[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = self._read_exactly(length)
                kind, flags = first >> 4, first & 0x0F
                if kind == PUBACK:
                    self.pubacks.append(struct.unpack("!H", body[:2])[0])
                elif kind == CONNECT:
                    self.sock.sendall(packet(0x20, bytes([int(self.session_present), 0])))
                    self.connected.set()
                elif kind == SUBSCRIBE:
                    self._suback(body)
                elif kind == PINGREQ:
                    self.sock.sendall(packet(0xD0, b""))
                self.packets.put((kind, flags, body))

    def _suback(self, body: bytes) -> None:
        mid, topics, granted = body[:2], body[2:], bytearray()
        while topics:
            size = struct.unpack("!H", topics[:2])[0]
            granted.append(topics[2 + size])
            topics = topics[3 + size :]
        self.sock.sendall(packet(0x90, mid + bytes(granted)))

    def publish(self, mid: int, topic: str, payload: bytes, *, dup: bool = False) -> None:
        """A QoS 1 message under packet id `mid`."""
        first = 0x30 | (0x08 if dup else 0) | 0x02
        self.sock.sendall(packet(first, utf8(topic) + struct.pack("!H", mid) + payload))

    def ack_publishes(self) -> None:
        """Answer every QoS 1 publish the client sent so far (its ack barriers) with a PUBACK."""
        while True:
            try:
                kind, flags, body = self.packets.get_nowait()
            except queue.Empty:
                return
            if kind == PUBLISH and flags & 0x06:
                size = struct.unpack("!H", body[:2])[0]
                self.sock.sendall(packet(0x40, body[2 + size : 4 + size]))

    def wait_acked(self, mid: int, times: int, timeout: float = 10.0) -> bool:
        return wait_until(lambda: self.pubacks.count(mid) >= times, timeout)

    def drop(self) -> None:
        """Go down as a crashed broker would: whatever the client sent since is never read."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class ScriptedBroker:
    """Listens on 127.0.0.1 and a free port; `connection()` is the next client connection, once
    its CONNECT was answered (with `session_present` as set when it came)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._server.getsockname()[:2]
        self.session_present = False
        self._connections: queue.Queue[Connection] = queue.Queue()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self._server.accept()
                self._connections.put(Connection(sock, self.session_present))

    def connection(self, timeout: float = 20.0) -> Connection:
        connection = self._connections.get(timeout=timeout)
        assert connection.connected.wait(timeout), "the client sent no CONNECT"
        return connection

    def close(self) -> None:
        self._server.close()


def gateway_config(broker: ScriptedBroker, buffer: Path, client_id: str) -> GatewayConfig:
    """A gateway on the scripted broker: MQTT 3.1.1, quick reconnects, commits every 10 ms,
    one route without a dedup window."""
    return GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            protocol="3.1.1",
            client_id=client_id,
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
            reconnect=ReconnectConfig(min_delay=0.1, max_delay=0.5),
        ),
        buffer=BufferConfig(path=buffer, flush_interval=0.01),
        routes=[RouteConfig(pattern="sensors/{site}/{device}/{metric}")],  # no dedup_window
        api=ApiConfig(enabled=False),
    )
