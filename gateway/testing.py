"""Helpers for tests and benchmarks: run a Gateway on a thread or as a child process, publish,
poll until true."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import Gateway
from gateway.config import GatewayConfig


def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05
) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class GatewayThread:
    """`with GatewayThread(config) as gw:` runs the gateway on its own event loop thread.

    `gw.gateway` is the running Gateway; leaving the block stops it cleanly (and re-raises
    whatever made it fail).
    """

    def __init__(self, config: GatewayConfig, setup: Callable[[Gateway], None] | None = None):
        self.gateway = Gateway(config)
        if setup is not None:
            setup(self.gateway)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="gateway", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await self.gateway.run(self._stop)

        try:
            asyncio.run(run())
        except BaseException as exc:  # handed to the test thread in stop()
            self._error = exc
            self._started.set()

    def start(self, timeout: float = 20.0) -> GatewayThread:
        self._thread.start()
        self._started.wait(timeout)
        ingest_ready = wait_until(
            lambda: (
                self._error is not None
                or (self.gateway.ingest is not None and self.gateway.ingest.connected.is_set())
            ),
            timeout,
        )
        if self._error is not None:
            raise self._error
        if not ingest_ready:
            self.stop()
            raise TimeoutError("gateway did not connect to the broker in time")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def committed_readings(self) -> int:
        return self.gateway.stats.readings


class GatewayProcess:
    """`edge-gateway run -c CONFIG` as a child process, so a test can kill -9 it and start it
    again; `log` (next to the config) collects every run's stderr, `starts` counts the runs.
    `env` is added to this process's environment as it is when constructed."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = config.parent / "gateway.log"
        # Unbuffered, so a killed run's last log lines are in the file.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> GatewayProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
            )
        self.starts += 1
        return self

    def kill(self) -> None:
        """kill -9: no clean-up, no flush, no last commit, like a power cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code once it has stopped."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def publisher(host: str, port: int, client_id: str = "test-publisher") -> paho.Client:
    """A connected paho client with its network loop running; call `loop_stop()` when done."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    return client


def listener(
    host: str, port: int, topic_filter: str, client_id: str = "test-listener"
) -> tuple[paho.Client, list[tuple[str, bytes]]]:
    """A paho client subscribed (QoS 1, SUBACK received) to `topic_filter`, and the list each
    message it receives is appended to as (topic, payload); call `loop_stop()` when done."""
    heard: list[tuple[str, bytes]] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_message = lambda c, u, m: heard.append((m.topic, bytes(m.payload)))
    client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(host, port)
    client.loop_start()
    if not subscribed.wait(10):
        client.loop_stop()
        raise TimeoutError(f"no SUBACK for {topic_filter!r} from {host}:{port}")
    return client, heard
