"""Edge gateway: MQTT ingest, local rules, a durable DuckDB buffer and upstream sinks."""

__version__ = "0.1.0"
