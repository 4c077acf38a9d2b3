"""Triggers: one small state machine per trigger type, keeping separate state per device/metric.

A runner gets each key's readings in arrival order, on its device's timeline (late ones within
the allowed lateness are flagged by `t < last_t`), asks its host to arm timers, and calls
`host.fire` /
`host.clear` on transitions. It never reads a clock: time arrives with readings and timers.

- `base`: what every runner shares (the host it talks to, keys, phases, the base class);
- one module per trigger type: `threshold`, `state`, `rate`, `silence`, `window`,
  `schedule`, `sun`;
- what several types share: `crossing` (a numeric level and the per-key state of crossing
  it: threshold, rate, window), `series` (the sliding series of rate and sliding windows),
  `clock` (schedule and sun: armed on the clock, with a misfire grace after a restart);
- `registry`: the table from a rule's `trigger.type` to the runner class.
"""
