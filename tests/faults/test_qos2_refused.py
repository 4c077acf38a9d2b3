"""QoS 2 subscriptions are refused: paho-mqtt answers PUBREC as a QoS 2 message arrives, manual
acks or not, so the broker lets go of it before the gateway has committed it, and a kill -9 then
loses it (measured: 5 pending messages, QoS 1 got 5 back after the restart, QoS 2 got 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_config_check_refuses_a_qos2_subscription_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("mqtt:\n  subscriptions:\n    - topic: sensors/#\n      qos: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "mqtt.subscriptions.0.qos" in result.stderr
    assert "qos 2 is not supported" in result.stderr
    assert "subscribe with qos 1" in result.stderr
