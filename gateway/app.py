"""The composition root: `Gateway` wires ingest, the buffer, the API and the optional parts.

    MQTT --> MqttIngest.take --> BatchDecoder --> BufferStore.append (one transaction)
         --> ack to broker --> batch listeners (sinks, telemetry)
    MQTT --> MqttIngest.on_receive --> rules engine, as messages arrive --> commands, alerts
    BufferStore --> retention, API/SQL, sink forwarders

Parts receive what they need as arguments; only this module knows them all. Blocking work on
the buffer runs on one writer thread that owns the DuckDB write connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from gateway.api.telemetry import Telemetry
from gateway.buffer.store import BufferStore
from gateway.config import GatewayConfig
from gateway.errors import BufferStoreError
from gateway.heap import return_freed_memory
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.mqtt import MqttIngest
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.liveness import Liveness
from gateway.model import IngestBatch

logger = logging.getLogger(__name__)

T = TypeVar("T")

BatchListener = Callable[[pa.Table], Awaitable[None]]
"""Called after each commit with the committed readings (READINGS_SCHEMA, ids set), in order."""


@dataclass
class IngestStats:
    """Figures for `status`, the API and metrics; updated by the writer after each commit."""

    started_at: float = field(default_factory=time.time)
    messages: int = 0
    readings: int = 0
    quarantined: int = 0
    duplicates: int = 0
    batches: int = 0
    commit_failures: int = 0
    last_commit_at: float | None = None
    recent: list[tuple[float, int]] = field(default_factory=list)  # (time, readings) per commit

    def record(self, now: float, batch: IngestBatch, messages: int) -> None:
        self.messages += messages
        self.readings += batch.reading_count
        self.quarantined += batch.quarantine_count
        self.duplicates += batch.duplicates
        self.batches += 1
        self.last_commit_at = now
        self.recent.append((now, batch.reading_count))
        horizon = now - 10.0
        while self.recent and self.recent[0][0] < horizon:
            self.recent.pop(0)

    def readings_per_second(self, now: float) -> float:
        window = [n for t, n in self.recent if t >= now - 10.0]
        span = min(10.0, max(now - self.started_at, 1e-3))
        return sum(window) / span


def runtime_file(buffer_path: Path) -> Path:
    """Where a running gateway writes its API address, for `edge-gateway sql` and `status`."""
    return buffer_path.with_name(buffer_path.name + ".runtime.json")


class Gateway:
    """`await Gateway(config).run(stop)` runs until `stop` is set, then shuts down cleanly."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.stats = IngestStats()
        self.store: BufferStore | None = None
        self.ingest: MqttIngest | None = None
        self.api_address: tuple[str, int] | None = None
        self.listeners: list[BatchListener] = []
        self.before_commit: list[Callable[[], None]] = []  # on the event loop, before each commit
        self.background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = []
        self.shipping: Any = None  # gateway.sinks.shipping.Shipping when sinks are configured
        self.rules: Any = None  # gateway.rules.service.RulesService when rule files are configured
        self.telemetry = Telemetry(config.routes)  # per-route counts, devices, rule activity
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-writer")
        self.liveness = Liveness()  # /healthz and systemd's watchdog (gateway/liveness.py)
        self.ready = asyncio.Event()
        self.clock: Callable[[], float] = time.time  # wall clock: ingest time and retention

    async def on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the thread that owns the buffer's write connection."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        return_freed_memory()
        store = await self.on_writer(BufferStore, cfg.buffer.path)
        self.store = store
        redelivery = RedeliveryFilter(await self.on_writer(store.inflight_entries))
        decoder = BatchDecoder(
            TopicRouter(cfg.routes),
            redelivery,
            cfg.buffer.max_payload_bytes,
            known_identities=store.known_identities,  # on the writer thread, as decode() is
        )
        ingest = MqttIngest(
            cfg.mqtt,
            max_pending=cfg.buffer.max_pending,
            max_pending_bytes=cfg.buffer.max_pending_bytes,
            max_batch_bytes=cfg.buffer.max_batch_bytes,
            wake_at=cfg.buffer.max_batch,
            clock=self.clock,
            heartbeat=self.liveness.mqtt.beat,
        )
        self.ingest = ingest
        if cfg.sinks:  # one forwarder per sink and stream; retention keeps what they lack
            from gateway.sinks.shipping import Shipping

            self.shipping = Shipping(
                cfg.sinks,
                cfg.gateway_id,
                store,
                self.on_writer,
                lambda: store.next_reading_id - 1,
                release=cfg.buffer.retention.release_disabled_sinks,
            )
            self.background.append(self.shipping.run)
            for forwarder in self.shipping.forwarders:  # send latency for /metrics
                forwarder.sink = self.telemetry.timed(forwarder.sink)
            self.listeners.append(self.shipping.on_commit)
            self.protected_position = self.shipping.protected_position
            self.released_position = self.shipping.released_position
        api_server = None
        try:
            if cfg.api.enabled:
                from gateway.api.server import ApiServer

                api_server = ApiServer(cfg.api, self)
                self.api_address = api_server.start()
                self._write_runtime_file()
            if cfg.rules.files:  # rules see messages as they arrive: they act in milliseconds
                from gateway.rules.service import RulesService

                seen = RedeliveryFilter()
                early = BatchDecoder(TopicRouter(cfg.routes), seen, cfg.buffer.max_payload_bytes)
                self.rules = RulesService(
                    cfg.rules,
                    cfg.location,
                    store=store,
                    on_writer=self.on_writer,
                    publish=ingest.publish,
                    early=(early, seen),
                    settled=lambda: ingest.received == self.stats.messages,
                )
                await self.rules.start()
                self.rules.executor.observers.append(self.telemetry.observe_rule_outputs)
                ingest.on_receive = self.rules.receive
                self.before_commit.append(self.rules.evaluate_received)
                self.background.append(self.rules.run)
            self.listeners.append(self.telemetry.on_commit)
            ingest.start()
            self.ready.set()
            logger.info(
                "gateway %s running: buffer %s, broker %s:%s",
                cfg.gateway_id,
                cfg.buffer.path,
                cfg.mqtt.host,
                cfg.mqtt.port,
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._ingest_loop(stop, ingest, decoder, redelivery, store))
                tasks.create_task(self._retention_loop(stop, store))
                tasks.create_task(self.liveness.run(stop, self._writer.submit))
                for task in self.background:
                    tasks.create_task(task(stop))
        finally:
            if api_server is not None:
                api_server.stop()
                runtime_file(cfg.buffer.path).unlink(missing_ok=True)
            ingest.stop()
            if self.rules is not None:
                await self.rules.close()
            await self.on_writer(store.close)
            self._writer.shutdown(wait=True)
            logger.info("gateway stopped: %d readings committed", self.stats.readings)

    def _write_runtime_file(self) -> None:
        assert self.api_address is not None
        host, port = self.api_address
        info = {"pid": os.getpid(), "api": f"http://{host}:{port}"}
        path = runtime_file(self.config.buffer.path)
        path.write_text(json.dumps(info))
        path.chmod(0o600)

    async def _ingest_loop(
        self,
        stop: asyncio.Event,
        ingest: MqttIngest,
        decoder: BatchDecoder,
        redelivery: RedeliveryFilter,
        store: BufferStore,
    ) -> None:
        cfg = self.config.buffer

        def take() -> list[Any]:
            return ingest.take(cfg.max_batch, cfg.flush_interval)

        def commit(messages: list[Any]) -> tuple[IngestBatch, pa.Table]:
            batch = decoder.decode(messages)
            redelivery.confirm(ingest.acks_confirmed())
            rows, number = redelivery.remember(batch.messages)
            batch.number = number
            delay = 0.1
            while True:  # the broker keeps the messages unacked meanwhile: nothing is lost
                try:
                    result = store.append(batch, rows, redelivery.confirmed_upto)
                    return batch, result.readings
                except BufferStoreError as exc:
                    self.stats.commit_failures += 1
                    logger.error("%s; retrying in %.1fs (messages stay unacked)", exc, delay)
                    self.liveness.writer_alive()  # waiting on the disk, not stuck
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)

        stopping = False
        while True:
            if stop.is_set() and not stopping:
                stopping = True
                # Stop receiving first; what already arrived is committed below. Messages
                # committed after the disconnect stay unacked: the broker redelivers them as
                # DUPs and the redelivery filter recognises them.
                await asyncio.to_thread(ingest.stop)
            messages = await asyncio.to_thread(take)
            if not messages:
                if stopping and ingest.pending() == 0:
                    return
                continue
            for hook in self.before_commit:
                hook()
            batch, committed = await self.on_writer(commit, messages)
            if not stopping:
                ingest.ack(messages, batch.number)
            self.stats.record(time.time(), batch, len(messages))
            if committed.num_rows:
                for listener in self.listeners:
                    await listener(committed)

    async def _retention_loop(self, stop: asyncio.Event, store: BufferStore) -> None:
        retention = self.config.buffer.retention
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=retention.check_interval)
                return
            except TimeoutError:
                pass
            try:
                await self.on_writer(
                    lambda: store.purge(
                        now=self.clock(),
                        max_age=retention.max_age,
                        max_bytes=retention.max_bytes,
                        protected_after=self.protected_position(),
                        drop_unsent=retention.on_full == "drop_oldest",
                        released_after=self.released_position(),
                    )
                )
            except BufferStoreError as exc:
                logger.error("%s", exc)

    protected_position: Callable[[], int | None] = staticmethod(lambda: None)
    """The last position every sink has confirmed (None: no sinks, nothing to protect)."""
    released_position: Callable[[], int | None] = staticmethod(lambda: None)
    """The last position every released disabled sink has confirmed (None: none released)."""
