"""Shared fixtures: a real Mosquitto per test on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.services.mosquitto import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto for one test, with persistence so restarts keep sessions."""
    with Mosquitto(persistence=True, workdir=tmp_path / "mosquitto") as running:
        yield running
