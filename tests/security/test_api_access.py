"""The local API: loopback by default, a bearer token on everything but /healthz when one is set,
no binding beyond loopback without a token, and no secret in any answer."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.apiclient import runtime_file
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    Subscription,
    parse_config,
)
from gateway.errors import ConfigError
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread

TOKEN = "tok-5a1d9e-secret"
MQTT_PASSWORD = "mqtt-pw-77c1"


def call(url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def gateway(broker: Mosquitto, tmp_path: Path) -> GatewayThread:
    config = GatewayConfig(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="gw-api",
            password=SecretStr(MQTT_PASSWORD),
            username="gateway",
            subscriptions=[Subscription(topic="sensors/#", qos=1)],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(port=0, token=SecretStr(TOKEN)),
    )
    return GatewayThread(config)


def test_every_endpoint_but_healthz_needs_the_token(gateway: GatewayThread) -> None:
    # The broker allows anonymous clients, so the unused username/password do not matter.
    with gateway as gw:
        assert gw.gateway.api_address is not None
        host, port = gw.gateway.api_address
        assert host == "127.0.0.1"  # loopback unless configured otherwise
        base = f"http://{host}:{port}"
        sql = json.dumps({"sql": "SELECT count(*) FROM readings"}).encode()
        assert call(f"{base}/healthz")[0] == 200
        for path, body in (("/readyz", None), ("/api/status", None), ("/api/sql", sql)):
            for token in (None, "wrong", TOKEN + "x", ""):
                status, text = call(base + path, token, body)
                assert status == 401, (path, token)
                assert TOKEN not in text
            assert call(base + path, TOKEN, body)[0] == 200
        status, text = call(f"{base}/api/status", TOKEN)
        assert TOKEN not in text and MQTT_PASSWORD not in text
        # The runtime file tells the CLI where the API is, never the token, and only to us.
        info = runtime_file(gw.gateway.config.buffer.path)
        assert TOKEN not in info.read_text()
        assert info.stat().st_mode & 0o077 == 0


def test_the_cli_needs_the_token_too_and_does_not_echo_it(gateway: GatewayThread) -> None:
    with gateway as gw:
        buffer = str(gw.gateway.config.buffer.path)
        base = [sys.executable, "-m", "gateway", "sql", "--buffer", buffer, "SELECT 1 AS one"]
        env = {k: v for k, v in os.environ.items() if k != "EDGE_GATEWAY_TOKEN"}
        refused = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode == 1
        assert "token" in refused.stderr
        wrong = subprocess.run(
            [*base, "--token", "guess"], capture_output=True, text=True, timeout=60, env=env
        )
        assert wrong.returncode == 1 and "guess" not in wrong.stderr
        allowed = subprocess.run(
            base,
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "EDGE_GATEWAY_TOKEN": TOKEN},
        )
        assert allowed.returncode == 0, allowed.stderr
        assert TOKEN not in allowed.stdout + allowed.stderr


def test_oversized_requests_are_refused_before_their_body_is_read(gateway: GatewayThread) -> None:
    with gateway as gw:
        assert gw.gateway.api_address is not None
        host, port = gw.gateway.api_address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            # Announce 64 MiB and send none of it: the answer comes from the headers alone.
            conn.putrequest("POST", "/api/sql")
            conn.putheader("Authorization", f"Bearer {TOKEN}")
            conn.putheader("Content-Length", str(64 * 1024 * 1024))
            conn.endheaders()
            assert conn.getresponse().status == 413
        finally:
            conn.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_binding_beyond_loopback_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        parse_config({"api": {"host": host}})
    assert parse_config({"api": {"host": host, "token": TOKEN}}).api.host == host
