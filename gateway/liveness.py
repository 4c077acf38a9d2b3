"""Liveness: the event loop and the writer thread each show progress, and systemd's watchdog
hears from the gateway only while both do.

A stall (a deadlock, a call that never returns) freezes ingest without crashing anything, so
nothing restarts the gateway on its own. Each part shows progress its own way:

- `event_loop`: the monitor task (`Liveness.run`) beats on each tick (at most a second apart);
  a blocked loop stops it.
- `writer`: the monitor hands the writer thread a no-op probe whenever none is outstanding; the
  writer is stalled once a probe has waited `stall_after` behind a job that does not return.
  Only a waiting probe counts, so a stalled event loop (which sends no probes) is not blamed on
  the writer. A job that waits on purpose (a commit retried on a full disk) calls `writer_alive`.
The MQTT connection has no thread of its own: it is served on the event loop
(`gateway/ingest/mqtt.py`), so a callback that never returns stalls `event_loop`.

A part is stalled when it showed no progress for `stall_after` seconds: WatchdogSec (at least
`MIN_STALL_AFTER`) under a systemd watchdog, else `DEFAULT_STALL_AFTER`. `/healthz` answers 503
naming it (`report`).

systemd (the sd_notify protocol over a plain AF_UNIX datagram socket, no libsystemd): with
NOTIFY_SOCKET set the gateway sends READY=1 once it runs, STATUS= when a part stalls or recovers
and STOPPING=1 at shutdown; with WATCHDOG_USEC too (and WATCHDOG_PID unset or ours) it sends
WATCHDOG=1 every WATCHDOG_USEC/2 while no part is stalled. When one stalls the keepalives stop,
and systemd kills the gateway (SIGABRT: with PYTHONFAULTHANDLER=1 every thread's stack goes to
the journal) and restarts it.

No locks: each field has one writer at a time (a part's beat is written only by its thread; a
probe's start only by the monitor while none is outstanding, then only by the writer), and a
float or None is read and written whole under the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between the monitor's beats, probes and checks
DEFAULT_STALL_AFTER = 30.0  # without a systemd watchdog
MIN_STALL_AFTER = 10.0  # a checkpoint on a slow SD card may hold the writer for seconds
PARTS = ("event_loop", "writer")


class Part:
    """One part's last sign of progress (monotonic seconds) and the thread that gave it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = time.monotonic()
        self.thread: int | None = None

    def beat(self) -> None:
        self.last = time.monotonic()
        self.thread = threading.get_ident()


class SystemdNotifier:
    """Sends sd_notify messages to NOTIFY_SOCKET (a path, or an abstract name starting '@')."""

    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)  # called on the event loop: never wait for systemd
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address.startswith(("/", "@")):
            if address:  # e.g. vsock:..., which this does not speak
                logger.warning("NOTIFY_SOCKET=%s: not a unix socket; not notifying", address)
            return None
        watchdog: int | None = None
        pid = env.get("WATCHDOG_PID")
        if pid is None or pid == str(os.getpid()):  # else the watchdog is another process's
            try:
                watchdog = int(env.get("WATCHDOG_USEC", "")) or None
            except ValueError:
                watchdog = None
        return cls(address, watchdog if watchdog and watchdog > 0 else None)

    def notify(self, *fields: str) -> bool:
        """Send one message; a failure is logged once and otherwise ignored."""
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:  # BlockingIOError too: a reader that lags loses a keepalive
            if not self._failed:
                self._failed = True
                logger.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), exc)
            return False

    def close(self) -> None:
        self._socket.close()


class Liveness:
    """The parts' beats, the stall check, and the task that beats, probes and notifies."""

    def __init__(self, stall_after: float | None = None) -> None:
        self.stall_after = stall_after  # None: from WATCHDOG_USEC when `run` starts
        self.event_loop = Part("event_loop")
        self.writer = Part("writer")  # `last`: when the probe answered
        self._probe_since: float | None = None  # a probe waits on the writer since then
        self.running = False  # stalls count only between the monitor's start and the stop
        self.keepalives = 0  # WATCHDOG=1 sent
        self.withheld = 0  # keepalives due but not sent: a part was stalled
        self._reported: set[str] = set()  # stalled parts already logged

    def _threshold(self) -> float:
        return self.stall_after if self.stall_after is not None else DEFAULT_STALL_AFTER

    # -- beats from the writer thread ---------------------------------------------------
    def _answer_probe(self) -> None:
        self.writer.beat()
        self._probe_since = None

    def writer_alive(self) -> None:
        """Called on the writer thread by a job that waits on purpose: it is not stuck."""
        if self._probe_since is not None:
            self._probe_since = time.monotonic()
            self.writer.thread = threading.get_ident()

    # -- the check ------------------------------------------------------------------------
    def ages(self, now: float | None = None) -> dict[str, float]:
        """Seconds each part has gone without showing progress."""
        now = time.monotonic() if now is None else now
        since = self._probe_since
        return {
            "event_loop": max(0.0, now - self.event_loop.last),
            "writer": max(0.0, now - since) if since is not None else 0.0,
        }

    def stalled(self, now: float | None = None) -> dict[str, float]:
        """The stalled parts and for how long; empty while all make progress (or not running)."""
        if not self.running:
            return {}
        limit = self._threshold()
        return {name: age for name, age in self.ages(now).items() if age > limit}

    def report(self) -> dict[str, Any]:
        """What /healthz answers."""
        stalled = self.stalled()
        out: dict[str, Any] = {
            "status": "stalled" if stalled else "ok",
            "healthy": not stalled,
            "parts": {name: round(age, 1) for name, age in self.ages().items()},
            "stall_after": self._threshold(),
        }
        if stalled:
            out["stalled"] = {name: round(age, 1) for name, age in stalled.items()}
        return out

    # -- the monitor task -----------------------------------------------------------------
    async def run(
        self,
        stop: asyncio.Event,
        submit_to_writer: Callable[[Callable[[], None]], object],
        notifier: SystemdNotifier | None = None,
    ) -> None:
        """Beat for the event loop, probe the writer, and keep systemd's watchdog fed, until
        `stop` is set. `notifier` defaults to the one NOTIFY_SOCKET names, if any."""
        if notifier is None:
            notifier = SystemdNotifier.from_environ()
        interval: float | None = None
        if notifier is not None and notifier.watchdog_usec:
            watchdog = notifier.watchdog_usec / 1e6
            interval = watchdog / 2
            if self.stall_after is None:
                self.stall_after = max(watchdog, MIN_STALL_AFTER)
        now = time.monotonic()
        self.event_loop.last = now  # count from here, not from when the buffer began to open
        self._probe_since = None
        self.running = True
        if notifier is not None:
            notifier.notify("READY=1", "STATUS=running")
        tick = min(TICK, interval) if interval else TICK
        next_keepalive = time.monotonic()
        try:
            while not stop.is_set():
                self.event_loop.beat()
                if self._probe_since is None:
                    self._probe_since = time.monotonic()
                    submit_to_writer(self._answer_probe)
                stalled, changed = self._check()
                if changed and notifier is not None:  # shown by `systemctl status`
                    notifier.notify("STATUS=" + _status(stalled))
                now = time.monotonic()
                if interval is not None and notifier is not None and now >= next_keepalive:
                    next_keepalive = now + interval
                    if stalled:
                        self.withheld += 1  # systemd restarts us after WatchdogSec
                    elif notifier.notify("WATCHDOG=1"):
                        self.keepalives += 1
                with contextlib.suppress(TimeoutError):
                    wait = tick if interval is None else min(tick, max(0.0, next_keepalive - now))
                    await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.01))
        finally:
            self.running = False
            if notifier is not None:
                notifier.notify("STOPPING=1", "STATUS=stopping")
                notifier.close()

    def _check(self) -> tuple[dict[str, float], bool]:
        """The stalled parts, and whether that set changed; logs each newly stalled part once,
        with its thread's stack (where it is stuck)."""
        stalled = self.stalled()
        changed = set(stalled) != self._reported
        for name in sorted(set(stalled) - self._reported):
            part = getattr(self, name)
            logger.error(
                "liveness: the %s made no progress for %.0fs (stall_after %.0fs); %s",
                name.replace("_", " "),
                stalled[name],
                self._threshold(),
                _stack(part.thread),
            )
        for name in sorted(self._reported - set(stalled)):
            logger.warning("liveness: the %s makes progress again", name.replace("_", " "))
        self._reported = set(stalled)
        return stalled, changed


def _status(stalled: dict[str, float]) -> str:
    if not stalled:
        return "running"
    return "stalled: " + ", ".join(f"{name} {age:.0f}s" for name, age in sorted(stalled.items()))


def _stack(thread: int | None) -> str:
    frame = sys._current_frames().get(thread) if thread is not None else None
    if frame is None:
        return "its thread is unknown or gone"
    return "its thread is at:\n" + "".join(traceback.format_stack(frame)).rstrip()
