"""Load mode: N devices publishing at a total rate from several processes, with live figures.

Each worker process owns one MQTT connection and writes PUBLISH packets encoded once up front
straight to its socket: an MQTT client library spends more time per message than the broker does,
and the point is to load the broker and the gateway, not the generator. QoS 1 sends a window of
packets, then reads the window's PUBACKs, so every counted message was accepted by the broker.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.sharedctypes
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulators.runner import connect_packet

_WINDOW = 500  # messages per write (QoS 0) or per acknowledged window (QoS 1)
_VARIANTS = 16  # distinct payloads per device, so a buffer does not see one value forever


@dataclass(slots=True, frozen=True)
class LoadSpec:
    host: str
    port: int
    devices: int = 1000
    rate: float = 0.0  # total messages per second; 0 means as fast as possible
    processes: int = 2
    duration: float | None = 10.0
    count: int | None = None
    qos: int = 0
    site: str = "load"
    payload: str = "plain"  # plain | json | zigbee2mqtt (see PAYLOADS)
    seed: int = 1


@dataclass(slots=True)
class LoadSummary:
    sent: int
    errors: int
    seconds: float
    per_second: list[tuple[float, int, int]]  # (elapsed, messages in that second, errors)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, qos: int = 0, mid: int = 0) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet."""
    raw = topic.encode()
    body = struct.pack("!H", len(raw)) + raw
    if qos:
        body += struct.pack("!H", mid)
    body += payload
    return bytes([0x30 | qos << 1]) + _remaining_length(len(body)) + body


def _plain(site: str, device: int, rng: random.Random) -> tuple[str, bytes]:
    return f"sensors/{site}/dev-{device:06d}/temperature", f"{20 + 5 * rng.random():.2f}".encode()


def _json(site: str, device: int, rng: random.Random) -> tuple[str, bytes]:
    body = b'{"value": %.2f, "unit": "\xc2\xb0C"}' % (20 + 5 * rng.random())
    return f"sensors/{site}/dev-{device:06d}/temperature", body


def _zigbee2mqtt(site: str, device: int, rng: random.Random) -> tuple[str, bytes]:
    body = b'{"temperature": %.2f, "humidity": %.1f, "battery": %d, "linkquality": %d}' % (
        20 + 5 * rng.random(),
        40 + 20 * rng.random(),
        rng.randint(20, 100),
        rng.randint(40, 200),
    )
    return f"zigbee2mqtt/{site}-dev-{device:06d}", body


# What one load message looks like: a plain number, the gateway's JSON, or a Zigbee2MQTT state.
PAYLOADS = {"plain": _plain, "json": _json, "zigbee2mqtt": _zigbee2mqtt}


def _windows(spec: LoadSpec, worker: int, device_ids: list[int]) -> list[list[bytes]]:
    """Windows of `_WINDOW` pre-encoded packets cycling over this worker's devices.

    QoS 1 keeps two windows in flight: even windows use packet ids 1..W, odd ones W+1..2W, and a
    window's ids are reused only after its PUBACKs were read."""
    rng = random.Random(f"{spec.seed}:{worker}")
    n = len(device_ids)
    windows = []
    k = 0
    count = max(_VARIANTS, -(-n // _WINDOW))  # every device at least once
    for w in range(count + count % 2):
        packets = []
        for j in range(_WINDOW):
            device = device_ids[k % n]
            k += 1
            topic, body = PAYLOADS[spec.payload](spec.site, device, rng)
            mid = w % 2 * _WINDOW + j + 1
            packets.append(publish_packet(topic, body, spec.qos, mid))
        windows.append(packets)
    return windows


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def _read_acks(sock: socket.socket, count: int) -> None:
    if count and _read_exact(sock, 4 * count).count(b"\x40\x02") < count:
        raise ConnectionError("the broker did not acknowledge every message")


def _connect(spec: LoadSpec, worker: int) -> socket.socket:
    sock = socket.create_connection((spec.host, spec.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"load-{spec.seed}-{worker}", keepalive=600))
    if _read_exact(sock, 4)[3] != 0:
        raise ConnectionError("broker refused the connection")
    return sock


def _worker(
    spec: LoadSpec,
    worker: int,
    device_ids: list[int],
    quota: int | None,
    counters: Any,
    go: Any,
) -> None:
    """One process: connect, wait for `go`, publish windows at this worker's share of the rate."""
    sent, errors, ready, finished = counters
    windows = _windows(spec, worker, device_ids)
    joined = [b"".join(w) for w in windows]
    rate = spec.rate / spec.processes if spec.rate else 0.0
    sock = _connect(spec, worker)
    with ready.get_lock():
        ready.value += 1
    go.wait()
    started = time.monotonic()
    deadline = started + spec.duration if spec.duration else None
    done = 0
    i = 0
    unacked = 0  # messages of the window before this one, whose PUBACKs are still to read
    try:
        while quota is None or done < quota:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if rate:
                ahead = started + done / rate - now
                if ahead > 0:
                    time.sleep(ahead)
            take = _WINDOW if quota is None else min(_WINDOW, quota - done)
            window = joined[i % len(windows)]
            if take < _WINDOW:
                window = b"".join(windows[i % len(windows)][:take])
            i += 1
            acked = 0
            try:
                sock.sendall(window)
                if spec.qos:
                    _read_acks(sock, unacked)
                    acked, unacked = unacked, take
            except OSError:
                with errors.get_lock():
                    errors.value += 1
                sock.close()
                sock = _connect(spec, worker)
                unacked = 0
                continue
            done += take
            # QoS 1 counts a message once the broker acknowledged it, one window later.
            with sent.get_lock():
                sent.value += acked if spec.qos else take
        if unacked:
            _read_acks(sock, unacked)
            with sent.get_lock():
                sent.value += unacked
        with finished.get_lock():  # CLOCK_MONOTONIC is one clock for all processes
            finished.value = max(finished.value, time.monotonic())
    finally:
        try:
            sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker drops the session quietly
        finally:
            sock.close()


def run_load(
    spec: LoadSpec, report: Callable[[float, int, int, int], None] | None = None
) -> LoadSummary:
    """Start the workers, call `report(elapsed, messages_last_second, total, errors)` once a
    second, and return the summary once `duration` passed or `count` messages were sent."""
    ctx = mp.get_context("spawn")  # fork in a threaded process (paho, pytest) is unsafe
    sent = ctx.Value("q", 0)
    errors = ctx.Value("q", 0)
    ready = ctx.Value("q", 0)
    finished = ctx.Value("d", 0.0)
    go = ctx.Event()
    processes = max(1, spec.processes)
    ids = list(range(max(1, spec.devices)))
    quotas: list[int | None] = [None] * processes
    if spec.count is not None:
        share, extra = divmod(spec.count, processes)
        quotas = [share + (1 if w < extra else 0) for w in range(processes)]
    workers = [
        ctx.Process(
            target=_worker,
            args=(
                spec,
                w,
                ids[w::processes] or ids[:1],
                quotas[w],
                (sent, errors, ready, finished),
                go,
            ),
            daemon=True,
        )
        for w in range(processes)
    ]
    for p in workers:
        p.start()
    # Every worker connects first; `go` starts them together so the first second is a full one.
    wait_until = time.monotonic() + 30
    while ready.value < processes and time.monotonic() < wait_until:
        if not any(p.is_alive() for p in workers):
            break
        time.sleep(0.01)
    go.set()
    started = time.monotonic()
    per_second: list[tuple[float, int, int]] = []
    last = 0
    try:
        while any(p.is_alive() for p in workers):
            next_tick = started + len(per_second) + 1
            for p in workers:
                p.join(timeout=max(0.0, next_tick - time.monotonic()))
            elapsed = time.monotonic() - started
            if elapsed >= len(per_second) + 1 or not any(p.is_alive() for p in workers):
                total = int(sent.value)
                per_second.append((elapsed, total - last, int(errors.value)))
                if report is not None:
                    report(elapsed, total - last, total, int(errors.value))
                last = total
    finally:
        for p in workers:
            if p.is_alive():
                p.terminate()
            p.join()
    # The run lasted until the last worker sent its last message (not until processes exited).
    seconds = (finished.value or time.monotonic()) - started
    failed = sum(1 for p in workers if p.exitcode not in (0, None))
    return LoadSummary(int(sent.value), int(errors.value) + failed, seconds, per_second)
