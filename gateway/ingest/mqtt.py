"""MQTT ingest with paho-mqtt: a persistent session, manual acks after commit, and reconnects.

paho's own network thread receives messages and only appends them to a pending list (waking
the pipeline through `on_pending`); the pipeline takes them (`take`), has them committed, then
acks them (`ack`).
The broker keeps unacked QoS 1 messages, so a crash between receive and commit loses nothing.

Acks go only to the connection that delivered the message. A message committed after its
connection dropped stays unacked: with the session kept, the broker redelivers it (DUP) and the
redelivery is acked; with the session lost, its packet id now names another message, and
acking it would ack that one before it is committed.

A broker must not reuse a packet id while the message under it is unacked, but Mosquitto before
2.0.13 does while a queued backlog drains. An id counts as in flight from receipt until an ack
barrier confirms the broker read our ack of it; a message under an id in flight is marked
`id_reused`, and the redelivery filter then keeps what it knows of both.

Locks, in the order they may be taken (never the other way round):
  1. paho's `_in_callback_mutex` / `_out_message_mutex`: paho holds them on its network thread
     while it calls our callbacks (`_on_message`, `_on_connect`, `_on_publish`, ...).
  2. `_connection_lock` (which connection is live, and its session), then
  3. `_cond` (the pending list and the packet ids in flight).
  `_barrier_lock` is a leaf: held only around our own dicts, never while calling into paho and
  never taken in a paho callback. Nothing of ours is held while calling `client.publish` or
  `client.ack` (both take paho's `_out_message_mutex`): holding a lock of ours there while the
  network thread holds that mutex and calls back into us would freeze the gateway.
  The liveness heartbeat (gateway/liveness.py) takes no lock, so it runs under any of these.
"""

from __future__ import annotations

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
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.config import MqttConfig
from gateway.errors import BrokerError
from gateway.model import RawMessage

logger = logging.getLogger(__name__)

# Jitter from a generator of its own: drawing from the global `random` would move the state that
# the code around the gateway (a seeded simulation, a property-based test) relies on.
_JITTER = random.Random()


_PUBACK_HEADER = bytes([PUBACK, 2])
_READ_SIZE = 256 * 1024  # bytes asked of the socket at once (see _IngestClient._sock_recv)
_READ_BURST = 2000  # packets read from the buffer per network-loop turn, before acks go out


class _IngestClient(paho.Client):
    """paho's client with jittered reconnects and a batch ack path (paho-mqtt 2.x internals).

    paho doubles its reconnect delay without jitter, so a fleet of gateways behind one broker
    that restarts would reconnect in lockstep; spreading the attempts avoids that herd.
    """

    backoff_min = 0.5
    backoff_max = 30.0
    _attempt = 0
    heartbeat: Callable[[], None] | None = None  # network thread's sign of life (liveness.py)
    # Bytes received from the socket and not yet read by paho: _read[_read_at:].
    _read = b""
    _read_at = 0

    def _loop(self, timeout: float = 1.0) -> MQTTErrorCode:
        # Every turn of the network loop passes here, and waits at most `timeout` (1 s) in
        # select: a beat per turn shows the thread is alive, idle or not.
        heartbeat = self.heartbeat
        if heartbeat is not None:
            heartbeat()
        if self._read_at < len(self._read):
            timeout = 0.0  # packets wait in the read buffer, where select cannot see them
        rc = super()._loop(timeout)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._read_at < len(self._read):
            rc = self.loop_read()
        return rc

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho asks for each packet in two or three small reads (type, length, rest), and each
        # is a system call that drops the GIL: with the pipeline's thread wanting it, paho
        # then waits to get it back, three times a message. One large read serves hundreds of
        # packets from memory instead.
        data, at = self._read, self._read_at
        if at >= len(data):
            data, at = super()._sock_recv(_READ_SIZE), 0  # b"": the broker closed
            if len(data) <= bufsize:
                self._read, self._read_at = b"", 0
                return data
            self._read = data
        chunk = data[at : at + bufsize]
        self._read_at = at + len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho reads one packet per select; read on while the buffer holds more (bounded, so
        # acks and pings are written in between).
        rc = super().loop_read(max_packets)
        for _ in range(_READ_BURST):
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._read_at >= len(self._read):
                break
            rc = super().loop_read(1)
        return rc

    def _sock_close(self) -> None:
        self._read, self._read_at = b"", 0  # what the old connection sent means nothing now
        super()._sock_close()

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho matches every topic against its (empty) table of per-filter callbacks before
        # calling on_message; that costs ~10% of ingest at 30k msg/s, so go straight there.
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)

    def ack_qos1_batch(self, mids: list[int]) -> None:
        """Queue PUBACKs for many QoS 1 messages and wake the network thread once.

        paho's `ack()` writes to its wake-up socket once per message (a syscall each); queueing
        the same packets and waking once keeps acks off the profile. A PUBACK without a reason
        code means success in both MQTT 3.1.1 and 5.
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
        if self._sockpairW is not None:
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(b"0")

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

    def _reconnect_wait(self) -> None:
        ceiling = min(self.backoff_max, self.backoff_min * (2**self._attempt))
        self._attempt += 1
        delay = ceiling / 2 + _JITTER.uniform(0, ceiling / 2)
        deadline = time.monotonic() + delay
        while not self._thread_terminate and time.monotonic() < deadline:
            if self.heartbeat is not None:
                self.heartbeat()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


class MqttIngest:
    """Subscribes, queues received messages for the writer, and acks them once committed."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        max_pending: int = 200_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_batch_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        heartbeat: Callable[[], None] | None = None,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        """`on_pending` is called on paho's network thread when a message arrives while none
        was pending: it must only hand over (the pipeline wakes its event loop)."""
        self._config = config
        self._heartbeat = heartbeat or (lambda: None)  # called on the network thread
        self._on_pending = on_pending or (lambda: None)
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_batch_bytes = max_batch_bytes
        self._clock = clock
        self._pending: list[RawMessage] = []
        self._pending_bytes = 0
        self._cond = threading.Condition()
        # Packet ids of messages the broker may still hold in flight (id -> how many): received
        # on the live connection, and not yet acked with a barrier confirming the ack arrived.
        # A second message under one of them means the broker reuses ids in flight. Until the
        # barrier's PUBACK the gateway cannot know whether the broker read its ack: a message
        # sent under the id meanwhile proves nothing about the earlier one.
        self._in_flight: dict[int, int] = {}
        self.ids_reused = 0
        self._connection_lock = threading.Lock()
        self._live_connection: int | None = None  # None while disconnected
        self.session = 0  # counts up on every connect that found no session (model.RawMessage)
        self._barrier_lock = threading.Lock()
        # barrier mid -> (batch, connection, the packet ids its acks released)
        self._barriers: dict[int, tuple[int, int, list[int]]] = {}
        self._barrier_topic = "$edge-gateway/ack-barrier/" + "".join(
            c if c not in "/+#" else "_" for c in config.client_id
        )
        self._barrier_topic_bytes = self._barrier_topic.encode()
        # Barrier PUBACKs as paho's thread saw them: (mid, messages received before it,
        # connection). Appended without a lock (see the lock order above), matched to barriers
        # by acks_confirmed; one that arrives before ack() recorded its barrier waits in _early.
        self._barrier_pubacks: collections.deque[tuple[int, int, int]] = collections.deque()
        self._early: dict[int, tuple[int, int]] = {}
        # (batch, messages received before its barrier's PUBACK), oldest first; see acks_confirmed.
        self._confirmations: collections.deque[tuple[int, int]] = collections.deque()
        self._acks_confirmed_upto = 0
        self._taken = 0  # messages handed to the writer
        self._closing = False
        self.connected = threading.Event()
        self.received = 0
        self.connects = 0
        self.last_error: str | None = None
        self._refused = False
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
        client.heartbeat = self._heartbeat
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        """Connect in the background; paho's thread keeps reconnecting until `stop`."""
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
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect; unacked messages stay with the broker for the next session."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread) --------------------------------------------------
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
        with self._connection_lock:
            self.connects += 1
            if not flags.session_present:
                self.session += 1  # the old session's packet ids mean nothing any more
            self._live_connection = self.connects
            with self._cond:
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
            # have yet, so a reconnect does not replay them as new readings.
            topics: list[tuple[str, Any]] = [
                (s.topic, SubscribeOptions(qos=s.qos, retainHandling=1)) for s in cfg.subscriptions
            ]
            client.subscribe(topics)
        elif not flags.session_present:
            # 3.1.1: the persistent session keeps our subscriptions; subscribing again would
            # make the broker resend retained messages as if they were new.
            plain: list[tuple[str, int]] = [(s.topic, s.qos) for s in cfg.subscriptions]
            client.subscribe(plain)
        self.connected.set()

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        cfg = self._config
        self.last_error = f"cannot reach MQTT broker {cfg.host}:{cfg.port}"
        logger.warning("%s; retrying with backoff", self.last_error)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._connection_lock:
            self._live_connection = None  # acks of its messages would reach another connection
        self.connected.clear()
        refused, self._refused = self._refused, False
        if not self._closing and not refused:
            self.last_error = f"disconnected from MQTT broker: {reason}"
            logger.warning("%s; reconnecting with backoff", self.last_error)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # MQTT requires UTF-8 topics; keep the message, quarantined
            topic = message._topic.decode("utf-8", errors="replace")
        qos, mid = message.qos, message.mid
        with self._cond:
            held = 0
            if qos:
                held = self._in_flight.get(mid, 0)
                self._in_flight[mid] = held + 1
                # A broker sends a message once per connection, so a second one under an id
                # it may still hold is another message.
                if held:
                    self._id_reused()
            raw = RawMessage(
                topic,
                bytes(message.payload),
                qos,
                mid,
                bool(message.dup),
                bool(message.retain),
                self._clock(),
                self.connects,
                self.session,
                bool(held),
            )
            pending = self._pending
            pending.append(raw)
            self._pending_bytes += len(raw.payload)
            self.received += 1
            if len(pending) == 1:
                self._on_pending()
            # Backpressure: stop reading (the broker holds the rest) until the pipeline takes.
            while (
                len(self._pending) >= self._max_pending
                or self._pending_bytes >= self._max_pending_bytes
            ) and not self._closing:
                self._heartbeat()  # waiting for the pipeline on purpose (liveness watches it)
                self._cond.wait(0.5)

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

    # -- writer side ----------------------------------------------------------------------
    def take(self, max_count: int, max_bytes: int | None = None) -> list[RawMessage]:
        """What is pending now, oldest first: at most `max_count` messages and, past the first,
        at most `max_bytes` (default `max_batch_bytes`) of payload. Never waits (see
        `on_pending`)."""
        budget = self._max_batch_bytes if max_bytes is None else max_bytes
        with self._cond:
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
            self._cond.notify_all()  # the network thread may wait for room (backpressure)
            return taken

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def ack(self, messages: list[RawMessage], batch: int) -> None:
        """Acknowledge committed QoS 1 messages, then publish the batch's ack barrier.

        Only messages the live connection delivered are acked (see the module docstring). The
        barrier is a QoS 1 publish to a `$`-topic (which `#` subscriptions never match) on the
        same connection: its PUBACK proves the broker received the acks sent before it, and
        `acks_confirmed()` then moves to this batch (see gateway/ingest/redelivery.py).
        """
        with self._connection_lock:
            live = self._live_connection
            mids = [m.mid for m in messages if m.qos and m.connection == live]
            if live is None or not mids:
                return
            # Queued under the lock: paho drops queued packets on reconnect only after our
            # _on_disconnect ran, so these cannot reach a later connection.
            self._client.ack_qos1_batch(mids)
        info = self._client.publish(self._barrier_topic, b"", qos=1)  # no lock of ours held
        with self._barrier_lock:
            if len(self._barriers) > 10_000:  # lost in outages; the next connect forgets ids
                self._barriers.clear()
            early = self._early.pop(info.mid, None)
            if early is None:
                self._barriers[info.mid] = (batch, live, mids)
                return
            if early[1] != live:
                return
            self._confirmations.append((batch, early[0]))
        self._release(live, mids)

    def _release(self, connection: int, mids: list[int]) -> None:
        """The broker read our acks of these ids on `connection`: it may use them again."""
        with self._connection_lock:
            if connection != self._live_connection:
                return  # the connect since forgot every id
            with self._cond:
                in_flight = self._in_flight
                for mid in mids:
                    held = in_flight.pop(mid, 1)
                    if held > 1:
                        in_flight[mid] = held - 1

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        # paho's thread, holding its _out_message_mutex: take no lock of ours here (the writer
        # holds ours while it calls paho). `received` counts on this thread, so it covers every
        # message that came before this PUBACK in the stream: among them any redelivery the
        # broker sent before it read our acks.
        message = client._out_messages.get(mid)
        if message is not None and message._topic == self._barrier_topic_bytes:
            self._barrier_pubacks.append((mid, self.received, self.connects))

    def acks_confirmed(self) -> int:
        """The last batch whose acks the broker has confirmed, as far as the writer may act on it.

        Only a barrier's PUBACK on the connection that carried our acks proves they arrived;
        paho resends an unconfirmed barrier after a reconnect, and that PUBACK proves nothing.
        A confirmation counts only once the writer has taken every message received before it.
        Until then a redelivery of that batch, sent by the broker before our acks reached it,
        may still wait in the pending list, and its entry must stay to recognise it.
        """
        released: list[tuple[int, list[int]]] = []
        with self._barrier_lock:
            pubacks, confirmations = self._barrier_pubacks, self._confirmations
            while pubacks:
                mid, received, connection = pubacks.popleft()
                barrier = self._barriers.pop(mid, None)
                if barrier is None:  # ack() has not recorded it yet
                    if len(self._early) > 10_000:
                        self._early.clear()
                    self._early[mid] = (received, connection)
                elif barrier[1] == connection:
                    confirmations.append((barrier[0], received))
                    released.append((connection, barrier[2]))
            while confirmations and confirmations[0][1] <= self._taken:
                batch, _ = confirmations.popleft()
                self._acks_confirmed_upto = max(self._acks_confirmed_upto, batch)
            upto = self._acks_confirmed_upto
        for connection, mids in released:  # _barrier_lock is a leaf: released first
            self._release(connection, mids)
        return upto

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """Publish a command or event (rules' actions); queued by paho while disconnected."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BrokerError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
