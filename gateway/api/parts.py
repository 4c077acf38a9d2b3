"""What the API reads from the running gateway, as small interfaces (not the Gateway itself).

gateway/app.py's `Gateway` provides them all (`GatewayParts`); a part that is not configured
or not started yet is None. The API only reads: it never drives a part.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from gateway.api.telemetry import Telemetry
    from gateway.config import GatewayConfig
    from gateway.pipeline import IngestStats
    from gateway.rules.service import RulesService


class BufferReader(Protocol):
    """Reads the buffer from any thread (gateway.buffer.store.BufferStore)."""

    recycles: int
    reopens: int

    def reading(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...
    def query(self, sql: str, row_limit: int | None = None) -> pa.Table: ...
    def counters(self) -> dict[str, int]: ...


class IngestStatus(Protocol):
    """The broker connection as the ingest sees it (gateway.ingest.mqtt.MqttIngest)."""

    connected: threading.Event
    connects: int
    last_error: str | None

    def pending(self) -> int: ...


class SinksStatus(Protocol):
    """Each sink's and stream's backlog, age and last error (gateway.sinks.shipping)."""

    def status(self) -> list[dict[str, Any]]: ...


class HealthReport(Protocol):
    """Whether the gateway's threads make progress (gateway.liveness.Liveness)."""

    def report(self) -> dict[str, Any]: ...


class GatewayParts(Protocol):
    @property
    def config(self) -> GatewayConfig: ...
    @property
    def stats(self) -> IngestStats: ...
    @property
    def telemetry(self) -> Telemetry: ...
    @property
    def liveness(self) -> HealthReport: ...
    @property
    def store(self) -> BufferReader | None: ...
    @property
    def ingest(self) -> IngestStatus | None: ...
    @property
    def shipping(self) -> SinksStatus | None: ...
    @property
    def rules(self) -> RulesService | None: ...


class ApiView(Protocol):
    """What the views and metrics get from the API server (gateway.api.server.ApiServer)."""

    parts: GatewayParts
    telemetry: Telemetry
    seeded: bool  # devices' latest values were read from the buffer once after start

    def now(self) -> float: ...
    def reader(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...
    def buffer_bytes(self) -> int: ...
    def sinks(self) -> list[dict[str, Any]]: ...
