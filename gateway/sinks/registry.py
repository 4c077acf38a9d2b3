"""Maps a sink config's `type` to the class that implements it (imported only when used)."""

from __future__ import annotations

from typing import Any

from gateway.sinks.base import Sink
from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig


def build_sink(config: Any, gateway_id: str, buffer_id: str) -> Sink:
    """The sink for one `sinks:` entry; the driver is imported here, so a missing extra only
    matters to users who configure that sink. `buffer_id` is the buffer's `buffer_uid`."""
    if isinstance(config, SnowflakeSinkConfig):
        from gateway.sinks.snowflake import SnowflakeSink

        return SnowflakeSink(config, gateway_id, buffer_id)
    if isinstance(config, KafkaSinkConfig):
        from gateway.sinks.kafka import KafkaSink

        return KafkaSink(config, gateway_id)
    raise TypeError(f"unknown sink config {type(config).__name__}")
