"""Shipping: the sinks built from config and one forwarder per sink and stream, run together;
answers which buffer position every sink has confirmed, and each forwarder's figures."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa

from gateway.buffer import outbox
from gateway.errors import ConfigError
from gateway.sinks.base import Sink
from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig
from gateway.sinks.forwarder import BUFFER_ERRORS, Forwarder, OnWriter, SinkBuffer
from gateway.sinks.registry import build_sink

logger = logging.getLogger(__name__)

SinkConfigs = list[SnowflakeSinkConfig | KafkaSinkConfig]


def check_names(configs: SinkConfigs) -> None:
    names = [c.name for c in configs]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise ConfigError("sinks", [f"sinks: name {n!r} is used twice" for n in doubles])


class Shipping:
    """Owns the sinks and their forwarders; `run(stop)` until stop is set, then closes sinks."""

    def __init__(
        self,
        configs: SinkConfigs,
        gateway_id: str,
        store: SinkBuffer,
        on_writer: OnWriter,
        readings_head: Callable[[], int] | None = None,
        release: Collection[str] = (),
        wrap_sink: Callable[[Sink], Sink] = lambda sink: sink,
    ) -> None:
        """`readings_head`: the newest committed reading's position, known without a query;
        `release`: disabled sinks whose unconfirmed readings retention may delete
        (`buffer.retention.release_disabled_sinks`); every other sink's cursor is kept;
        `wrap_sink`: what each forwarder sends through (the gateway's send-time metrics)."""
        check_names(configs)
        self.store = store
        self.configs = {c.name: c for c in configs if c.enabled}
        # A disabled sink has no forwarder, but its cursor in the buffer still says what it
        # lacks: retention keeps that for when it is enabled again, unless it is released.
        disabled = [c.name for c in configs if not c.enabled and "readings" in c.streams]
        self.kept_disabled = [name for name in disabled if name not in release]
        self.released_disabled = [name for name in disabled if name in release]
        for name in sorted(set(release) & set(self.configs)):
            logger.info(
                "sink %s is enabled: retention keeps its unsent readings although "
                "buffer.retention.release_disabled_sinks names it",
                name,
            )
        self.sinks: dict[str, Sink] = {
            name: build_sink(c, gateway_id, store.buffer_uid) for name, c in self.configs.items()
        }
        self.forwarders: list[Forwarder] = []
        for name, config in self.configs.items():
            for stream in config.streams:
                self.forwarders.append(
                    Forwarder(
                        wrap_sink(self.sinks[name]),
                        stream,
                        store,
                        on_writer,
                        batching=config.batching,
                        retry=config.retry,
                        max_bytes_per_s=config.max_bytes_per_s,
                        head=readings_head if stream == "readings" else None,
                    )
                )

    async def run(self, stop: asyncio.Event) -> None:
        async def tell_sinks() -> None:
            await stop.wait()  # a sink waiting long on its upstream may give up at once
            for sink in self.sinks.values():
                sink.stop()

        notifier = asyncio.create_task(tell_sinks())
        try:
            async with asyncio.TaskGroup() as tasks:
                for forwarder in self.forwarders:
                    tasks.create_task(forwarder.run(stop))
        finally:
            notifier.cancel()
            for sink in self.sinks.values():
                try:
                    await sink.aclose()
                except Exception as exc:
                    logger.warning("sink %s: close failed: %s", sink.name, exc)

    async def on_commit(self, _readings: pa.Table) -> None:
        """Batch listener: new readings are in the buffer; idle forwarders look now."""
        for forwarder in self.forwarders:
            if forwarder.stream == "readings":
                forwarder.wake.set()

    def protected_position(self) -> int | None:
        """The last reading every sink but the released disabled ones has confirmed; retention
        keeps everything after it (None: no sink to keep readings for)."""
        positions = [f.position for f in self.forwarders if f.stream == "readings"]
        if not all(f.started.is_set() for f in self.forwarders if f.stream == "readings"):
            return 0  # cursors not loaded yet: protect everything
        stored = self._stored_cursors(self.kept_disabled)
        if stored is None:
            return 0
        positions += stored
        return min(positions) if positions else None

    def released_position(self) -> int | None:
        """The last reading every released disabled sink has confirmed: what retention deletes
        after it is counted as given up (None: no sink released)."""
        stored = self._stored_cursors(self.released_disabled)
        if stored is None:
            return 0  # cannot read them: count all that goes as given up
        return min(stored) if stored else None

    def _stored_cursors(self, names: list[str]) -> list[int] | None:
        """Disabled sinks' cursors as their last run left them; None when the buffer fails (the
        purge then fails too, and retries at its next check)."""
        if not names:
            return []
        try:
            with self.store.reading() as con:
                return [outbox.load_cursor(con, name, "readings") for name in names]
        except BUFFER_ERRORS as exc:
            logger.warning("retention: cannot read the cursors of disabled sinks: %s", exc)
            return None

    def status(self) -> list[dict[str, Any]]:
        """One entry per sink and stream, for the API and `edge-gateway sinks`."""
        now = time.time()
        entries = []
        with self.store.reading() as con:
            for forwarder in self.forwarders:
                stats = forwarder.stats
                entries.append(
                    {
                        "sink": stats.sink,
                        "type": self.configs[stats.sink].type,
                        "stream": stats.stream,
                        **outbox.backlog(con, stats.stream, stats.position, now),
                        "rows_per_s": round(stats.rows_per_second(now), 1),
                        "sent_rows": stats.sent_rows,
                        "sent_batches": stats.sent_batches,
                        "sent_bytes": stats.sent_bytes,
                        "dead_letters": stats.dead_letters,
                        "failures": stats.failures,
                        "last_error": stats.last_error,
                        "last_error_at": stats.last_error_at,
                        "last_sent_at": stats.last_sent_at,
                    }
                )
        return entries
