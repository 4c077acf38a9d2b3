"""The composition root: `Gateway` wires ingest, the buffer, the API and the optional parts.

    MQTT --> MqttIngest --> Pipeline: decode once --> rules (at once) --> commands, alerts
                                      decoded batch --> BufferStore.append (one transaction)
                                      --> ack to broker --> batch listeners (sinks, telemetry)
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
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.api.telemetry import Telemetry
from gateway.apiclient import runtime_file
from gateway.buffer.devices import WRITE_INTERVAL as REGISTRY_WRITE_INTERVAL
from gateway.buffer.store import BufferStore
from gateway.config import GatewayConfig
from gateway.errors import BufferStoreError
from gateway.heap import return_freed_memory
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.mqtt import MqttIngest
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.liveness import Liveness
from gateway.pipeline import BatchListener, IngestStats, Pipeline, Wakeup

if TYPE_CHECKING:  # imported when configured: a gateway without sinks or rules loads neither
    from gateway.rules.service import RulesService
    from gateway.sinks.shipping import Shipping

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Gateway:
    """`await Gateway(config).run(stop)` runs until `stop` is set, then shuts down cleanly."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.stats = IngestStats()
        self.store: BufferStore | None = None
        self.ingest: MqttIngest | None = None
        self.api_address: tuple[str, int] | None = None
        self.listeners: list[BatchListener] = []
        self.pipeline: Pipeline | None = None
        self.background: list[Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = []
        self.shipping: Shipping | None = None  # when sinks are configured
        self.rules: RulesService | None = None  # when rule files are configured
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
        decoder = BatchDecoder(TopicRouter(cfg.routes), redelivery, cfg.buffer.max_payload_bytes)
        wakeup = Wakeup()  # the ingest wakes the pipeline with it
        ingest = MqttIngest(
            cfg.mqtt,
            max_pending=cfg.buffer.max_pending,
            max_pending_bytes=cfg.buffer.max_pending_bytes,
            max_batch_bytes=cfg.buffer.max_batch_bytes,
            clock=self.clock,
            on_received=wakeup.on_received,
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
                wrap_sink=self.telemetry.timed,  # send latency for /metrics
            )
            self.background.append(self.shipping.run)
            self.listeners.append(self.shipping.on_commit)
        api_server = None
        try:
            if cfg.api.enabled:
                from gateway.api.server import ApiServer

                api_server = ApiServer(cfg.api, self)
                self.api_address = api_server.start()
                self._write_runtime_file()
            if cfg.rules.files:  # rules see each batch as it is decoded: they act in milliseconds
                from gateway.rules.service import RulesService

                self.rules = RulesService(
                    cfg.rules,
                    cfg.location,
                    store=store,
                    on_writer=self.on_writer,
                    publish=ingest.publish,
                    settled=lambda: self.pipeline is not None and self.pipeline.settled(),
                    observers=[self.telemetry.observe_rule_outputs],
                )
                await self.rules.start()
                self.background.append(self.rules.run)
            self.listeners.append(self.telemetry.on_commit)
            self.pipeline = pipeline = Pipeline(
                source=ingest,
                redelivery=redelivery,
                decoder=decoder,
                writer=store,
                on_writer=self.on_writer,
                config=cfg.buffer,
                stats=self.stats,
                wakeup=wakeup,
                rules=self.rules,
                listeners=self.listeners,
                writer_waits=self.liveness.writer_alive,
            )
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
                tasks.create_task(pipeline.run(stop))
                tasks.create_task(self._retention_loop(stop, store))
                tasks.create_task(self._registry_loop(stop, store))
                tasks.create_task(self.liveness.run(stop, self._writer.submit))
                for task in self.background:
                    tasks.create_task(task(stop))
        finally:
            if api_server is not None:
                api_server.stop()
                runtime_file(cfg.buffer.path).unlink(missing_ok=True)
            await ingest.aclose()
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

    async def _registry_loop(self, stop: asyncio.Event, store: BufferStore) -> None:
        """Writes the device registry's changes once a second (gateway/buffer/devices.py)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=REGISTRY_WRITE_INTERVAL)
                return
            except TimeoutError:
                pass
            try:
                await self.on_writer(store.write_devices)
            except BufferStoreError as exc:
                logger.error("%s", exc)

    async def _retention_loop(self, stop: asyncio.Event, store: BufferStore) -> None:
        retention = self.config.buffer.retention
        shipping = self.shipping  # retention keeps what the sinks lack (None: no sinks)
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
                        protected_after=shipping.protected_position() if shipping else None,
                        drop_unsent=retention.on_full == "drop_oldest",
                        released_after=shipping.released_position() if shipping else None,
                    )
                )
            except BufferStoreError as exc:
                logger.error("%s", exc)
