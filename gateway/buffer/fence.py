"""ReopenFence: readers share the database handle; closing and reopening it waits for them.

Closing a DuckDB connection closes every cursor taken from it, also one that another thread is
running a query on. Readers hold the fence (shared) while they use a cursor; a reopen holds it
alone. A waiting reopen keeps new readers out, so a steady stream of readers cannot starve it,
and it gives up after its timeout rather than stall the writer behind a long query.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReopenFence:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._reopening = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._reopening)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[bool]:
        """Yields True with every reader out (and new ones waiting), or False after `timeout`
        seconds with readers still in; the caller then leaves the handle alone."""
        with self._cond:
            while self._reopening:  # one reopen at a time
                self._cond.wait()
            self._reopening = True
            alone = self._cond.wait_for(lambda: self._readers == 0, timeout)
            if not alone:
                self._reopening = False
                self._cond.notify_all()
        try:
            yield alone
        finally:
            if alone:
                with self._cond:
                    self._reopening = False
                    self._cond.notify_all()

    @property
    def readers(self) -> int:
        return self._readers
