"""Configuration: every problem is reported with its key path; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_config, parse_config
from gateway.errors import ConfigError


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "gw.yaml")
    return info.value.problems


def test_defaults_are_a_working_config() -> None:
    config = parse_config({})
    assert config.mqtt.port == 1883
    assert config.mqtt.clean_start is False  # persistent session by default
    assert config.buffer.flush_interval == 0.05


def test_port_out_of_range_names_its_path() -> None:
    assert problems({"mqtt": {"port": 70000}}) == ["mqtt.port: must be 1..65535"]


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        {
            "mqtt": {"subscriptions": [{"topic": "a/#/b", "qos": 3}], "hots": "x"},
            "buffer": {"flush_interval": "soon", "max_payload_bytes": "lots"},
        }
    )
    assert (
        "mqtt.subscriptions.0.topic: 'a/#/b': '#' must be a whole level and the last one" in found
    )
    assert any(p.startswith("mqtt.subscriptions.0.qos:") for p in found)
    assert "mqtt.hots: unknown key" in found
    assert any(p.startswith("buffer.flush_interval: 'soon' is not a duration") for p in found)
    assert any(p.startswith("buffer.max_payload_bytes: 'lots' is not a size") for p in found)


def test_route_without_device_is_refused() -> None:
    assert problems({"routes": [{"pattern": "plant/{metric}"}]}) == [
        "routes.0: 'plant/{metric}': needs a {device} level or a fixed `device:`"
    ]


def test_secrets_come_from_the_environment_and_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "hunter2")
    config = parse_config({"mqtt": {"username": "gw", "password": "${MQTT_PASSWORD}"}})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.model_dump())


def test_missing_environment_variable_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    assert problems({"mqtt": {"password": "${NOPE_NOT_SET}"}}) == [
        "mqtt.password: environment variable NOPE_NOT_SET is not set"
    ]


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("mqtt:\n  port: [1883\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert info.value.problems[0].startswith("line ")


def test_wrong_type_at_top_level(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.yaml")


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "deploy" / "gateway.example.yaml"
    config = load_config(example)
    assert config.mqtt.subscriptions
    assert config.warnings() == []  # every route it lists is subscribed to
    assert config.routes == GatewayConfig().routes  # it shows the default routes
