"""The engine's counters, kept by the engine (readings, lateness, conditions) and by the action
runner (firings, cooldown, re-triggers, refused commands)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineStats:
    readings: int = 0
    evaluations: int = 0  # (reading, selecting rule) pairs evaluated
    late_dropped: int = 0  # older than its timeline's watermark: beyond the allowed lateness
    clock_skew_adjusted: int = 0  # device time too far from arrival: ran on the arrival time
    clock_skew_dropped: int = 0  # device time too far from arrival: not evaluated
    fired: int = 0
    primed: int = 0  # would have fired on a retained (known, not new) reading
    conditions_false: int = 0
    cooldown_suppressed: int = 0
    retrigger_ignored: int = 0
    queue_dropped: int = 0
    commands_refused: int = 0  # a filled-in topic would have reached another topic
