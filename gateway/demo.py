"""`edge-gateway demo`: a private broker, a simulated home and the gateway, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

from rich.console import Console

from gateway.app import Gateway
from gateway.buffer import queries
from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    LocationConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.output import render
from gateway.services.mosquitto import Mosquitto

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"  # the rule sets users copy


def run_demo(workdir: Path, duration: float | None, console: Console, sinks: str = "all") -> None:
    from gateway.sinks.local import LocalUpstreams
    from simulators.home import run_home

    workdir.mkdir(parents=True, exist_ok=True)
    with (
        Mosquitto(workdir=workdir / "mosquitto", persistence=False) as broker,
        LocalUpstreams(enabled=sinks != "none") as upstream,  # fakesnow and Tansu
    ):
        config = GatewayConfig(
            gateway_id="demo",
            mqtt=MqttConfig(
                host=broker.host,
                port=broker.port,
                client_id="edge-gateway-demo",
                subscriptions=[
                    Subscription(topic="sensors/#", qos=1),
                    Subscription(topic="zigbee2mqtt/#", qos=1),
                    Subscription(topic="tele/#", qos=1),
                ],
            ),
            buffer=BufferConfig(path=workdir / "buffer.duckdb"),
            api=ApiConfig(port=0),
            rules=RulesConfig(files=[RULES_DIR / "smart-home.yaml", RULES_DIR / "thresholds.yaml"]),
            location=LocationConfig(latitude=52.37, longitude=4.90, timezone="Europe/Amsterdam"),
            sinks=upstream.sink_configs(),
        )
        buffer = config.buffer.path
        console.print(
            f"[bold]edge-gateway demo[/bold]: broker on {broker.host}:{broker.port}, "
            f"buffer {buffer}"
        )
        console.print(upstream.describe())
        console.print(upstream.how_to_query(buffer), highlight=False, markup=False, soft_wrap=True)
        stop_devices = threading.Event()
        devices = threading.Thread(
            target=run_home,
            args=(broker.host, broker.port, stop_devices),
            kwargs={"scenario": "demo-home"},  # simulators/scenarios/demo-home.yaml
            daemon=True,
        )

        async def main() -> None:
            gateway = Gateway(config)
            stop = asyncio.Event()
            task = asyncio.create_task(gateway.run(stop))
            await gateway.ready.wait()
            devices.start()
            if gateway.api_address is not None:
                host, port = gateway.api_address
                console.print(f"dashboard: [bold]http://{host}:{port}/[/bold]")
            console.print(
                "simulated home (scenario demo-home) publishing; showing what the buffer holds "
                "(Ctrl-C to stop)\n"
            )
            started = time.monotonic()
            try:
                while duration is None or time.monotonic() - started < duration:
                    await asyncio.sleep(min(5.0, duration or 5.0))
                    if gateway.store is None:
                        continue
                    table = gateway.store.query(queries.LATEST_BY_DEVICE)
                    console.rule(f"{gateway.stats.readings} readings buffered")
                    render(table, "table", console)
                    await asyncio.to_thread(upstream.show, console)
                    if gateway.rules is not None:
                        figures = gateway.rules.counters()
                        console.rule(
                            f"rules: {figures['fired']} fired, "
                            f"{figures['commands_published']} commands sent, "
                            f"{figures['active_alerts']} alerts open"
                        )
                        alerts = gateway.store.query(queries.RECENT_ALERTS)
                        if alerts.num_rows:
                            render(alerts, "table", console)
            except asyncio.CancelledError:
                pass
            finally:
                stop_devices.set()
                stop.set()
                await task

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
        console.print(
            "\nTry next (the buffer stays in "
            f"{workdir}):\n"
            + "".join(f'  edge-gateway sql --buffer {buffer} "{q}"\n' for q in queries.EXAMPLES)
            + f"  edge-gateway status --buffer {buffer}"
        )
