"""The local HTTP API: health, metrics, JSON views, read-only SQL, live events and the dashboard."""
