"""A sink that cannot reach its upstream says so, with the reason, soon after its first try."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from sinkhelpers import WriterThread, fill, readings

from gateway.buffer.store import BufferStore
from gateway.logs import RepeatFilter
from gateway.services import free_port
from gateway.sinks.config import KafkaSinkConfig
from gateway.sinks.shipping import Shipping


def test_kafka_with_sasl_and_a_registry_both_down_logs_why_within_seconds(
    store: BufferStore, on_writer: WriterThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the broker's or the registry's port: the first failed send is a
    warning naming the sink and librdkafka's reason, a few seconds after the first try."""
    config = KafkaSinkConfig.model_validate(
        {
            "type": "kafka",
            "name": "secure",
            "bootstrap_servers": f"127.0.0.1:{free_port()}",
            "format": "avro",
            "schema_registry_url": f"http://127.0.0.1:{free_port()}",
            "schema_registry_username": "registry",
            "schema_registry_password": "registry-secret",
            "client": {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"},
            "client_secrets": {"sasl.username": "edge", "sasl.password": "kafka-secret"},
            "streams": ["readings"],
            "batching": {"max_rows": 1000, "max_age": "10ms"},
        }
    )
    fill(store, readings(100))
    shipping = Shipping([config], "gw1", store, on_writer, lambda: store.next_reading_id - 1)
    [forwarder] = shipping.forwarders

    def warnings() -> list[logging.LogRecord]:
        # Only this sink's: gateways of other test modules may still be retrying theirs.
        return [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and "'secure'" in r.getMessage()
        ]

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(shipping.run(stop))
        try:
            await forwarder.started.wait()
            started = time.monotonic()  # a batch is due at once: 100 rows, max_age 10ms
            while not warnings() and time.monotonic() - started < 15:
                assert not task.done()
                await asyncio.sleep(0.05)
            return time.monotonic() - started
        finally:
            stop.set()
            await task

    with caplog.at_level(logging.WARNING):
        elapsed = asyncio.run(scenario())
    assert warnings(), "no warning within 15 s of the first try"
    first = warnings()[0].getMessage()
    assert elapsed < 5, f"the first warning came {elapsed:.1f}s after the first try: {first}"
    assert "sink 'secure'" in first and "cannot reach Kafka" in first
    assert "Connection refused" in first  # librdkafka's reason, not a bare "transport failure"
    assert (
        forwarder.stats.last_error is not None
        and "Connection refused" in forwarder.stats.last_error
    )


def test_one_sinks_retries_do_not_hold_back_another_sinks_first_warning() -> None:
    repeat = RepeatFilter(window=60, burst=2, clock=lambda: 1000.0)

    def retry(sink: str) -> logging.LogRecord:
        record = logging.LogRecord(
            "gateway.sinks.forwarder", logging.WARNING, "", 0, "%s; retry", (sink,), None
        )
        record.sink = sink
        return record

    assert [repeat.filter(retry("noisy")) for _ in range(4)] == [True, True, False, False]
    assert repeat.filter(retry("quiet"))
