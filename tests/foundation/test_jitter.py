"""Reconnect and retry jitter leaves the global `random` state alone: a gateway retrying in the
background (a sink that is down, a broker away) must not change what a seeded simulation or a
property-based test draws from `random` meanwhile."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.ingest.mqtt import _IngestClient
from gateway.sinks.config import RetryConfig
from gateway.sinks.forwarder import backoff_delay


def sink_retry() -> None:
    backoff_delay(5, RetryConfig(min_delay=0.5, max_delay=60.0))


def broker_reconnect() -> None:
    client = _IngestClient(callback_api_version=CallbackAPIVersion.VERSION2, client_id="jitter")
    client.reconnect_delay()


@pytest.mark.parametrize("jitter", [sink_retry, broker_reconnect])
def test_jitter_does_not_draw_from_the_global_random_state(jitter: Callable[[], None]) -> None:
    random.seed(2026)
    expected = [random.random() for _ in range(3)]
    random.seed(2026)
    jitter()
    assert [random.random() for _ in range(3)] == expected
