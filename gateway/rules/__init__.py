"""The local rules engine: rule files compiled into a pure engine (readings and ticks in)."""
