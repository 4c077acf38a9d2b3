"""Carries out the engine's outputs: MQTT commands, log lines, and webhooks from a bounded queue.

Alerts are not handled here: the service stores them in the buffer with the engine's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.error
import urllib.request
from collections.abc import Callable

from gateway.errors import BrokerError
from gateway.rules.actions import Command, LogLine, Output, WebhookCall

logger = logging.getLogger(__name__)

Publish = Callable[[str, str, int, bool], None]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class ActionExecutor:
    """Publishes commands at once; webhooks go through a bounded queue served off the loop."""

    def __init__(
        self, publish: Publish | None, *, queue_size: int = 1000, retries: int = 3
    ) -> None:
        self._publish = publish
        self._queue: asyncio.Queue[WebhookCall] = asyncio.Queue(maxsize=queue_size)
        self._retries = retries
        self.published = 0
        self.publish_failures = 0
        self.webhooks_sent = 0
        self.webhooks_failed = 0
        self.webhooks_dropped = 0
        # Called with every output list once it is carried out (the API's telemetry counts
        # firings and actions by rule there); an observer must be quick and must not raise.
        self.observers: list[Callable[[list[Output]], None]] = []

    def execute(self, outputs: list[Output], *, commands_sent: bool = False) -> None:
        """Carry out the outputs; `commands_sent`: their commands went out already, one by one
        as the engine made them (`command`)."""
        for output in outputs:
            if isinstance(output, Command):
                if not commands_sent:
                    self.command(output)
            elif isinstance(output, WebhookCall):
                try:
                    self._queue.put_nowait(output)
                except asyncio.QueueFull:
                    self.webhooks_dropped += 1
                    logger.warning(
                        "rule %s device %s: webhook queue full, dropping call to %s",
                        output.rule_id,
                        output.device,
                        output.url,
                    )
            elif isinstance(output, LogLine):
                logger.log(
                    _LEVELS.get(output.level, logging.ERROR),
                    "rule %s device %s: %s",
                    output.rule_id,
                    output.device,
                    output.message,
                )
        for observe in self.observers:  # after the commands left: they come first
            observe(outputs)

    def command(self, command: Command) -> None:
        """Publish one command now."""
        if self._publish is None:
            return
        try:
            self._publish(command.topic, command.payload, command.qos, command.retain)
            self.published += 1
        except BrokerError as exc:
            self.publish_failures += 1
            logger.error("rule %s device %s: %s", command.rule_id, command.device, exc)

    async def serve_webhooks(self, stop: asyncio.Event) -> None:
        """Send queued webhook calls until `stop`; each call retries with backoff."""
        while not stop.is_set():
            try:
                call = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            delay = 0.5
            for attempt in range(self._retries + 1):
                error = await asyncio.to_thread(_send, call)
                if error is None:
                    self.webhooks_sent += 1
                    break
                if attempt == self._retries or stop.is_set():
                    self.webhooks_failed += 1
                    logger.warning(
                        "rule %s device %s: webhook %s failed after %d attempts: %s",
                        call.rule_id,
                        call.device,
                        call.url,
                        attempt + 1,
                        error,
                    )
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, 10.0)


def _send(call: WebhookCall) -> str | None:
    """POST/PUT the body; None on a 2xx answer, else what went wrong."""
    headers = {"Content-Type": "application/json", **call.headers}
    request = urllib.request.Request(  # noqa: S310 (URL scheme checked at load: http/https)
        call.url, data=call.body.encode(), method=call.method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=call.timeout) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(exc)
    return None if 200 <= status < 300 else f"HTTP {status}"
