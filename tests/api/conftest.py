"""One gateway for all the API tests: a real Mosquitto, a rule file, a Kafka sink on a real
Tansu and a Kafka sink whose broker is down; a known set of messages is published once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apihelpers import RULES, Scenario, free_port, kafka_sink, publish_scenario

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.services.tansu import Tansu
from gateway.testing import GatewayThread, wait_until


@pytest.fixture(scope="package")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(persistence=False, workdir=tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="package")
def scenario(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("gateway")
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    with Tansu() as kafka:
        config = GatewayConfig(
            gateway_id="api-test",
            mqtt=MqttConfig(
                host=mosquitto.host,
                port=mosquitto.port,
                client_id="api-test-gateway",
                subscriptions=[
                    Subscription(topic="sensors/#"),
                    Subscription(topic="zigbee2mqtt/+"),
                ],
            ),
            buffer=BufferConfig(path=tmp / "buffer.duckdb"),
            api=ApiConfig(port=0),
            rules=RulesConfig(files=[rules]),
            sinks=[
                kafka_sink("upstream", kafka.bootstrap_servers),
                kafka_sink("offline", f"127.0.0.1:{free_port()}"),
            ],
        )
        with GatewayThread(config) as gw:
            assert gw.gateway.api_address is not None
            host, port = gw.gateway.api_address
            sent = publish_scenario(mosquitto.host, mosquitto.port)
            scenario = Scenario(gw, f"http://{host}:{port}", sent, "upstream", "offline")
            assert wait_until(lambda: gw.gateway.stats.messages >= sent.messages, 30)
            yield scenario
