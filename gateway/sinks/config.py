"""Configuration of upstream sinks: one pydantic model per sink type, a union on `type`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.units import Duration, Size

Stream = Literal["readings", "alerts"]
STREAMS: tuple[Stream, ...] = ("readings", "alerts")
_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingConfig(_Model):
    """A batch leaves when a limit is reached: rows, bytes (in the buffer) or age of the oldest."""

    max_rows: int = Field(default=50_000, ge=1, le=1_000_000)
    max_bytes: Size = 16 * 1024**2
    max_age: Duration = 1.0


class RetryConfig(_Model):
    """Capped exponential backoff with full jitter; a sink is retried forever."""

    min_delay: Duration = 0.5
    max_delay: Duration = Field(default=60.0, gt=0)


class _SinkBase(_Model):
    name: str = Field(pattern=_NAME)  # stable: cursors, dead letters and logs use it
    enabled: bool = True
    streams: list[Stream] = Field(default_factory=lambda: list(STREAMS), min_length=1)
    batching: BatchingConfig = BatchingConfig()
    retry: RetryConfig = RetryConfig()
    max_bytes_per_s: Size | None = None  # bandwidth cap for this sink (None: uncapped)


class SnowflakeSinkConfig(_SinkBase):
    """PUT of a Parquet file per batch to an internal stage, then COPY INTO (see docs/sinks.md)."""

    type: Literal["snowflake"]
    account: str
    user: str
    password: SecretStr | None = None
    private_key_file: Path | None = None
    private_key_passphrase: SecretStr | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str
    schema_: str = Field(alias="schema")
    layout: Literal["typed", "kafka_connector"] = "typed"
    table: str = "READINGS"
    alerts_table: str = "ALERTS"
    stage: str = "EDGE_GATEWAY_STAGE"
    create_objects: bool = True  # create database objects that are missing
    # Connection overrides for a local emulator or a private link endpoint.
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["https", "http"] = "https"
    login_timeout: Duration = 60.0
    # How long one request may keep retrying before the sink reports the failure (and the
    # forwarder backs off); without it the connector retries a dead uplink silently.
    network_timeout: Duration = 120.0
    max_record_bytes: Size = 16 * 1024**2  # Snowflake's VARIANT / VARCHAR limit

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("table", "alerts_table", "stage", "database", "schema_")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", value):
            raise ValueError(f"{value!r} is not a plain Snowflake identifier")
        return value.upper()

    @model_validator(mode="after")
    def _one_credential(self) -> SnowflakeSinkConfig:
        if (self.password is None) == (self.private_key_file is None):
            raise ValueError("set exactly one of `password` and `private_key_file`")
        return self


class KafkaSinkConfig(_SinkBase):
    """An idempotent producer; one message per reading, keyed by device (see docs/sinks.md)."""

    type: Literal["kafka"]
    bootstrap_servers: str
    topic: str = "edge.{site}.{metric}"  # {site}, {metric}, {device}, {gateway_id} and any tag
    alerts_topic: str = "edge.alerts"
    format: Literal["json", "avro"] = "json"
    schema_registry_url: str | None = None  # Confluent wire format when set
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "zstd"
    create_topics: bool = True
    partitions: int = Field(default=3, ge=1)  # for topics the sink creates
    replication_factor: int = Field(default=1, ge=1)
    delivery_timeout: Duration = 120.0
    # Passed to librdkafka as they are: security.protocol, sasl.mechanism, sasl.username,
    # ssl.ca.location, ... (see docs/sinks.md); secret values may use ${ENV}.
    client: dict[str, str] = Field(default_factory=dict)
    client_secrets: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("topic", "alerts_topic")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format_map(_AnyKey())
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{value!r} is not a topic template: {exc}") from None
        return value


class _AnyKey(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return key


SinkConfig = Annotated[SnowflakeSinkConfig | KafkaSinkConfig, Field(discriminator="type")]
