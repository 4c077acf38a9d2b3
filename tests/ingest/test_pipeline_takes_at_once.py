"""A reading waits for no other on its way to the rules: the pipeline takes what is pending
whenever its loop comes round, not once a chunk has gathered or some milliseconds passed. The
clock is frozen here, so a pipeline that waited for time to pass would never hand the reading to
the rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import gateway.pipeline as pipeline_module
from gateway.buffer.store import BufferStore
from gateway.config import BufferConfig, GatewayConfig, MqttConfig
from gateway.ingest.decoding import BatchDecoder
from gateway.ingest.redelivery import RedeliveryFilter
from gateway.ingest.routing import TopicRouter
from gateway.model import RawMessage, ReadingColumns
from gateway.pipeline import IngestStats, Pipeline, Wakeup


class OneMessage:
    """A message source holding one QoS 0 reading."""

    def __init__(self) -> None:
        self.messages = [
            RawMessage("sensors/home/probe/level", b"31", 0, 0, False, False, time.time())
        ]

    def take(self, max_count: int, max_bytes: int | None = None) -> list[RawMessage]:
        taken, self.messages = self.messages[:max_count], self.messages[max_count:]
        return taken

    def pending(self) -> int:
        return len(self.messages)

    def acks_confirmed(self) -> int:
        return 0

    def ack(self, messages: list[RawMessage], batch: int) -> None:
        return None

    def stop(self) -> None:
        return None


class Rules:
    def __init__(self) -> None:
        self.seen: list[int] = []
        self.evaluated = asyncio.Event()

    def evaluate(self, columns: ReadingColumns, retained: list[int]) -> None:
        self.seen.append(len(columns))
        self.evaluated.set()


def run_until_evaluated(store: BufferStore, rules: Rules) -> None:
    """Run a pipeline over OneMessage until the rules saw it."""
    config = GatewayConfig(mqtt=MqttConfig(host="127.0.0.1", port=1883))
    redelivery = RedeliveryFilter()

    async def main() -> None:
        async def on_writer(fn: object, *args: object) -> object:
            return fn(*args)  # type: ignore[operator]

        stop = asyncio.Event()
        pipeline = Pipeline(
            source=OneMessage(),
            redelivery=redelivery,
            decoder=BatchDecoder(TopicRouter(config.routes), redelivery, 1 << 20),
            writer=store,
            on_writer=on_writer,
            config=BufferConfig(path=store.path),
            stats=IngestStats(),
            wakeup=Wakeup(),
            rules=rules,
        )
        task = asyncio.create_task(pipeline.run(stop))
        try:
            await asyncio.wait_for(rules.evaluated.wait(), 2.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10.0)

    asyncio.run(main())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BufferStore]:
    buffer = BufferStore(tmp_path / "buffer.duckdb")
    yield buffer
    buffer.close()


def test_a_lone_reading_reaches_the_rules_without_waiting_for_time_to_pass(
    store: BufferStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = time.monotonic()
    # The pipeline's clock only (the event loop keeps its own, for the test's timeouts).
    clock = SimpleNamespace(monotonic=lambda: frozen, time=time.time, sleep=time.sleep)
    monkeypatch.setattr(pipeline_module, "time", clock)
    rules = Rules()
    run_until_evaluated(store, rules)
    assert rules.seen == [1]


def test_the_rules_see_a_reading_before_its_arrow_table_is_built(
    store: BufferStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command leaves without waiting for the table the buffer needs: the rules read the
    decoded lists, and the table is built after them."""
    order: list[str] = []
    build = ReadingColumns.table

    def table(self: ReadingColumns) -> object:
        order.append("table")
        return build(self)

    monkeypatch.setattr(ReadingColumns, "table", table)

    class Ordered(Rules):
        def evaluate(self, columns: ReadingColumns, retained: list[int]) -> None:
            order.append("rules")
            super().evaluate(columns, retained)

    rules = Ordered()
    run_until_evaluated(store, rules)
    assert order[:2] == ["rules", "table"]
