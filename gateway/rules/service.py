"""Runs the engine inside the gateway: feeds it messages as they arrive and ticks, reloads rule
files, carries out its outputs, and keeps its state and alerts in the buffer.

Commands are published first (latency), then alert changes are appended to the alerts table.
The engine's state is saved every `state_interval` and on shutdown; after a crash, the readings
committed since the last saved state are replayed from the buffer, so pending `for` timers,
windows and alerts continue where they were, without repeating stored alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from gateway.config import LocationConfig, RulesConfig
from gateway.errors import BufferStoreError, RuleError
from gateway.model import ReadingColumns
from gateway.rules import state
from gateway.rules.actions import AlertChange, Output
from gateway.rules.backtest import primed_runs
from gateway.rules.engine import RuleEngine
from gateway.rules.executor import ActionExecutor, Publish
from gateway.rules.schema import load_rule_files

logger = logging.getLogger(__name__)

OnWriter = Callable[..., Awaitable[Any]]


REPLAY_PAGE = 10_000


def build_engine(files: list[Path], config: RulesConfig, location: LocationConfig) -> RuleEngine:
    """Load and compile rule files; raises RuleError naming file, rule and field."""
    return RuleEngine(
        load_rule_files(files),
        latitude=location.latitude,
        longitude=location.longitude,
        timezone=location.timezone,
        allowed_lateness=config.allowed_lateness,
        misfire_grace=config.misfire_grace,
    )


def _retained_runs(
    columns: ReadingColumns, retained: list[int]
) -> list[tuple[ReadingColumns, bool]]:
    """The readings as runs of rows from retained messages or not, in order."""
    if not retained:
        return [(columns, False)]
    flags = [False] * len(columns)
    for row in retained:
        flags[row] = True
    return columns.runs(flags)


def _fingerprint(files: list[Path]) -> tuple[tuple[str, float, int], ...]:
    out = []
    for path in files:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime, st.st_size))
        except OSError:
            out.append((str(path), -1.0, -1))
    return tuple(out)


class RulesService:
    """The engine's life in the gateway. `start()` loads rules and state; `receive` takes each
    MQTT message as it arrives (`on_batch` takes a committed batch instead); `run(stop)` ticks,
    reloads and saves; `close()` saves the final state."""

    def __init__(
        self,
        config: RulesConfig,
        location: LocationConfig,
        *,
        store: state.StateStore,
        on_writer: OnWriter,
        publish: Publish | None,
        settled: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        observers: Sequence[Callable[[list[Output]], None]] = (),
    ) -> None:
        """`settled`: true when every batch given to `evaluate` has been committed;
        `observers` see every output after its commands left (the gateway's telemetry)."""
        self.config = config
        self.location = location
        self._store = store
        self._on_writer = on_writer
        self._clock = clock
        self.executor = ActionExecutor(
            publish, queue_size=config.webhook_queue, retries=config.webhook_retries
        )
        self.executor.observers.extend(observers)
        self.engine: RuleEngine | None = None
        self.files = list(config.files)
        self._fingerprint = _fingerprint(self.files)
        self._reload_requested = False
        self._dirty = False
        self.reloads = 0
        self.reload_errors = 0
        self.last_reload_error: str | None = None
        self.save_failures = 0
        self._last_alert_id = 0
        self._settled = settled
        self._before_commit = False  # batches come through `evaluate`, before their commit
        self._alert_writes = 0
        self._tasks: set[asyncio.Future[None]] = set()
        # Held while a batch or tick is evaluated and its alerts written, so a snapshot never
        # records an alert as raised before its row is in the alerts table.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Compile the rule files, restore saved state and replay what was committed after it.

        A broken rule set stops the start-up (RuleError)."""
        engine = build_engine(self.files, self.config, self.location)
        store = self._store
        snapshot = await self._on_writer(state.load_snapshot, store)
        self._last_alert_id = await self._on_writer(state.last_alert_id, store)
        if snapshot is not None:
            engine.restore(snapshot)
            await self._replay(engine, int(snapshot.get("last_alert_id") or 0))
        self.engine = engine
        logger.info(
            "rules engine running %d rules from %s",
            len(engine.rules),
            ", ".join(str(f) for f in self.files),
        )

    async def _replay(self, engine: RuleEngine, after_alert_id: int) -> None:
        """Feed readings committed after the snapshot (the gateway stopped without saving).

        Their commands, webhooks and logs ran before their commit and are not repeated; alert
        transitions missing from the alerts table are written now, present ones are not."""
        store = self._store
        written = await self._on_writer(state.alerts_after, store, after_alert_id)
        replayed = 0
        while True:
            table = await self._on_writer(
                state.readings_after, store, engine.last_reading_id, REPLAY_PAGE
            )
            if table.num_rows == 0:
                break
            replayed += table.num_rows
            outputs = [
                o for run, prime in primed_runs(table) for o in engine.process(run, prime=prime)
            ]
            missing = [
                o
                for o in outputs
                if isinstance(o, AlertChange) and state.alert_key(o) not in written
            ]
            if missing:
                self._last_alert_id = await self._on_writer(state.save_alerts, store, missing)
            if table.num_rows < REPLAY_PAGE:
                break
        if replayed:
            logger.info("rules replayed %d readings committed after the last saved state", replayed)
            self._dirty = True

    # -- input ----------------------------------------------------------------------------
    def evaluate(self, columns: ReadingColumns, retained: list[int]) -> None:
        """Evaluate decoded readings before their commit, as lists, before even their Arrow
        table is built (the gateway's pipeline, event loop); `retained`: the rows that came
        from retained messages.

        The rules do not wait for the buffer's commit (several milliseconds of disk), and a
        committed reading has always been evaluated and its commands handed to the MQTT
        client, so a restart's replay never owes one."""
        engine = self.engine
        self._before_commit = True
        if engine is None or not len(columns):
            return
        self._dirty = True
        # Retained messages are the broker's memory of a device's state, delivered when we
        # subscribe: they prime the rules but are no crossings. Runs keep the arrival order.
        # Each command is published as the engine makes it: a reading's command does not wait
        # for the rest of its batch to be evaluated.
        send = self.executor.command
        for readings, prime in _retained_runs(columns, retained):
            outputs = engine.process(readings, prime=prime, on_command=send)
            if outputs:
                self._spawn_handle(outputs, commands_sent=True)

    def _spawn_handle(self, outputs: list[Output], *, commands_sent: bool = False) -> None:
        self.executor.execute(outputs, commands_sent=commands_sent)
        alerts = [o for o in outputs if isinstance(o, AlertChange)]
        if alerts:
            self._alert_writes += 1
            task = asyncio.ensure_future(self._store_alerts(alerts))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _store_alerts(self, alerts: list[AlertChange]) -> None:
        try:
            await self._write_alerts(alerts)
        finally:
            self._alert_writes -= 1

    async def on_batch(self, readings: pa.Table) -> None:
        """Evaluate a committed batch (the gateway uses `receive`; tests and embedders this)."""
        engine = self.engine
        if engine is None:
            return
        async with self._lock:
            outputs = engine.process(readings)
            self._dirty = True
            if outputs:
                await self._handle(outputs)

    async def tick(self, now: float | None = None) -> None:
        engine = self.engine
        if engine is None:
            return
        async with self._lock:
            outputs = engine.tick(self._clock() if now is None else now)
            if outputs:
                self._dirty = True
                await self._handle(outputs)

    async def _handle(self, outputs: list[Output]) -> None:
        self.executor.execute(outputs)
        alerts = [o for o in outputs if isinstance(o, AlertChange)]
        if alerts:
            await self._write_alerts(alerts)

    async def _write_alerts(self, alerts: list[AlertChange]) -> None:
        for alert in alerts:
            log = logger.warning if alert.state == "raised" else logger.info
            log(
                "rule %s device %s: alert %s (%s): %s",
                alert.rule_id,
                alert.device,
                alert.state,
                alert.severity,
                alert.message,
            )
        try:
            self._last_alert_id = await self._on_writer(state.save_alerts, self._store, alerts)
        except BufferStoreError as exc:
            self.save_failures += 1
            logger.error("rules: %d alert changes not stored: %s", len(alerts), exc)

    def quiet(self) -> bool:
        """Every batch the rules saw is committed (and nothing committed is unseen), and no
        alert row is still being written: a snapshot taken now matches the buffer."""
        return self._alert_writes == 0 and self._settled()

    async def save(self) -> None:
        """Save the engine's state (a snapshot taken between batches, never inside one)."""
        engine = self.engine
        if engine is None:
            return
        for _ in range(200):
            # Best taken when every reading the rules saw is committed and every alert row is
            # written (a restart then replays exactly what the rules had not seen). Under a
            # steady stream such a moment may not come: after 2 s the snapshot is taken anyway;
            # messages seen but not yet committed then come back from the broker after a crash,
            # which crosses nothing twice (a window may count such a reading twice).
            if self.quiet():
                break
            await asyncio.sleep(0.01)
        async with self._lock:
            if self._before_commit:  # the rules saw exactly what is committed
                engine.last_reading_id = max(
                    engine.last_reading_id, self._store.next_reading_id - 1
                )
            snapshot = engine.snapshot()
            snapshot["last_alert_id"] = self._last_alert_id
            self._dirty = False
        try:
            await self._on_writer(state.save_snapshot, self._store, snapshot)
        except BufferStoreError as exc:
            self._dirty = True
            self.save_failures += 1
            logger.error("rules state not saved: %s", exc)

    # -- reload ---------------------------------------------------------------------------
    def request_reload(self) -> None:
        self._reload_requested = True

    def reload(self) -> list[str]:
        """Swap in the current rule files, keeping state of unchanged rules. A broken set is
        refused (its errors returned and logged) and the running set stays."""
        self._fingerprint = _fingerprint(self.files)
        try:
            new = build_engine(self.files, self.config, self.location)
        except RuleError as exc:
            self.reload_errors += 1
            self.last_reload_error = str(exc)
            logger.error("rules not reloaded, the running set stays: %s", exc)
            return str(exc).splitlines()
        old = self.engine
        if old is not None:
            new.restore(old.snapshot())
        self.engine = new
        self.reloads += 1
        self.last_reload_error = None
        self._dirty = True
        logger.info("rules reloaded: %d rules", len(new.rules))
        return []

    # -- background -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Tick, watch the files, save state; webhooks are served alongside."""
        loop = asyncio.get_running_loop()
        hup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            hup = True
        webhooks = asyncio.create_task(self.executor.serve_webhooks(stop))
        cfg = self.config
        next_check = next_save = time.monotonic()
        saving: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=cfg.tick_interval)
                await self.tick()
                mono = time.monotonic()
                if cfg.reload and mono >= next_check:
                    next_check = mono + cfg.reload_interval
                    if _fingerprint(self.files) != self._fingerprint:
                        self._reload_requested = True
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                if self._dirty and mono >= next_save and (saving is None or saving.done()):
                    next_save = mono + cfg.state_interval
                    # In the background: it may wait for a quiet moment, and timers go on.
                    saving = asyncio.create_task(self.save())
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            if saving is not None:
                await saving
            await webhooks

    async def close(self) -> None:
        """Save the final state (after the last batch was processed)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.save()

    def counters(self) -> dict[str, Any]:
        figures: dict[str, Any] = dict(self.engine.counters()) if self.engine else {}
        ex = self.executor
        figures.update(
            rules=len(self.engine.rules) if self.engine else 0,
            commands_published=ex.published,
            webhooks_sent=ex.webhooks_sent,
            webhooks_failed=ex.webhooks_failed,
            webhooks_dropped=ex.webhooks_dropped,
            reloads=self.reloads,
            reload_errors=self.reload_errors,
        )
        return figures
