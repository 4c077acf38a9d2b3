"""Maps a sink config's `type` to the class that implements it.

The classes are named as "module:Class" and imported when a sink of that type is built, so a
missing driver (an extra not installed) only matters to users who configure that sink.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, cast

from gateway.errors import ConfigError
from gateway.sinks.base import Sink
from gateway.sinks.config import KafkaSinkConfig, SnowflakeSinkConfig

SINK_CLASSES: dict[str, str] = {
    "kafka": "gateway.sinks.kafka:KafkaSink",
    "snowflake": "gateway.sinks.snowflake:SnowflakeSink",
}


class SinkClass(Protocol):
    """How every sink class is built: its config, the gateway id, the buffer's `buffer_uid`."""

    def __call__(self, config: Any, gateway_id: str, buffer_id: str, /) -> Sink: ...


def sink_class(type_: str) -> SinkClass:
    """The class for a config `type`; ConfigError naming the known types for any other."""
    target = SINK_CLASSES.get(type_)
    if target is None:
        known = ", ".join(sorted(SINK_CLASSES))
        raise ConfigError("sinks", [f"type: unknown sink type {type_!r} (known: {known})"])
    module, _, name = target.partition(":")
    return cast(SinkClass, getattr(importlib.import_module(module), name))


def build_sink(
    config: SnowflakeSinkConfig | KafkaSinkConfig, gateway_id: str, buffer_id: str
) -> Sink:
    """The sink for one `sinks:` entry."""
    return sink_class(config.type)(config, gateway_id, buffer_id)
