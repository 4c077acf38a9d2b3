"""The files in deploy/: the systemd unit verifies, the compose file and Dockerfile say what an
operator relies on, and the configs they ship are accepted by Mosquitto and by the gateway."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import load_config
from gateway.services.mosquitto import find_mosquitto
from gateway.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "edge-gateway.service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_is_hardened_and_keeps_state_in_var_lib() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["User"] == ["edge-gateway"] and s["Group"] == ["edge-gateway"]
    assert s["StateDirectory"] == ["edge-gateway"]
    assert s["WorkingDirectory"] == ["/var/lib/edge-gateway"]
    assert s["ReadWritePaths"] == ["/var/lib/edge-gateway"]
    assert s["ProtectSystem"] == ["strict"]
    for flag in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert s[flag] == ["yes"], flag
    assert s["CapabilityBoundingSet"] == [""]
    assert s["Restart"] == ["always"] and s["RestartSec"]
    assert s["KillSignal"] == ["SIGTERM"] and s["TimeoutStopSec"]
    assert s["ExecStart"][0].startswith("/opt/edge-gateway/.venv/bin/edge-gateway run ")


def test_systemd_unit_feeds_a_watchdog() -> None:
    # gateway/liveness.py: READY=1 once running, then WATCHDOG=1 only while every part moves.
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    (watchdog,) = s["WatchdogSec"]
    assert 10 <= int(watchdog) <= 120  # the gateway's stall threshold is WatchdogSec, >= 10 s
    assert "PYTHONFAULTHANDLER=1" in s["Environment"]  # stacks in the journal on SIGABRT
    assert int(s["TimeoutStartSec"][0]) >= 90  # READY=1 waits for the buffer to open
    assert "AF_UNIX" in s["RestrictAddressFamilies"][0].split()  # the notify socket


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # The unit starts /opt/edge-gateway/.venv/bin/edge-gateway, which is not installed on a test
    # machine, and `verify` checks that ExecStart exists. Verify a copy that differs only there:
    # it points at this checkout's own console script.
    executable = Path(sys.executable).with_name("edge-gateway")
    assert executable.exists()
    text = UNIT.read_text()
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace(
            "ExecStart=/opt/edge-gateway/.venv/bin/edge-gateway", f"ExecStart={executable}"
        )
    )
    assert copy.read_text().count(str(executable)) == 1
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edge-gateway.service" not in result.stdout + result.stderr  # no warnings either
    # ...and the real unit fails only on that missing executable.
    original = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (original.stdout + original.stderr).splitlines() if line]
    assert all("/opt/edge-gateway/.venv/bin/edge-gateway" in line for line in problems), problems


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_file_runs_mosquitto_and_the_gateway() -> None:
    compose = load_compose()
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    services = compose["services"]
    assert set(services) == {"mosquitto", "gateway"}
    broker = services["mosquitto"]
    assert broker["image"].startswith("eclipse-mosquitto:2")
    assert "./mosquitto.docker.conf:/mosquitto/config/mosquitto.conf:ro" in broker["volumes"]
    assert broker["healthcheck"]["test"][0] == "CMD"
    gateway = services["gateway"]
    assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert gateway["depends_on"] == {"mosquitto": {"condition": "service_healthy"}}
    assert gateway["ports"] == ["127.0.0.1:8787:8787"]
    assert "gateway-data:/var/lib/edge-gateway" in gateway["volumes"]
    assert gateway["environment"]["GATEWAY_API_TOKEN"].startswith("${GATEWAY_API_TOKEN:?")
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]
    assert gateway["stop_grace_period"] == "30s"
    assert set(compose["volumes"]) == {"mosquitto-data", "gateway-data"}
    # Every file the compose file mounts exists next to it.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), source


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="docker compose is not available",
)
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"GATEWAY_API_TOKEN": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_builds_multi_stage_and_runs_as_a_non_root_user() -> None:
    steps = dockerfile_instructions()
    froms = [rest for keyword, rest in steps if keyword == "FROM"]
    assert len(froms) == 2 and all(f.startswith("python:${PYTHON_VERSION}-slim") for f in froms)
    # No architecture is named anywhere, so buildx builds it for any platform with wheels.
    text = (DEPLOY / "Dockerfile").read_text()
    assert not re.search(r"amd64|x86_64|aarch64", text.split("\nARG PYTHON_VERSION")[1])
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users == ["10001:10001"]
    assert ("VOLUME", '["/var/lib/edge-gateway"]') in steps
    assert ("ENTRYPOINT", '["edge-gateway"]') in steps
    assert ("STOPSIGNAL", "SIGTERM") in steps
    assert any(k == "HEALTHCHECK" and "/healthz" in rest for k, rest in steps)
    # What it copies from the build context exists.
    for keyword, rest in steps:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), source


def test_container_config_is_valid_and_needs_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_TOKEN", "t0ken")
    config = load_config(DEPLOY / "gateway.docker.yaml")
    assert config.mqtt.host == "mosquitto"
    assert config.api.host == "0.0.0.0"
    assert config.api.token is not None and config.api.token.get_secret_value() == "t0ken"
    assert str(config.buffer.path).startswith("/var/lib/edge-gateway/")
    assert config.logging.format == "json"
    monkeypatch.delenv("GATEWAY_API_TOKEN")
    with pytest.raises(Exception, match="GATEWAY_API_TOKEN is not set"):
        load_config(DEPLOY / "gateway.docker.yaml")


def test_example_config_documents_the_logging_and_api_keys() -> None:
    config = load_config(DEPLOY / "gateway.example.yaml")
    assert config.logging.format == "logfmt"
    assert config.api.host == "127.0.0.1"


@pytest.mark.parametrize("name", ["mosquitto.conf", "mosquitto.docker.conf"])
def test_mosquitto_accepts_the_shipped_broker_config(name: str, tmp_path: Path) -> None:
    """Start the real broker with the file, only its listener and data path moved to this test."""
    port = free_port()
    lines = []
    for line in (DEPLOY / name).read_text().splitlines():
        if line.startswith("listener "):
            lines.append(f"listener {port} 127.0.0.1")
        elif line.startswith("persistence_location "):
            lines.append(f"persistence_location {tmp_path}/")
        else:
            lines.append(line)
    if not any(line.startswith("persistence_location") for line in lines):
        lines.append(f"persistence_location {tmp_path}/")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [find_mosquitto(), "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="deploy-test")
    try:

        def connects() -> bool:
            if process.poll() is not None:
                return True  # exited: the config was refused
            try:
                client.connect("127.0.0.1", port)
            except OSError:
                return False
            return True

        assert wait_until(connects, 10)
        assert process.poll() is None, process.communicate()[0].decode()
        # The compose healthcheck subscribes to $SYS/broker/version: it must come at once.
        versions: list[bytes] = []
        client.on_message = lambda _c, _u, message: versions.append(bytes(message.payload))
        client.subscribe("$SYS/broker/version")
        client.loop_start()
        assert wait_until(lambda: bool(versions), 3)
        assert versions[0].startswith(b"mosquitto version 2.")
        client.disconnect()
        client.loop_stop()
    finally:
        process.terminate()
        process.communicate(timeout=10)
