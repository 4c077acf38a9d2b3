"""Fixtures for simulator tests: a subscriber that records everything a broker delivers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from simhelpers import Collector, subscribe_all

from gateway.services.mosquitto import Mosquitto


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[Collector]:
    """Everything the broker delivers, from before the test publishes anything."""
    c = subscribe_all(broker)
    yield c
    c.client.disconnect()
    c.client.loop_stop()
