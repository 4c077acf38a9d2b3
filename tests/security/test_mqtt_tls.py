"""MQTT over TLS against a real Mosquitto that demands a client certificate from a test CA and a
username and password: the gateway gets in with the right ones only, and no secret shows in
logs, errors or the API."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from certs import Issued, TestCA
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from gateway.api.server import ApiServer
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    ReconnectConfig,
    Subscription,
    TlsConfig,
)
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, wait_until

PASSWORD = "pw-3f9c-very-secret"
KEY_PASSPHRASE = b"key-passphrase-7d1e"


@dataclass
class TlsBroker:
    broker: Mosquitto
    ca: TestCA
    gateway_cert: Issued
    publisher_cert: Issued


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    ca = TestCA(tmp_path / "pki")
    server = ca.server()
    passwords = tmp_path / "pki" / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "gateway", PASSWORD],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "publisher", "pub-pass"],
        check=True,
        capture_output=True,
    )
    settings = "\n".join(
        [
            "allow_anonymous false",
            f"password_file {passwords}",
            f"cafile {ca.cert}",
            f"certfile {server.cert}",
            f"keyfile {server.key}",
            "require_certificate true",
        ]
    )
    with Mosquitto(workdir=tmp_path / "mosquitto", extra_config=settings) as broker:
        yield TlsBroker(
            broker,
            ca,
            ca.client("gateway", "edge-gateway", passphrase=KEY_PASSPHRASE),
            ca.client("publisher", "publisher"),
        )


def gateway_config(setup: TlsBroker, tmp_path: Path, **mqtt: object) -> GatewayConfig:
    values: dict[str, object] = {
        "host": setup.broker.host,
        "port": setup.broker.port,
        "client_id": "gw-tls",
        "username": "gateway",
        "password": SecretStr(PASSWORD),
        "tls": TlsConfig(
            ca_file=setup.ca.cert,
            cert_file=setup.gateway_cert.cert,
            key_file=setup.gateway_cert.key,
            key_password=SecretStr(KEY_PASSPHRASE.decode()),
        ),
        "subscriptions": [Subscription(topic="sensors/#", qos=1)],
        "reconnect": ReconnectConfig(min_delay=0.1, max_delay=0.5),
    }
    values.update(mqtt)
    return GatewayConfig(
        mqtt=MqttConfig.model_validate(values),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(enabled=False),
        log_level="debug",
    )


def tls_publisher(tls: TlsBroker) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-publisher")
    client.tls_set(
        ca_certs=str(tls.ca.cert),
        certfile=str(tls.publisher_cert.cert),
        keyfile=str(tls.publisher_cert.key),
    )
    client.username_pw_set("publisher", "pub-pass")
    client.connect(tls.broker.host, tls.broker.port)
    client.loop_start()
    return client


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert KEY_PASSPHRASE.decode() not in text


def test_gateway_ingests_over_tls_with_client_certificate_and_password(
    tls_broker: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config(tls_broker, tmp_path)
    with caplog.at_level(logging.DEBUG), GatewayThread(config) as gw:
        pub = tls_publisher(tls_broker)
        for i in range(20):
            pub.publish(f"sensors/plant/dev{i % 4}/seq", str(i), qos=1).wait_for_publish(5)
        assert wait_until(lambda: gw.gateway.stats.readings >= 20, timeout=20)
        pub.loop_stop()
        status = ApiServer(ApiConfig(port=0), gw.gateway).status()
    assert_no_secret(caplog.text)
    assert_no_secret(json.dumps(status))
    assert_no_secret(repr(config) + str(config) + config.model_dump_json())


def test_a_wrong_password_is_refused_and_the_error_does_not_repeat_it(
    tls_broker: TlsBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password-41b2"
    config = gateway_config(tls_broker, tmp_path, password=SecretStr(wrong))
    gw = GatewayThread(config)
    with caplog.at_level(logging.DEBUG), pytest.raises(TimeoutError):
        gw.start(timeout=5)
    ingest = gw.gateway.ingest
    assert ingest is not None and ingest.connects == 0
    assert "refused" in str(ingest.last_error).lower()
    assert wrong not in caplog.text and wrong not in str(ingest.last_error)


@pytest.mark.parametrize("missing", ["client certificate", "trusted CA"])
def test_without_a_client_certificate_or_with_an_untrusted_broker_no_connection_is_made(
    tls_broker: TlsBroker, tmp_path: Path, missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    if missing == "client certificate":
        tls = TlsConfig(ca_file=tls_broker.ca.cert)
    else:  # the broker's certificate is signed by a CA the gateway does not trust
        other = TestCA(tmp_path / "other-pki", name="some other CA")
        tls = TlsConfig(
            ca_file=other.cert,
            cert_file=tls_broker.gateway_cert.cert,
            key_file=tls_broker.gateway_cert.key,
            key_password=SecretStr(KEY_PASSPHRASE.decode()),
        )
    config = gateway_config(tls_broker, tmp_path, tls=tls)
    gw = GatewayThread(config)
    with caplog.at_level(logging.DEBUG), pytest.raises(TimeoutError):
        gw.start(timeout=4)
    ingest = gw.gateway.ingest
    assert ingest is not None and ingest.connects == 0
    assert ingest.last_error is not None
    assert_no_secret(caplog.text)
