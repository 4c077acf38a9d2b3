"""The API token: required on every endpoint but /healthz and the dashboard's files when set,
and a must before the API binds beyond loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from apihelpers import Scenario
from pydantic import SecretStr

from gateway.api.server import ApiServer, is_loopback
from gateway.app import Gateway
from gateway.config import ApiConfig, BufferConfig, GatewayConfig, MqttConfig, parse_config
from gateway.errors import ConfigError
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread

TOKEN = "s3cret-api-token"
GUARDED = [
    "/readyz",
    "/metrics",
    "/api/status",
    "/api/devices",
    "/api/rules",
    "/api/alerts",
    "/api/sinks",
    "/api/quarantine",
    "/api/events",
]


def status_of(url: str, token: str | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            body = json.loads(exc.read())
        assert TOKEN not in json.dumps(body)
        return exc.code


def test_a_set_token_guards_every_endpoint_but_liveness_and_the_page(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = GatewayConfig(
        mqtt=MqttConfig(host=broker.host, port=broker.port, client_id="token-test"),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(port=0, token=SecretStr(TOKEN)),
    )
    with GatewayThread(config) as gw:
        assert gw.gateway.api_address is not None
        host, port = gw.gateway.api_address
        base = f"http://{host}:{port}"
        assert status_of(base + "/healthz") == 200
        assert status_of(base + "/") == 200
        assert status_of(base + "/static/app.js") == 200
        for path in GUARDED:
            assert status_of(base + path) == 401, path
            assert status_of(base + path, token="wrong") == 401, path
        sql = json.dumps({"sql": "SELECT 1"}).encode()
        assert status_of(base + "/api/sql", data=sql) == 401
        assert status_of(base + "/api/sql", token=TOKEN, data=sql) == 200
        for path in GUARDED:
            if path != "/api/events":  # a stream: its headers were checked in the API tests
                assert status_of(base + path, token=TOKEN) == 200, path


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "gateway.local"])
def test_binding_beyond_loopback_without_a_token_is_refused(host: str, tmp_path: Path) -> None:
    assert not is_loopback(host)
    # model_construct skips the config's own check: the server refuses on its own too.
    api = ApiConfig.model_construct(host=host, port=0, token=None, enabled=True)
    config = GatewayConfig(buffer=BufferConfig(path=tmp_path / "b.duckdb"))
    with pytest.raises(ConfigError, match="needs a token"):
        ApiServer(api, Gateway(config)).start()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5"])
def test_config_check_refuses_a_public_api_without_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match=f"api: binding to {host} needs a token"):
        parse_config({"api": {"host": host}})
    config = parse_config({"api": {"host": host, "token": "${GATEWAY_API_TOKEN:-t}"}})
    assert config.api.token is not None


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8787", "192.168.1.20:8787"])
def test_without_a_token_requests_naming_another_host_are_refused(
    scenario: Scenario, host: str
) -> None:
    """A page elsewhere reaching the loopback API through DNS rebinding names its own host."""
    request = urllib.request.Request(scenario.base + "/api/status", headers={"Host": host})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value as answer:
        assert answer.code == 403
        assert "only 127.0.0.1 and localhost" in json.loads(answer.read())["error"]
    port = scenario.base.rsplit(":", 1)[1]
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        request = urllib.request.Request(scenario.base + "/api/status", headers={"Host": name})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
