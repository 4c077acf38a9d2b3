"""A small simulated home: a few rooms whose sensors publish in the gateway's topic layout."""

from __future__ import annotations

import math
import random
import threading
import time

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOMS = ("kitchen", "living", "bedroom", "hallway")


def run_home(
    host: str,
    port: int,
    stop: threading.Event,
    *,
    site: str = "home",
    interval: float = 1.0,
    seed: int = 7,
) -> int:
    """Publish temperature, humidity and illuminance for each room until `stop`; returns count."""
    rng = random.Random(seed)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-home-{seed}")
    client.connect(host, port)
    client.loop_start()
    sent = 0
    start = time.time()
    try:
        while not stop.is_set():
            t = time.time() - start
            for i, room in enumerate(ROOMS):
                device = f"{room}-sensor"
                temperature = 21 + 2 * math.sin(t / 60 + i) + rng.gauss(0, 0.1)
                humidity = 45 + 5 * math.cos(t / 90 + i) + rng.gauss(0, 0.5)
                lux = max(0.0, 300 * math.sin(t / 120 + i) + rng.gauss(0, 5))
                base = f"sensors/{site}/{device}"
                client.publish(
                    f"{base}/temperature",
                    orjson.dumps({"value": round(temperature, 2), "unit": "°C"}),
                    qos=1,
                )
                client.publish(f"{base}/humidity", f"{humidity:.1f}", qos=1)
                client.publish(f"{base}/illuminance", f"{lux:.0f}", qos=1)
                sent += 3
            stop.wait(interval)
    finally:
        client.loop_stop()
        client.disconnect()
    return sent
