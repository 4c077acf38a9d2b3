"""The demo's simulated home: plays the bundled `demo-home` scenario against a broker."""

from __future__ import annotations

import threading

from simulators.runner import ScenarioRunner
from simulators.scenario import load_scenario


def run_home(
    host: str,
    port: int,
    stop: threading.Event,
    *,
    scenario: str = "demo-home",
    seed: int | None = None,
) -> int:
    """Play the scenario in real time until it ends or `stop` is set; returns messages published."""
    runner = ScenarioRunner(load_scenario(scenario), host, port, seed=seed, client_prefix="demo")
    return runner.run(stop).published
