"""The local buffer: a DuckDB file holding readings, quarantine, alerts, sink cursors and state."""
