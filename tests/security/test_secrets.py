"""Secrets (passwords, key passphrases, tokens) never show: not in `config check`, not in config
errors, not in the gateway's log at debug level, not when sinks fail to connect."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.services import free_port
from gateway.services.mosquitto import Mosquitto
from gateway.testing import publisher, wait_until

SECRETS = {
    "MQTT_PASSWORD": "mqtt-5ecret-a81",
    "KEY_PASSPHRASE": "key-5ecret-b22",
    "API_TOKEN": "api-5ecret-c93",
    "SNOWFLAKE_PASSWORD": "snow-5ecret-d04",
    "SASL_PASSWORD": "sasl-5ecret-e15",
    "REGISTRY_PASSWORD": "registry-5ecret-f26",
}


def config_text(broker_port: int, buffer: Path, **overrides: str) -> str:
    dead = free_port()  # sinks point at a port nobody listens on: they fail and log it
    text = f"""
gateway_id: secretive
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  client_id: gw-secrets
  username: gateway
  password: ${{MQTT_PASSWORD}}
buffer: {{path: {buffer}}}
api: {{port: 0, token: "${{API_TOKEN}}"}}
sinks:
  - type: kafka
    name: uplink
    bootstrap_servers: 127.0.0.1:{dead}
    retry: {{min_delay: 100ms, max_delay: 500ms}}
    format: avro
    schema_registry_url: http://127.0.0.1:{dead}
    schema_registry_username: registry
    schema_registry_password: ${{REGISTRY_PASSWORD}}
    client: {{security.protocol: SASL_PLAINTEXT, sasl.mechanism: PLAIN, sasl.username: edge}}
    client_secrets: {{sasl.password: "${{SASL_PASSWORD}}"}}
  - type: snowflake
    name: warehouse
    account: acme
    user: edge
    password: ${{SNOWFLAKE_PASSWORD}}
    database: EDGE
    schema: RAW
    host: 127.0.0.1
    port: {dead}
    protocol: http
    login_timeout: 2
    retry: {{min_delay: 100ms, max_delay: 500ms}}
log_level: debug
"""
    for old, new in overrides.items():
        text = text.replace(old, new)
    return text


def assert_no_secret(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **SECRETS}


def check(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_config_check_and_the_loaded_config_show_no_secret(
    tmp_path: Path, secret_env: dict[str, str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(1883, tmp_path / "b.duckdb"))
    result = check(path, secret_env)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr)
    config = load_config(path)
    assert_no_secret(repr(config) + str(config) + config.model_dump_json())
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == SECRETS["MQTT_PASSWORD"]


@pytest.mark.parametrize(
    ("where", "old", "new"),
    [
        (
            "a secret under a misspelt key",
            "  password: ${MQTT_PASSWORD}",
            "  pasword: ${MQTT_PASSWORD}",
        ),
        ("a secret where a number belongs", "  port: 1883", "  port: ${MQTT_PASSWORD}"),
        ("a secret where a list belongs", "client_id: gw-secrets", "client_id: [${API_TOKEN}]"),
        ("a literal secret in broken YAML", "log_level: debug", 'log_level: "api-5ecret-c93'),
    ],
)
def test_config_errors_never_repeat_a_secret(
    tmp_path: Path, secret_env: dict[str, str], where: str, old: str, new: str
) -> None:
    path = tmp_path / "gateway.yaml"
    text = config_text(1883, tmp_path / "b.duckdb").replace(old, new)
    assert new in text, where
    path.write_text(text)
    result = check(path, secret_env)
    assert result.returncode == 1, where
    assert "invalid configuration" in result.stderr
    assert_no_secret(result.stdout + result.stderr)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert_no_secret(str(raised.value))


def test_the_gateway_log_at_debug_shows_no_secret_while_sinks_fail(
    broker: Mosquitto, tmp_path: Path, secret_env: dict[str, str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(broker.port, tmp_path / "b.duckdb"))
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=secret_env,
        )
    try:
        assert wait_until(lambda: "MQTT connected" in log.read_text(), timeout=30)
        pub = publisher(broker.host, broker.port, client_id="secrets-publisher")
        for i in range(10):  # readings to ship, so both sinks try (and fail) to connect
            pub.publish("sensors/plant/dev/seq", str(i), qos=1).wait_for_publish(5)
        pub.loop_stop()
        # The warehouse sink has failed and said so, after its connector tried to log in (its
        # debug log shows the login request), before we look.
        assert wait_until(
            lambda: "sink 'warehouse'" in log.read_text() and "login-request" in log.read_text(),
            timeout=60,
            interval=0.5,
        ), log.read_text()[-3000:]
        time.sleep(1.0)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log.read_text(errors="replace")
    assert "DEBUG" in text or "level=debug" in text
    assert_no_secret(text)
