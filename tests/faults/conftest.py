"""Fixtures for the fault suite: one real Tansu and one real fakesnow for the whole run, and a
scripted MQTT broker per test that asks for one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scripted_broker import ScriptedBroker

from gateway.services.fakesnow import FakeSnow
from gateway.services.tansu import Tansu


@pytest.fixture(scope="session")
def tansu() -> Iterator[Tansu]:
    with Tansu() as broker:
        yield broker


@pytest.fixture(scope="session")
def fakesnow() -> Iterator[FakeSnow]:
    with FakeSnow() as server:
        server.create_database("EDGE")
        yield server


@pytest.fixture
def scripted() -> Iterator[ScriptedBroker]:
    broker = ScriptedBroker()
    yield broker
    broker.close()
