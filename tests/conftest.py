"""Shared fixtures: a real Mosquitto per test on a free loopback port; gateways as child
processes, each killed when its test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayProcess


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto for one test, with persistence so restarts keep sessions."""
    with Mosquitto(persistence=True, workdir=tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
def start_gateway() -> Iterator[Callable[[Path], GatewayProcess]]:
    """`start_gateway(config)` runs `edge-gateway run -c config` as a child process."""
    started: list[GatewayProcess] = []

    def start(config: Path) -> GatewayProcess:
        gateway = GatewayProcess(config).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.kill()
