"""The local HTTP API: health, status and read-only SQL over the buffer."""
