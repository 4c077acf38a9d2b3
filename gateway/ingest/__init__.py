"""Ingest: MQTT subscription, topic routing and payload decoding into reading batches."""
