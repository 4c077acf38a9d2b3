"""MQTT ingest with paho-mqtt on the event loop: a persistent session, manual acks after commit,
and reconnects.

The connection lives on the gateway's event loop, the thread that decodes and runs the rules: the
loop reads the socket when it is readable (paho appends each message to a pending list, and
`on_received` then hands them to the pipeline), and paho writes acks and rule commands to the
socket at once, from the same thread. Only the blocking part of a connect (TCP and the TLS
handshake) runs in a worker thread, and it touches nothing the loop uses. The pipeline takes the
messages (`take`), has them committed, then acks them (`ack`). The broker keeps unacked QoS 1
messages, so a crash between receive and commit loses nothing.

Acks go only to the connection that delivered the message. A message committed after its
connection dropped stays unacked: with the session kept, the broker redelivers it (DUP) and the
redelivery is acked; with the session lost, its packet id now names another message, and
acking it would ack that one before it is committed.

A broker must not reuse a packet id while the message under it is unacked, but Mosquitto before
2.0.13 does while a queued backlog drains. An id counts as in flight from receipt until an ack
barrier confirms the broker read our ack of it; a message under an id in flight is marked
`id_reused`, and the redelivery filter then keeps what it knows of both.

Locks: none of ours. Every call into paho and every callback from it happens on the event loop's
thread, so paho's own mutexes (`_in_callback_mutex`, `_out_message_mutex`, ...) are only ever
taken by that thread, and nothing waits for them. Counters read from the API's thread are
single values, read whole under the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.client import PUBACK, PUBLISH
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import MqttConfig
from gateway.errors import BrokerError
from gateway.model import RawMessage
from gateway.topics import matcher

logger = logging.getLogger(__name__)

# Jitter from a generator of its own: drawing from the global `random` would move the state that
# the code around the gateway (a seeded simulation, a property-based test) relies on.
_JITTER = random.Random()


_PUBACK_HEADER = bytes([PUBACK, 2])
_READ_SIZE = 256 * 1024  # bytes asked of the socket at once (see _IngestClient.loop_read)
_OWNERS_CACHE = 100_000  # topics whose first matching subscription is remembered
_AGAIN = MQTTErrorCode.MQTT_ERR_AGAIN
# Packets parsed per turn of the event loop before the pipeline gets its turn: a rule's reading
# waits behind at most this many (~15 us each), and acks and commands go out in between.
_READ_BURST = 256
_TICK = 1.0  # seconds between keepalive checks (paho's loop_misc)


class _IngestClient(paho.Client):
    """paho's client driven by an external event loop (paho-mqtt 2.x internals), with jittered
    reconnects, large socket reads and a batch ack path.

    paho doubles its reconnect delay without jitter, so a fleet of gateways behind one broker
    that restarts would reconnect in lockstep; spreading the attempts avoids that herd.
    """

    backoff_min = 0.5
    backoff_max = 30.0
    _attempt = 0
    # Bytes received and not handled yet: _read[_read_at:], then _parts while a packet is not
    # whole (`_need` more bytes wanted before it may be).
    _read = b""
    _read_at = 0
    _need = 0
    _parts_size = 0
    # A QoS 0/1 PUBLISH read in place: topic (bytes), payload, qos, packet id, dup, retain.
    # topic, payload, qos, mid, dup, retain, the subscription identifiers (MQTT 5) or ()
    on_packet: Callable[[bytes, bytes, int, int, bool, bool, tuple[int, ...]], None] | None = None
    hold = False  # backpressure: stop parsing packets (MqttIngest pauses the reader)
    opened: Any = None  # the socket `open_socket` connected, for `reconnect` to use
    on_write_interest: Callable[[bool], None] | None = None  # bytes wait to be written, or not

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parts: list[bytes] = []

    def reconnect_delay(self) -> float:
        """Seconds to wait before the next connect attempt: doubling, capped, jittered."""
        ceiling = min(self.backoff_max, self.backoff_min * 2.0**self._attempt)
        self._attempt += 1
        return ceiling / 2 + _JITTER.uniform(0, ceiling / 2)

    def open_socket(self) -> Any:
        """TCP connect and the TLS handshake: blocking, so it runs in a worker thread. It reads
        the connection settings only; `reconnect()` then takes the socket on the event loop."""
        return super()._create_socket()

    def _create_socket(self) -> Any:
        sock, self.opened = self.opened, None
        if sock is None:
            raise ConnectionError("no socket was opened for this connect")
        return sock

    def buffered(self) -> bool:
        """Bytes wait where the event loop's selector cannot see them: a whole packet read
        ahead, or bytes inside TLS."""
        if self._need == 0 and self._read_at < len(self._read):
            return True
        pending = getattr(self._sock, "pending", None)
        return pending is not None and pending() > 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has (one system call, up to 256 KiB) and handle the whole
        packets in it, at most `_READ_BURST` (the pipeline, acks and commands get their turn in
        between).

        paho reads each packet in two or three small reads (type, length, rest), a system call
        each, and then once more until the socket says EAGAIN. Here PUBLISH packets at QoS 0
        and 1 are parsed straight from the bytes read (`on_packet`), without paho's message
        object; every other packet, and a PUBLISH with MQTT 5 properties or anything odd, goes
        to paho's own handler as if paho had read it."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._need or self._read_at >= len(self._read):
            rc = self._fill()
            if rc is not None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS if rc == _AGAIN else self._loop_rc_handle(rc)
        for _ in range(_READ_BURST):
            if self.hold or self._need:
                break
            rc = self._next_packet()
            if rc is None:
                break  # the rest of the packet is still to come
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._loop_rc_handle(rc)
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN  # the packet ended the connection
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _fill(self) -> MQTTErrorCode | None:
        """One read of the socket; None when bytes came."""
        try:
            data = self._sock_recv(_READ_SIZE)
        except BlockingIOError:
            return _AGAIN
        except OSError as exc:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", exc)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST  # the broker closed the connection
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        if self._read_at >= len(self._read):
            self._read, self._read_at, self._need = data, 0, 0
            return None
        # Part of a packet is here: collect the chunks until it is whole (a large packet is
        # joined once, not once per chunk).
        self._parts.append(data)
        self._parts_size += len(data)
        if self._parts_size >= self._need:
            self._read = b"".join([self._read[self._read_at :], *self._parts])
            self._read_at, self._need = 0, 0
            self._parts, self._parts_size = [], 0
        return None

    def _next_packet(self) -> MQTTErrorCode | None:
        """Handle the packet at the read position; None (and `_need` set) if it is not whole."""
        data, at = self._read, self._read_at
        end = len(data)
        if at >= end:
            return None
        header = data[at]
        length, shift, i = 0, 0, at + 1
        while True:
            if i >= end:
                self._need = 1
                return None
            byte = data[i]
            i += 1
            length |= (byte & 127) << shift
            if byte < 128:
                break
            shift += 7
            if shift > 21:  # at most 4 bytes of remaining length
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
        if end - i < length:
            self._need = length - (end - i)
            return None
        self._read_at = i + length
        qos_bits = header & 0x06  # 0: QoS 0, 2: QoS 1, 4: QoS 2, 6: invalid
        if header & 0xF0 == PUBLISH and qos_bits < 4 and self._publish(header, data, i, i + length):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._handle(header, data[i : i + length])

    def _publish(self, header: int, data: bytes, start: int, end: int) -> bool:
        """A QoS 0 or 1 PUBLISH read in place; False leaves it to paho (MQTT 5 properties, or
        a packet paho must refuse)."""
        if end - start < 2:
            return False
        topic_end = start + 2 + (data[start] << 8 | data[start + 1])
        qos = (header >> 1) & 3
        at = topic_end + 2 if qos else topic_end
        if topic_end == start + 2 or at > end:
            return False  # an empty topic (MQTT 3.1.1 forbids it; 5 needs an alias) or short
        subscriptions: tuple[int, ...] = ()
        if self._protocol == paho.MQTTv5:
            if at >= end:
                return False
            if data[at] == 0:
                at += 1
            else:
                read = _subscription_identifiers(data, at, end)
                if read is None:
                    return False  # other properties (a topic alias, user properties): paho's
                subscriptions, at = read
        mid = data[topic_end] << 8 | data[topic_end + 1] if qos else 0
        assert self.on_packet is not None
        self.on_packet(
            data[start + 2 : topic_end],
            data[at:end],
            qos,
            mid,
            bool(header & 8),
            bool(header & 1),
            subscriptions,
        )
        return True

    def _handle(self, header: int, body: bytes) -> MQTTErrorCode:
        """A packet for paho's own handlers, set up as paho's reader leaves it."""
        self._in_packet = {
            "command": header,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(b""),
            "to_process": 0,
            "pos": 0,
        }
        return rc

    def publish_at_once(self, topic: str, payload: bytes, retain: bool) -> bool:
        """A QoS 0 PUBLISH (a rule's command) written to the socket now, without paho's message
        bookkeeping: paho's path costs ~7 us on a warm cache and several times that on a cold
        one, and calls `on_publish` for it. False leaves it to paho: not connected, packets
        queued ahead of it (order holds), or a topic paho must refuse."""
        if self._sock is None or self._out_packet or not self.is_connected():
            return False
        name = topic.encode()
        if not name or len(name) > 65_535 or "+" in topic or "#" in topic:
            return False
        v5 = b"\x00" if self._protocol == paho.MQTTv5 else b""  # no properties
        body = len(name).to_bytes(2, "big") + name + v5 + payload
        packet = bytes([PUBLISH | retain]) + _remaining_length(len(body)) + body
        try:
            sent = self._sock_send(packet)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False  # paho's own write meets the error and ends the connection
        if sent < len(packet):  # the socket took part of it: paho writes the rest
            self._out_packet.append(
                {
                    "command": PUBLISH,
                    "mid": 0,
                    "qos": 0,
                    "pos": sent,
                    "to_process": len(packet) - sent,
                    "packet": packet,
                    "info": paho.MQTTMessageInfo(0),
                }
            )
            self._call_socket_register_write()
        with self._msgtime_mutex:
            self._last_msg_out = time.monotonic()
        return True

    def _sock_close(self) -> None:
        # what the old connection sent means nothing now
        self._read, self._read_at, self._need = b"", 0, 0
        self._parts, self._parts_size = [], 0
        super()._sock_close()

    # paho's external-loop hooks, called where paho wants the socket watched for writing. The
    # public `on_socket_register_write` callback would do, but with it set paho never writes
    # from `publish()` itself, and a rule's command would wait a turn of the loop.
    def _call_socket_register_write(self) -> None:
        if self._sock is None or self._registered_write:
            return
        self._registered_write = True
        if self.on_write_interest is not None:
            self.on_write_interest(True)

    def _call_socket_unregister_write(self, sock: Any = None) -> None:
        if not self._registered_write:
            return
        self._registered_write = False
        if self.on_write_interest is not None:
            self.on_write_interest(False)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho matches every topic against its (empty) table of per-filter callbacks before
        # calling on_message; that costs ~10% of ingest at 30k msg/s, so go straight there.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def ack_qos1_batch(self, mids: list[int]) -> None:
        """Queue PUBACKs for many QoS 1 messages and write them.

        A PUBACK without a reason code means success in both MQTT 3.1.1 and 5.
        """
        out = self._out_packet
        for mid in mids:
            out.append(
                {
                    "command": PUBACK,
                    "mid": mid,
                    "qos": 0,
                    "pos": 0,
                    "to_process": 4,
                    "packet": _PUBACK_HEADER + mid.to_bytes(2, "big"),
                    "info": None,
                }
            )
        self.loop_write()

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        """paho's TLS handshake, closing the socket when it fails.

        paho leaves the socket open on a failed handshake (an untrusted broker certificate, a
        refused client certificate); reconnecting forever would leak a descriptor per attempt.
        Host names are checked by the context (`check_hostname`), unless `tls.insecure`.
        """
        context = self._ssl_context
        if context is None:
            raise ValueError("TLS is not set up")
        ssl_sock = context.wrap_socket(
            tcp_sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        try:
            ssl_sock.settimeout(self._connect_timeout)
            ssl_sock.do_handshake()
        except BaseException:
            ssl_sock.close()
            raise
        return ssl_sock


def _varint(data: bytes, at: int, end: int) -> tuple[int, int] | None:
    """An MQTT variable byte integer at `at`: its value and where it ends, None if cut off."""
    value, shift = 0, 0
    while at < end and shift <= 21:
        byte = data[at]
        at += 1
        value |= (byte & 127) << shift
        if byte < 128:
            return value, at
        shift += 7
    return None


def _subscription_identifiers(data: bytes, at: int, end: int) -> tuple[tuple[int, ...], int] | None:
    """A PUBLISH's MQTT 5 properties at `at` when they hold only subscription identifiers
    (property 0x0B, what the gateway's own subscriptions add): the identifiers and where the
    payload starts. None for anything else, which paho then reads."""
    read = _varint(data, at, end)
    if read is None:
        return None
    length, at = read
    stop = at + length
    if stop > end:
        return None
    found: list[int] = []
    while at < stop:
        if data[at] != 0x0B:
            return None
        read = _varint(data, at + 1, stop)
        if read is None:
            return None
        value, at = read
        found.append(value)
    return tuple(found), stop


def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        byte, n = n & 127, n >> 7
        out.append(byte | 128 if n else byte)
        if not n:
            return bytes(out)


def _close_opened(opening: asyncio.Future[Any]) -> None:
    """A connect finished after nobody wanted it any more (stop): close what it opened."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class MqttIngest:
    """Subscribes, queues received messages for the pipeline, and acks them once committed.

    `start()` and every other method are called on the event loop (the API's thread only reads
    counters); `start` connects in the background and keeps reconnecting until `stop`.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        max_pending: int = 200_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_batch_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        on_received: Callable[[], None] | None = None,
    ) -> None:
        """`on_received` is called after each read of the socket that received messages (out
        of paho's callbacks, so what it publishes is written at once)."""
        self._config = config
        self._on_received = on_received or (lambda: None)
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_batch_bytes = max_batch_bytes
        self._clock = clock
        self._pending: list[RawMessage] = []
        self._pending_bytes = 0
        # Each subscription's identifier (MQTT 5) and matcher, and per topic the first that
        # matches it: the copy delivered for that one is the message (`_copy`).
        self._matchers = [(n, matcher(s.topic)) for n, s in enumerate(config.subscriptions, 1)]
        self._owners: dict[str, int] = {}
        # Packet ids of messages the broker may still hold in flight (id -> how many): received
        # on the live connection, and not yet acked with a barrier confirming the ack arrived.
        # A second message under one of them means the broker reuses ids in flight. Until the
        # barrier's PUBACK the gateway cannot know whether the broker read its ack: a message
        # sent under the id meanwhile proves nothing about the earlier one.
        self._in_flight: dict[int, int] = {}
        self.ids_reused = 0
        self._live_connection: int | None = None  # None while disconnected
        self.session = 0  # counts up on every connect that found no session (model.RawMessage)
        # barrier mid -> (batch, connection, the packet ids its acks released)
        self._barriers: dict[int, tuple[int, int, list[int]]] = {}
        self._barrier_topic = "$edge-gateway/ack-barrier/" + "".join(
            c if c not in "/+#" else "_" for c in config.client_id
        )
        self._barrier_topic_bytes = self._barrier_topic.encode()
        # (batch, messages received before its barrier's PUBACK), oldest first; see acks_confirmed.
        self._confirmations: collections.deque[tuple[int, int]] = collections.deque()
        self._acks_confirmed_upto = 0
        self._taken = 0  # messages handed to the pipeline
        self._closing = False
        self.connected = threading.Event()
        self.received = 0
        self.connects = 0
        self.last_error: str | None = None
        self._refused = False
        # The event loop's side of the connection.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None  # the live socket, while the loop watches it
        self._lost: asyncio.Future[None] | None = None  # done when that socket closes
        self._tick: asyncio.TimerHandle | None = None
        self._paused = False  # backpressure: the pending list is full, the socket is not read
        self._read_soon = False
        self._client = self._make_client()

    # -- set-up ---------------------------------------------------------------------------
    def _make_client(self) -> _IngestClient:
        cfg = self._config
        v5 = cfg.protocol == "5"
        client = _IngestClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=None if v5 else cfg.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        client.backoff_min = cfg.reconnect.min_delay
        client.backoff_max = cfg.reconnect.max_delay
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            tls = cfg.tls
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                keyfile_password=tls.key_password.get_secret_value() if tls.key_password else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(tls.insecure)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_packet = self._on_packet
        client.on_publish = self._on_publish
        client.on_socket_open = self._socket_opened
        client.on_socket_close = self._socket_closed
        client.on_write_interest = self._write_interest
        return client

    def start(self) -> None:
        """Connect in the background, on the running event loop; reconnect until `stop`."""
        cfg = self._config
        properties = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if cfg.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(cfg.session_expiry)
            # The broker sends at most this many unacked messages: packet ids stay unique.
            properties.ReceiveMaximum = cfg.max_inflight
            clean_start = cfg.clean_start
        try:
            self._client.connect_async(
                cfg.host,
                cfg.port,
                keepalive=cfg.keepalive,
                clean_start=clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            raise BrokerError(f"MQTT broker {cfg.host}:{cfg.port}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._connection(), name="mqtt-connection")

    def stop(self) -> None:
        """Stop receiving and disconnect; unacked messages stay with the broker for the next
        session."""
        if self._closing:
            return
        self._closing = True
        client = self._client
        client.disconnect()  # DISCONNECT goes out now if the socket takes it; paho then closes
        if client.socket() is not None:  # it did not (a full send buffer): close anyway
            client._sock_close()
        if self._task is not None:
            self._task.cancel()  # connecting, or waiting to reconnect

    async def aclose(self) -> None:
        """`stop`, and wait until the connection is gone."""
        self.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # -- the connection, on the event loop ----------------------------------------------------
    async def _connection(self) -> None:
        """Connect, serve the connection until it closes, wait, reconnect; until `stop`."""
        client = self._client
        while not self._closing:
            try:
                client.opened = await self._open()
                self._lost = asyncio.get_running_loop().create_future()
                client.reconnect()  # paho's session state, then CONNECT, on this thread
            except (OSError, ValueError) as exc:
                client.opened = None
                self._connect_failed(exc)
            else:
                await self._lost
            if not self._closing:
                await asyncio.sleep(client.reconnect_delay())

    async def _open(self) -> Any:
        opening = asyncio.get_running_loop().run_in_executor(None, self._client.open_socket)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise

    def _connect_failed(self, exc: Exception) -> None:
        cfg = self._config
        self.last_error = f"cannot reach MQTT broker {cfg.host}:{cfg.port}: {exc}"
        logger.warning("%s; retrying with backoff", self.last_error)

    def _socket_opened(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = self._loop
        assert loop is not None
        self._fd = fd = sock.fileno()
        if not self._paused:
            loop.add_reader(fd, self._readable)
        self._tick = loop.call_later(_TICK, self._keepalive)

    def _socket_closed(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """Every way a connection ends passes here (paho calls it before closing the socket)."""
        self._live_connection = None  # acks of its messages would reach another connection
        self.connected.clear()
        loop, fd = self._loop, self._fd
        self._fd = None
        if loop is not None and fd is not None:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def _write_interest(self, wanted: bool) -> None:
        """paho has bytes the socket did not take yet (or no longer): watch it for writing."""
        loop, fd = self._loop, self._fd
        if loop is None or fd is None:
            return
        if wanted:
            loop.add_writer(fd, self._client.loop_write)
        else:
            loop.remove_writer(fd)

    def _readable(self) -> None:
        self._read_soon = False
        client, received = self._client, self.received
        rc = client.loop_read()
        if self.received != received:
            self._on_received()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return  # the connection ended (paho closed it; _socket_closed ran)
        if not self._paused and client.buffered():
            self._read_later()  # the selector cannot see these bytes

    def _read_later(self) -> None:
        if not self._read_soon and self._loop is not None:
            self._read_soon = True
            self._loop.call_soon(self._readable)

    def _keepalive(self) -> None:
        self._tick = None
        if self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS and self._loop is not None:
            self._tick = self._loop.call_later(_TICK, self._keepalive)

    def _pause_reading(self) -> None:
        """Backpressure: leave the rest with the broker until the pipeline takes."""
        self._paused = self._client.hold = True
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)

    def _resume_reading(self) -> None:
        self._paused = self._client.hold = False
        if self._loop is not None and self._fd is not None:
            self._loop.add_reader(self._fd, self._readable)
            self._read_later()  # bytes may wait in the read buffer

    # -- paho callbacks (on the event loop, inside paho's reads) --------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        cfg = self._config
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            self._refused = True  # the disconnect that follows must not hide the reason
            logger.error("MQTT %s:%s: %s", cfg.host, cfg.port, self.last_error)
            return
        self.connects += 1
        if not flags.session_present:
            self.session += 1  # the old session's packet ids mean nothing any more
        self._live_connection = self.connects
        self._in_flight.clear()  # what the broker still holds comes again as DUP
        client._attempt = 0  # type: ignore[attr-defined]
        # Rule commands are small packets sent between acks: with Nagle's algorithm on, one
        # waits for the broker to acknowledge the previous segment (tens of milliseconds).
        sock = client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_error = None
        logger.info(
            "MQTT connected to %s:%s (session present: %s)",
            cfg.host,
            cfg.port,
            flags.session_present,
        )
        if cfg.protocol == "5":
            # Retain handling 1: retained messages only for a subscription the broker did not
            # have yet, so a reconnect does not replay them as new readings. One SUBSCRIBE per
            # subscription, each with its identifier (its place in the config, from 1): a
            # broker may deliver a message once per matching subscription, and the identifier
            # tells the gateway which copy to keep (`_copy`).
            for number, sub in enumerate(cfg.subscriptions, start=1):
                identifier = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
                identifier.SubscriptionIdentifier = number
                options = SubscribeOptions(qos=sub.qos, retainHandling=1)
                client.subscribe(sub.topic, options=options, properties=identifier)
        elif not flags.session_present:
            # 3.1.1: the persistent session keeps our subscriptions; subscribing again would
            # make the broker resend retained messages as if they were new.
            plain: list[tuple[str, int]] = [(s.topic, s.qos) for s in cfg.subscriptions]
            client.subscribe(plain)
        self.connected.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        refused, self._refused = self._refused, False
        if not self._closing and not refused:
            self.last_error = f"disconnected from MQTT broker: {reason}"
            logger.warning("%s; reconnecting with backoff", self.last_error)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """A message paho read itself (QoS 2, or MQTT 5 properties)."""
        raw = getattr(getattr(message, "properties", None), "SubscriptionIdentifier", None)
        identifiers = (
            tuple(raw) if isinstance(raw, list) else (raw,) if isinstance(raw, int) else ()
        )
        self._on_packet(
            message._topic,
            bytes(message.payload),
            message.qos,
            message.mid,
            bool(message.dup),
            bool(message.retain),
            identifiers,
        )

    def _copy(self, topic: str, identifiers: tuple[int, ...]) -> bool:
        """Whether a message came for a subscription other than the first (in config order)
        that matches its topic: another copy of a message the broker also sends for that
        one. MQTT 5 names the subscriptions a copy is for; without identifiers, it is not."""
        if not identifiers:
            return False
        owner = self._owners.get(topic)
        if owner is None:
            owner = next((n for n, match in self._matchers if match(topic)), 0)
            if len(self._owners) >= _OWNERS_CACHE:
                self._owners.clear()  # a topic flood must not grow memory without bound
            self._owners[topic] = owner
        return owner != 0 and owner not in identifiers

    def _on_packet(
        self,
        topic_bytes: bytes,
        payload: bytes,
        qos: int,
        mid: int,
        dup: bool,
        retain: bool,
        identifiers: tuple[int, ...] = (),
    ) -> None:
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:  # MQTT requires UTF-8 topics; keep the message, quarantined
            topic = topic_bytes.decode("utf-8", errors="replace")
        held = 0
        if qos:
            held = self._in_flight.get(mid, 0)
            self._in_flight[mid] = held + 1
            # A broker sends a message once per connection, so a second one under an id it may
            # still hold is another message.
            if held:
                self._id_reused()
        raw = RawMessage(
            topic,
            payload,
            qos,
            mid,
            dup,
            retain,
            self._clock(),
            self.connects,
            self.session,
            bool(held),
            self._copy(topic, identifiers),
        )
        pending = self._pending
        pending.append(raw)
        self._pending_bytes += len(raw.payload)
        self.received += 1
        if self._full() and not self._paused:
            self._pause_reading()

    def _full(self) -> bool:
        return (
            len(self._pending) >= self._max_pending
            or self._pending_bytes >= self._max_pending_bytes
        )

    def _id_reused(self) -> None:
        self.ids_reused += 1
        if self.ids_reused == 1 or self.ids_reused % 10_000 == 0:
            logger.warning(
                "MQTT broker %s:%s sent a message under a packet id still in flight (%d so "
                "far): more than 65,535 messages are in flight. The gateway tells them "
                "apart by topic and payload; keep max_inflight_messages at most 60000 (and use "
                "Mosquitto 2.0.13 or newer: older ones exceed it while a backlog drains)",
                self._config.host,
                self._config.port,
                self.ids_reused,
            )

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        # `received` covers every message that came before this PUBACK in the stream: among
        # them any redelivery the broker sent before it read our acks.
        message = client._out_messages.get(mid)
        if message is None or message._topic != self._barrier_topic_bytes:
            return
        barrier = self._barriers.pop(mid, None)
        # paho resends an unconfirmed barrier after a reconnect: that PUBACK proves nothing.
        if barrier is not None and barrier[1] == self._live_connection:
            batch, _, mids = barrier
            self._confirmations.append((batch, self.received))
            self._release(mids)

    # -- pipeline side --------------------------------------------------------------------
    def take(self, max_count: int, max_bytes: int | None = None) -> list[RawMessage]:
        """What is pending now, oldest first: at most `max_count` messages and, past the first,
        at most `max_bytes` (default `max_batch_bytes`) of payload. Never waits (see
        `on_received`)."""
        budget = self._max_batch_bytes if max_bytes is None else max_bytes
        pending = self._pending
        if not pending:
            return []
        if self._pending_bytes > budget:  # large payloads: fewer per batch
            size = 0
            for count, message in enumerate(pending[:max_count]):
                size += len(message.payload)
                if size > budget and count:
                    max_count = count
                    break
        taken = pending[:max_count]
        self._pending = pending[max_count:] if len(pending) > max_count else []
        self._pending_bytes = (
            self._pending_bytes - sum(len(m.payload) for m in taken) if self._pending else 0
        )
        self._taken += len(taken)
        if self._paused and not self._full() and not self._closing:
            self._resume_reading()
        return taken

    def pending(self) -> int:
        return len(self._pending)

    def ack(self, messages: list[RawMessage], batch: int) -> None:
        """Acknowledge committed QoS 1 messages, then publish the batch's ack barrier.

        Only messages the live connection delivered are acked (see the module docstring). The
        barrier is a QoS 1 publish to a `$`-topic (which `#` subscriptions never match) on the
        same connection: its PUBACK proves the broker received the acks sent before it, and
        `acks_confirmed()` then moves to this batch (see gateway/ingest/redelivery.py).
        """
        live = self._live_connection
        mids = [m.mid for m in messages if m.qos and m.connection == live]
        if live is None or not mids:
            return
        # A reconnect drops what is still queued (paho's reconnect clears its packet queue), so
        # these acks cannot reach a later connection.
        self._client.ack_qos1_batch(mids)
        if self._live_connection != live:
            return  # writing them found the connection gone
        info = self._client.publish(self._barrier_topic, b"", qos=1)
        if len(self._barriers) > 10_000:  # lost in outages; the next connect forgets ids
            self._barriers.clear()
        self._barriers[info.mid] = (batch, live, mids)

    def _release(self, mids: list[int]) -> None:
        """The broker read our acks of these ids on the live connection: it may use them again."""
        in_flight = self._in_flight
        for mid in mids:
            held = in_flight.pop(mid, 1)
            if held > 1:
                in_flight[mid] = held - 1

    def acks_confirmed(self) -> int:
        """The last batch whose acks the broker has confirmed, as far as the pipeline may act.

        Only a barrier's PUBACK on the connection that carried our acks proves they arrived.
        A confirmation counts only once the pipeline has taken every message received before
        it. Until then a redelivery of that batch, sent by the broker before our acks reached
        it, may still wait in the pending list, and its entry must stay to recognise it.
        """
        confirmations = self._confirmations
        while confirmations and confirmations[0][1] <= self._taken:
            batch, _ = confirmations.popleft()
            self._acks_confirmed_upto = max(self._acks_confirmed_upto, batch)
        return self._acks_confirmed_upto

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """Publish a command or event (rules' actions): written to the socket at once, or queued
        by paho while disconnected. From another thread it is handed to the event loop."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.publish, topic, payload, qos, retain)
            return
        client = self._client
        if qos == 0:
            data = payload.encode() if isinstance(payload, str) else payload
            if client.publish_at_once(topic, data, retain):
                return
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
