"""Carrying out actions: webhooks against a real local HTTP server, and reloading on file change."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer.store import BufferStore
from gateway.config import LocationConfig, RulesConfig
from gateway.model import ReadingColumns
from gateway.rules.actions import WebhookCall
from gateway.rules.executor import ActionExecutor
from gateway.rules.service import RulesService


class Hook:
    """A loopback HTTP server that fails the first `failures` requests with 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.attempts += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.attempts <= hook.failures:
                    self.send_response(503)
                else:
                    hook.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook(failures=2)
    yield server
    server.close()


def call(url: str, n: int) -> WebhookCall:
    return WebhookCall("leak", "kitchen-leak", 1.0, url, "POST", {}, json.dumps({"n": n}), 2.0)


def test_webhook_is_retried_until_the_server_accepts_it(hook: Hook) -> None:
    async def main() -> ActionExecutor:
        executor = ActionExecutor(None, queue_size=10, retries=3)
        stop = asyncio.Event()
        server = asyncio.create_task(executor.serve_webhooks(stop))
        executor.execute([call(hook.url, 1)])
        for _ in range(400):  # poll with a deadline: two 503s, backoff 0.5 s then 1 s
            if executor.webhooks_sent:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await server
        return executor

    executor = asyncio.run(main())
    assert executor.webhooks_sent == 1
    assert hook.attempts == 3
    assert hook.bodies == [{"n": 1}]


def test_webhook_queue_is_bounded() -> None:
    async def main() -> ActionExecutor:
        executor = ActionExecutor(None, queue_size=2, retries=0)
        executor.execute([call("http://127.0.0.1:9/x", n) for n in range(5)])
        return executor

    executor = asyncio.run(main())
    assert executor.webhooks_dropped == 3


RULE = """
rules:
  - id: freezer-warm
    select: {device: freezer, metric: temperature}
    trigger: {type: threshold, above: -15}
    actions: [{log: {message: "warm"}}]
"""


def test_running_service_reloads_a_changed_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(RULE)
    store = BufferStore(tmp_path / "buffer.duckdb")

    async def direct(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def main() -> RulesService:
        service = RulesService(
            RulesConfig(files=[rule_file], reload_interval=0.05, tick_interval=0.01),
            LocationConfig(),
            store=store,
            on_writer=direct,
            publish=None,
        )
        await service.start()
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))

        async def until(predicate: Any) -> None:
            for _ in range(500):
                if predicate():
                    return
                await asyncio.sleep(0.01)

        rule_file.write_text(RULE.replace("-15", "-14") + "  # edited\n")
        await until(lambda: service.reloads == 1)
        rule_file.write_text(RULE.replace("above: -15", "above: [oops"))
        await until(lambda: service.reload_errors == 1)
        stop.set()
        await task
        return service

    try:
        service = asyncio.run(main())
    finally:
        store.close()
    assert service.reloads == 1
    assert service.reload_errors == 1
    assert service.last_reload_error is not None
    assert service.last_reload_error == (
        f"{rule_file}: invalid rules\n  line 5, column 44: expected ',' or ']', but got '}}'"
    )
    assert service.engine is not None
    assert service.engine.rules[0].rule.trigger.above == -14  # type: ignore[union-attr]


EAGER_RULES = """
rules:
  - id: hot
    select: {metric: temp}
    trigger: {type: threshold, above: 30}
    actions:
      - mqtt: {topic: "cmd/{device}/fan", payload: "{value}", qos: 0}
"""


def test_a_live_command_leaves_before_the_rest_of_its_batch_is_evaluated_and_only_once(
    tmp_path: Path,
) -> None:
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(EAGER_RULES)
    store = BufferStore(tmp_path / "buffer.duckdb")
    published: list[tuple[str, str, bool]] = []  # topic, payload, d9 evaluated yet
    observed: list[int] = []

    async def direct(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def main() -> None:
        service: RulesService

        def publish(topic: str, payload: str, qos: int, retain: bool) -> None:
            assert service.engine is not None
            seen_d9 = ("d9", "temp") in service.engine.env.latest
            published.append((topic, payload, seen_d9))

        service = RulesService(
            RulesConfig(files=[rule_file]),
            LocationConfig(),
            store=store,
            on_writer=direct,
            publish=publish,
            observers=[lambda outputs: observed.append(len(outputs))],
        )
        await service.start()
        now = int(time.time() * 1e6)
        devices = ["d0", "d1", *[f"x{i}" for i in range(8)], "d9"]
        values: list[float | None] = [31.0, 32.0, *[20.0] * 8, 33.0]
        n = len(devices)
        columns = ReadingColumns(
            [now] * n,
            [now] * n,
            devices,
            ["temp"] * n,
            values,
            [None] * n,
            [None] * n,
            [f"sensors/{d}/temp" for d in devices],
            [None] * n,
        )
        service.evaluate(columns, [])

    try:
        asyncio.run(main())
    finally:
        store.close()
    assert published == [
        ("cmd/d0/fan", "31", False),  # out before the batch's last reading was evaluated
        ("cmd/d1/fan", "32", False),
        ("cmd/d9/fan", "33", True),
    ]
    assert observed == [3]  # observers still see every output, once
