"""Upstream sinks (Snowflake, Kafka) and the forwarder that feeds each from the buffer."""
