"""The gateway's exceptions, one tree; every message names the place a user can act on.

GatewayError
 ├── ConfigError            a config file or value is wrong (names the file and key path)
 ├── DecodeError            a message could not become readings (names topic and reason)
 ├── RuleError              a rule file or rule is wrong (names file, rule id and field)
 ├── BufferStoreError       the local buffer cannot be opened, written or queried
 │    └── ReadOnlySqlError  a statement tried to write, attach or reach files
 ├── SinkError              an upstream sink failed (names the sink)
 │    ├── SinkBackpressureError  retry later (carries retry_after seconds)
 │    └── SinkRejectedError      records refused for good (go to the dead-letter table)
 └── BrokerError            the MQTT broker cannot be reached or refused us
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration file or value is invalid; `problems` lists each `path: message`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid configuration\n{lines}")


class DecodeError(GatewayError):
    """A message payload could not be decoded into readings."""


class RuleError(GatewayError):
    """A rule file or a rule inside it is invalid."""


class BufferStoreError(GatewayError):
    """The local DuckDB buffer could not be opened, written or queried."""


class ReadOnlySqlError(BufferStoreError):
    """A SQL statement was refused because the SQL surface is read-only."""


class SinkError(GatewayError):
    """An upstream sink failed; the forwarder retries."""

    def __init__(self, sink: str, message: str) -> None:
        self.sink = sink
        super().__init__(f"sink {sink!r}: {message}")


class SinkBackpressureError(SinkError):
    """The sink asks to be retried later."""

    def __init__(self, sink: str, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(sink, message)


class SinkRejectedError(SinkError):
    """The sink refused records for good; they go to the dead-letter table."""


class BrokerError(GatewayError):
    """The MQTT broker could not be reached or refused the connection."""
