"""The dashboard in headless Chromium (Debian's package, driven by Playwright): devices appear
live, an alert appears when a rule fires, the SQL box answers with rows and a chart, and the page
fits a phone's width.

Set UPDATE_SCREENSHOTS=1 to refresh docs/dashboard.png (from the shared API scenario, which has
sinks) and docs/dashboard-phone.png.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from apihelpers import RULES, Scenario, wait_for_sinks
from pydantic import SecretStr

from gateway.config import (
    ApiConfig,
    BufferConfig,
    GatewayConfig,
    MqttConfig,
    RulesConfig,
    Subscription,
)
from gateway.services.mosquitto import Mosquitto
from gateway.testing import GatewayThread, publisher, wait_until

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[2] / "docs"
TIMEOUT_MS = 15_000

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium; make setup)"
)

sync_api = pytest.importorskip("playwright.sync_api")


def gateway_config(tmp_path: Path, broker: Mosquitto, token: str | None = None) -> GatewayConfig:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return GatewayConfig(
        gateway_id="cellar-1",
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id="dashboard-test",
            subscriptions=[Subscription(topic="sensors/#"), Subscription(topic="zigbee2mqtt/#")],
        ),
        buffer=BufferConfig(path=tmp_path / "buffer.duckdb"),
        api=ApiConfig(port=0, token=SecretStr(token) if token else None),
        rules=RulesConfig(files=[rules]),
    )


@contextmanager
def dashboard(
    config: GatewayConfig, tmp_path: Path, before: Callable[[], None] = lambda: None
) -> Iterator[Any]:
    """A running gateway (`before` runs once it is up) and a headless Chromium page on its
    dashboard."""
    with GatewayThread(config) as gw, sync_api.sync_playwright() as playwright:
        assert gw.gateway.api_address is not None
        before()
        host, port = gw.gateway.api_address
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://{host}:{port}/")
            yield page
            assert not errors, errors
        finally:
            context.close()


def publish(broker: Mosquitto, messages: list[tuple[str, str]]) -> None:
    client = publisher(broker.host, broker.port, client_id="dashboard-publisher")
    try:
        for info in [client.publish(topic, payload, qos=1) for topic, payload in messages]:
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def everyday_readings(rounds: int, start: int = 0) -> list[tuple[str, str]]:
    messages = []
    for i in range(start, start + rounds):
        for n, room in enumerate(("kitchen", "cellar", "living-room")):
            messages.append((f"sensors/home/{room}/temperature", f"{19.0 + n + (i % 5) * 0.4:.1f}"))
            messages.append((f"sensors/home/{room}/humidity", f"{48 + n * 4 + (i % 3)}"))
        power = 40 + (i % 7) * 12
        messages.append(("zigbee2mqtt/freezer-plug", f'{{"power": {power}, "voltage": 231}}'))
    return messages


def chart_width(page: Any) -> int:
    """The width the throughput chart was last drawn at (it follows its card's width)."""
    return int(page.evaluate("document.querySelector('#throughput svg').viewBox.baseVal.width"))


def test_dashboard_shows_devices_alerts_and_sql_results(broker: Mosquitto, tmp_path: Path) -> None:
    def some_history() -> None:
        # A few rounds a little apart, so the throughput chart and sparklines have a shape.
        for n in range(5):
            publish(broker, everyday_readings(3, start=n * 3 + 1))
            time.sleep(0.4)  # spreads the readings over seconds; nothing waits on a result
        publish(broker, [("zigbee2mqtt/door-sensor", "{broken json")])
        publish(broker, [("zigbee2mqtt/freezer-plug/availability", '{"state": "offline"}')])

    with dashboard(gateway_config(tmp_path, broker), tmp_path, some_history) as page:
        # Devices arrive over the live event stream.
        row = page.locator('#devices tr[data-device="cellar"][data-metric="temperature"]')
        row.wait_for(timeout=TIMEOUT_MS)
        sync_api.expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)
        rows = page.locator("#devices tbody tr")
        sync_api.expect(rows).to_have_count(9)  # 3 rooms x 2 metrics, the plug x 3
        sync_api.expect(page.locator("#gateway-id")).to_have_text("cellar-1")
        assert row.locator("svg.spark polyline").count() == 1
        sync_api.expect(page.locator("#quarantine-reasons li")).to_have_count(1)

        # No alert yet; the cellar overheats and the rule's alert shows up on its own.
        assert page.locator("#alerts-active li").count() == 0
        publish(broker, [("sensors/home/cellar/temperature", "34.5")])
        alert = page.locator('#alerts-active li[data-rule="room-too-hot"]')
        alert.wait_for(timeout=TIMEOUT_MS)
        sync_api.expect(alert).to_contain_text("cellar at 34.5 degrees")
        sync_api.expect(alert.locator(".sev")).to_have_text("critical")
        firing = page.locator('#firings li[data-rule="room-too-hot"]')
        sync_api.expect(firing).to_contain_text("alert_raised")
        sync_api.expect(row.locator(".latest")).to_have_text("34.5")
        # Each device's timeline in the rules: plain numbers carry no time, so arrival time.
        clock = page.locator('#clocks tr[data-device="cellar"]')
        sync_api.expect(clock.locator("td").nth(1)).to_have_text("arrival", timeout=TIMEOUT_MS)
        # The registry: one row per device, the plug that went offline first.
        registry = page.locator("#registry tbody tr")
        sync_api.expect(registry).to_have_count(5, timeout=TIMEOUT_MS)  # 3 rooms, plug, door
        sync_api.expect(registry.first).to_have_attribute("data-device", "freezer-plug")
        sync_api.expect(registry.first.locator("td.availability")).to_have_text("offline")
        door = page.locator('#registry tr[data-device="door-sensor"] td')
        sync_api.expect(door.nth(5)).to_have_text("1")  # its one message was quarantined

        # The SQL box answers with a table and a chart.
        page.fill(
            "#sql",
            "SELECT device, round(avg(value), 1) AS mean, count(*) AS readings "
            "FROM readings WHERE metric = 'temperature' GROUP BY device ORDER BY device",
        )
        page.click("#sql-form button[type=submit]")
        results = page.locator("#sql-results tbody tr")
        sync_api.expect(results).to_have_count(3, timeout=TIMEOUT_MS)
        sync_api.expect(results.first.locator("td").first).to_have_text("cellar")
        sync_api.expect(page.locator("#sql-status")).to_contain_text("3 rows")
        assert page.locator("#sql-chart svg rect").count() == 6  # 3 devices x 2 columns

        # A refused statement says why instead of failing silently.
        page.fill("#sql", "DROP TABLE readings")
        page.click("#sql-form button[type=submit]")
        sync_api.expect(page.locator("#sql-status.error")).not_to_be_empty(timeout=TIMEOUT_MS)

        page.fill(
            "#sql",
            "SELECT date_trunc('second', ingest_time) AS second, count(*) AS n "
            "FROM readings GROUP BY 1 ORDER BY 1",
        )
        page.click("#sql-form button[type=submit]")
        sync_api.expect(page.locator("#sql-chart svg polyline")).to_have_count(1)
        shot = tmp_path / "dashboard.png"
        page.set_viewport_size({"width": 1280, "height": 1720})  # all of it, header on top
        page.screenshot(path=str(shot))

        # On a phone the cards stack and nothing runs off the side.
        page.set_viewport_size({"width": 390, "height": 844})
        assert wait_until(lambda: page.evaluate("document.documentElement.scrollWidth") <= 390, 5)
        assert wait_until(lambda: chart_width(page) < 390, 5)
        phone = tmp_path / "dashboard-phone.png"
        page.screenshot(path=str(phone))
    assert shot.stat().st_size > 20_000 and phone.stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shutil.copy(phone, DOCS / "dashboard-phone.png")


def test_dashboard_asks_for_the_token_once_when_the_api_wants_one(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = gateway_config(tmp_path, broker, token="dash-t0ken")
    with dashboard(config, tmp_path, lambda: publish(broker, everyday_readings(2))) as page:
        form = page.locator("#token-form")
        sync_api.expect(form).to_be_visible(timeout=TIMEOUT_MS)
        sync_api.expect(page.locator("#live")).to_have_text("offline")
        assert page.locator("#devices tbody tr").count() == 0
        page.fill("#token", "dash-t0ken")
        page.click("#token-form button[type=submit]")
        sync_api.expect(form).to_be_hidden()
        sync_api.expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)
        sync_api.expect(page.locator("#devices tbody tr")).to_have_count(8, timeout=TIMEOUT_MS)
        page.reload()  # kept in the browser: no second prompt
        sync_api.expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT_MS)
        assert page.locator("#token-form").is_hidden()


def test_dashboard_shows_each_sinks_backlog_and_last_error(
    scenario: Scenario, tmp_path: Path
) -> None:
    """On the shared API scenario: one sink delivered everything, the other's broker is down."""
    wait_for_sinks(scenario)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1900})
            page.goto(scenario.base + "/")
            live = page.locator('#sinks tr[data-sink="upstream"]').first
            dead = page.locator('#sinks tr[data-sink="offline"]').first
            live.wait_for(timeout=TIMEOUT_MS)
            sync_api.expect(page.locator("#sinks tbody tr")).to_have_count(4)  # 2 sinks x 2 streams
            cells = dead.locator("td")
            sync_api.expect(cells.nth(1)).to_have_text("readings")
            sync_api.expect(cells.nth(2)).to_have_text(str(scenario.sent.readings))
            sync_api.expect(cells.nth(5)).not_to_be_empty()  # the last error, spelled out
            sync_api.expect(live.locator("td").nth(2)).to_have_text("0")
            sync_api.expect(live.locator("td").nth(5)).to_be_empty()
            sync_api.expect(page.locator("#quarantine-reasons li")).to_have_count(2)
            sparks = page.locator("#devices svg.spark polyline")
            sync_api.expect(sparks).to_have_count(5)  # one per series, even with one point
            page.fill(
                "#sql",
                "SELECT device, metric, count(*) AS readings, round(avg(value), 1) AS mean "
                "FROM readings GROUP BY ALL ORDER BY device, metric",
            )
            page.click("#sql-form button[type=submit]")
            sync_api.expect(page.locator("#sql-results tbody tr")).to_have_count(5)
            sync_api.expect(page.locator("#alerts-active li")).to_have_count(
                len(scenario.sent.hot_now(30))
            )
            shot = tmp_path / "dashboard.png"  # the README's picture: every card has content
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shutil.copy(shot, DOCS / "dashboard.png")
