"""The ingest reads MQTT packets straight from the bytes it received (`_IngestClient.loop_read`):
whatever way TCP cuts the stream, every packet comes out whole, once, in order, and what the
fast path does not read itself goes to paho's own handler. A rule's QoS 0 command is written
the same way (`publish_at_once`), as paho's own decoder reads it.

The socket is a stand-in that hands out the stream in chunks of chosen sizes and then says
EAGAIN, as a non-blocking socket does."""

from __future__ import annotations

import contextlib
import random
import socket
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, cast

import paho.mqtt.client as paho
import pytest
from paho.mqtt._packet import decode_publish
from paho.mqtt.client import _ConnectionState  # type: ignore[attr-defined]
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from gateway.ingest.mqtt import _IngestClient

Packet = tuple[bytes, bytes, int, int, bool, bool, tuple[int, ...]]


class ChunkedSocket:
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = deque(chunks)
        self.closed = False

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.popleft()
        if len(chunk) > size:
            self.chunks.appendleft(chunk[size:])
            chunk = chunk[:size]
        return chunk

    def send(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 127, n >> 7
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


def publish(
    topic: bytes,
    payload: bytes,
    qos: int = 1,
    mid: int = 1,
    *,
    dup: bool = False,
    retain: bool = False,
    properties: bytes | None = None,  # MQTT 5: the encoded properties (without their length)
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if properties is not None:
        body += varint(len(properties)) + properties
    body += payload
    header = 0x30 | qos << 1 | (8 if dup else 0) | (1 if retain else 0)
    return bytes([header]) + varint(len(body)) + body


def client(protocol: MQTTProtocolVersion, chunks: Iterable[bytes]) -> _IngestClient:
    c = _IngestClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="reader-test",
        protocol=protocol,
        manual_ack=True,
    )
    c._sock = cast(Any, ChunkedSocket(chunks))
    return c


def socket_of(c: _IngestClient) -> ChunkedSocket:
    return cast(ChunkedSocket, c._sock)


def drain(c: _IngestClient) -> list[MQTTErrorCode]:
    """Call loop_read as the event loop would: while the socket or the read buffer holds bytes."""
    sock = socket_of(c)
    codes = []
    while c._sock is not None and (sock.chunks or c.buffered()):
        codes.append(c.loop_read())
    return codes


def cut(stream: bytes, sizes: list[int]) -> list[bytes]:
    chunks, at, i = [], 0, 0
    while at < len(stream):
        size = sizes[i % len(sizes)]
        chunks.append(stream[at : at + size])
        at += size
        i += 1
    return chunks


SIZES = [0, 1, 2, 126, 127, 128, 129, 16_383, 16_384, 70_000, 600_000]


@pytest.mark.parametrize(
    "sizes",
    [[1], [2, 3, 5], [7, 1, 300], [1000], [65_536, 3], [256 * 1024], [10_000_000]],
    ids=lambda s: "chunks " + "/".join(map(str, s)),
)
def test_every_packet_comes_out_whole_once_in_order_however_the_stream_is_cut(
    sizes: list[int],
) -> None:
    rng = random.Random(len(sizes))
    sent: list[Packet] = []
    stream = b""
    for n in range(120):
        size = SIZES[n % len(SIZES)] if n < len(SIZES) else rng.randrange(0, 300)
        qos = n % 2
        topic = f"sensors/dev{n}/t".encode()
        payload = bytes(rng.randrange(256) for _ in range(min(size, 50))) * (size // 50 + 1)
        payload = payload[:size]
        mid = 65_535 - n if qos else 0
        dup, retain = n % 3 == 0, n % 5 == 0
        sent.append((topic, payload, qos, mid, dup, retain, ()))
        stream += publish(topic, payload, qos, mid, dup=dup, retain=retain)
    c = client(MQTTProtocolVersion.MQTTv311, cut(stream, sizes))
    got: list[Packet] = []
    c.on_packet = lambda *packet: got.append(packet)
    codes = drain(c)
    assert set(codes) == {MQTTErrorCode.MQTT_ERR_SUCCESS}
    assert got == sent
    assert not c.buffered() and c._parts == []


def test_mqtt5_publishes_without_properties_are_read_in_place_and_with_them_by_paho() -> None:
    content_type = b"\x03" + len(b"text/plain").to_bytes(2, "big") + b"text/plain"
    stream = (
        publish(b"a/1", b"plain", qos=1, mid=7, properties=b"")
        + publish(b"a/2", b"typed", qos=1, mid=8, properties=content_type)
        + publish(b"a/3", b"plain again", qos=0, properties=b"")
    )
    c = client(MQTTProtocolVersion.MQTTv5, cut(stream, [5]))
    order: list[tuple[str, bytes]] = []
    c.on_packet = lambda topic, payload, *rest: order.append(("in place", payload))

    def on_message(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        assert message.properties is not None
        assert cast(Any, message.properties).ContentType == "text/plain"
        order.append(("paho", bytes(message.payload)))

    c.on_message = on_message
    assert set(drain(c)) == {MQTTErrorCode.MQTT_ERR_SUCCESS}
    assert order == [("in place", b"plain"), ("paho", b"typed"), ("in place", b"plain again")]


def test_mqtt5_subscription_identifiers_are_read_in_place() -> None:
    def identifiers(*numbers: int) -> bytes:
        return b"".join(b"\x0b" + varint(n) for n in numbers)

    stream = (
        publish(b"a/1", b"one", qos=1, mid=7, properties=identifiers(1))
        + publish(b"a/2", b"two", qos=1, mid=8, properties=identifiers(3, 200_000))
        + publish(b"a/3", b"", qos=0, properties=identifiers(2))
    )
    c = client(MQTTProtocolVersion.MQTTv5, cut(stream, [3]))
    got: list[Packet] = []
    c.on_packet = lambda *packet: got.append(packet)
    c.on_message = lambda *_: pytest.fail("paho should not have read these")
    assert set(drain(c)) == {MQTTErrorCode.MQTT_ERR_SUCCESS}
    assert got == [
        (b"a/1", b"one", 1, 7, False, False, (1,)),
        (b"a/2", b"two", 1, 8, False, False, (3, 200_000)),
        (b"a/3", b"", 0, 0, False, False, (2,)),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        bytes([0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # a remaining length of five bytes
        bytes([0xD0, 0x01, 0x00]),  # PINGRESP with a body
        publish(b"", b"x", qos=1),  # MQTT 3.1.1 forbids an empty topic
        bytes([0xF0, 0x00]),  # no such packet type
    ],
    ids=["length of five bytes", "pingresp with a body", "empty topic", "unknown type"],
)
def test_a_malformed_packet_ends_the_connection_after_what_came_before(bad: bytes) -> None:
    good = publish(b"sensors/ok", b"1", qos=1, mid=1)
    c = client(MQTTProtocolVersion.MQTTv311, [good + bad + publish(b"sensors/late", b"2")])
    sock = socket_of(c)
    got: list[bytes] = []
    c.on_packet = lambda topic, *rest: got.append(topic)
    codes = drain(c)
    assert codes[-1] != MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == [b"sensors/ok"]  # nothing after the bad packet is taken for a message
    assert c._sock is None and sock.closed


def test_a_connection_closed_by_the_broker_mid_packet_is_lost_not_read_as_a_packet() -> None:
    whole = publish(b"sensors/a", b"x" * 1000, qos=1, mid=3)
    c = client(MQTTProtocolVersion.MQTTv311, [whole[:500], b""])  # b"": the peer closed
    got: list[bytes] = []
    c.on_packet = lambda topic, *rest: got.append(topic)
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS  # half a packet: wait for more
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert got == [] and c._sock is None and not c.buffered()


@contextlib.contextmanager
def connected_pair(protocol: MQTTProtocolVersion) -> Iterator[tuple[_IngestClient, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    c = _IngestClient(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="writer-test",
        protocol=protocol,
        manual_ack=True,
    )
    c._sock = ours
    c._state = _ConnectionState.MQTT_CS_CONNECTED
    with ours, theirs:
        yield c, theirs


def read_publish(stream: bytes, protocol: MQTTProtocolVersion) -> tuple[bytes, bytes, bool, int]:
    """Decode one PUBLISH with paho's own decoder: topic, payload, retain, bytes it took."""
    length, shift, at = 0, 0, 1
    while True:
        byte = stream[at]
        at += 1
        length |= (byte & 127) << shift
        shift += 7
        if byte < 128:
            break
    packet = decode_publish(stream[0], stream[at : at + length], protocol)
    assert packet.qos == 0 and not packet.dup
    return packet.topic, bytes(packet.payload), packet.retain, at + length


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5])
def test_a_qos0_command_is_written_at_once_as_paho_would_read_it(
    protocol: MQTTProtocolVersion,
) -> None:
    with connected_pair(protocol) as (c, theirs):
        assert c.publish_at_once("commands/fan", b"ON", retain=False)
        assert c.publish_at_once("commands/heat", b"x" * 300, retain=True)  # a 2-byte length
        stream = theirs.recv(65_536)
        topic, payload, retain, used = read_publish(stream, protocol)
        assert (topic, payload, retain) == (b"commands/fan", b"ON", False)
        assert read_publish(stream[used:], protocol)[:3] == (b"commands/heat", b"x" * 300, True)


def test_a_command_paho_must_handle_is_left_to_it() -> None:
    with connected_pair(MQTTProtocolVersion.MQTTv311) as (c, _):
        assert not c.publish_at_once("commands/+/fan", b"ON", retain=False)  # paho refuses it
        c._out_packet.append(
            {"command": 0x30, "mid": 0, "qos": 0, "pos": 0, "to_process": 1, "packet": b"0",
             "info": None}
        )  # fmt: skip
        assert not c.publish_at_once("commands/fan", b"ON", retain=False)  # order: after the queue
        c._out_packet.clear()
        c._state = _ConnectionState.MQTT_CS_CONNECTION_LOST
        assert not c.publish_at_once("commands/fan", b"ON", retain=False)  # paho's "no connection"


def test_what_a_full_socket_did_not_take_is_written_by_paho_after() -> None:
    with connected_pair(MQTTProtocolVersion.MQTTv311) as (c, theirs):
        payload = bytes(range(256)) * 40_000  # 10 MB: more than the socket buffers hold
        assert c.publish_at_once("commands/big", payload, retain=False)
        assert len(c._out_packet) == 1  # the rest waits for paho's writer
        received = bytearray()
        theirs.setblocking(False)
        while c._out_packet or len(received) < len(payload):
            c.loop_write()
            with contextlib.suppress(BlockingIOError):
                received += theirs.recv(1 << 20)
        topic, got, _, used = read_publish(bytes(received), MQTTProtocolVersion.MQTTv311)
        assert topic == b"commands/big" and got == payload and used == len(received)
