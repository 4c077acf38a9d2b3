"""The contract between the forwarder and a sink: a batch attempt, what a sink returns, and the
sink protocol with its optional hooks and their defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at delivering the buffer rows `first..last` of `stream`.

    The forwarder writes the range down before the first try, so after a crash the same range is
    sent again, and `resumed` tells the sink it may already be upstream, in part or in full; the
    sink must then deliver only what is missing. `since_ms` is when the range was first tried
    (the gateway's wall clock, milliseconds; it can step, so a sink judges only ages by it).
    `marks` is what the sink noted just before the first send (`Sink.marks`; Kafka: each
    partition's end offset), recorded with the attempt; None for an attempt recorded by a
    version that noted nothing, where a sink must assume the worst.
    """

    stream: str
    first: int
    last: int
    since_ms: int
    resumed: bool = False
    replay: bool = (
        False  # `edge-gateway replay`: the range was delivered before, maybe in other batches
    )
    marks: Mapping[str, Any] | None = None


def span(batch: pa.Table) -> tuple[int, int, int]:
    """A batch's first and last buffer position and its row count: which rows it holds, since
    buffer rows never change (a key for work a sink did ahead, in `Sink.prepare`)."""
    ids = batch.column("id")
    return int(ids[0].as_py()), int(ids[-1].as_py()), batch.num_rows


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the sink refused for good; it goes to the dead-letter table."""

    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    bytes_sent: int
    rejected: list[Rejection] = field(default_factory=list)


class BasicSink(Protocol):
    """The members every sink implements: a name, a send, a close. A sink written against these
    alone (no hooks) is given the hooks' defaults by `as_sink` when a forwarder takes it."""

    name: str

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        """Deliver the batch; returns once the sink has confirmed it.

        Errors: `SinkError` (retried with backoff), `SinkBackpressureError` (the upstream takes
        data slower than it comes: sent again as the same attempt after its `retry_after`, not
        counted as a failure), `SinkRejectedError` (the batch holds a record refused for good:
        the forwarder splits the batch to find it). Records refused one by one come back in
        `WriteResult.rejected`. A driver's exception is the `__cause__` of the sink error.
        """
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Sink(BasicSink, Protocol):
    """An upstream destination: the whole contract between a forwarder and a sink.

    Beside the basic members, three hooks; the bodies here are their defaults, which a sink
    class gets by subclassing `Sink`. A wrapper (telemetry's timing) must not subclass it: it
    implements every member and passes each on, so mypy reports a hook it would lose.
    """

    def prepare(self, stream: str, batch: pa.Table) -> None:
        """Work ahead on the next batch (Kafka encodes it), in a thread, while the one before
        is being sent; it may never be sent (a stop), or be sent as other batches.
        Default: nothing."""
        return None

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]:
        """What to note upstream before the first send of an attempt (JSON values; Kafka: each
        partition's end offset), so that a resend can find what earlier tries delivered. The
        forwarder calls it once per attempt, in a thread, before recording the attempt, and
        retries it like a send. While a backlog drains it calls it on the read-ahead thread,
        while the batch before is still being sent: what it notes must hold for a first send
        that comes later (an end offset taken earlier is a lower bound). Default: nothing to
        note."""
        return {}

    def stop(self) -> None:
        """The gateway is stopping: stop waiting on the upstream (the recorded attempt is sent
        again on the next start). Called from the event loop, while a send may be running in a
        thread. Default: nothing."""
        return None


HOOKS = ("prepare", "marks", "stop")


class _WithDefaults(Sink):
    """A basic sink with the hooks' defaults (inherited from `Sink`)."""

    def __init__(self, inner: BasicSink) -> None:
        self.inner = inner
        self.name = inner.name

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult:
        return await self.inner.write_batch(batch, attempt)

    async def aclose(self) -> None:
        await self.inner.aclose()


def as_sink(sink: BasicSink) -> Sink:
    """`sink` itself when it implements the whole contract; a sink with the basic members only
    (written before the hooks were part of it) gets the hooks' defaults. One with some hooks
    but not all is refused: most likely a wrapper that forgot to pass one on, which would then
    silently do nothing."""
    if isinstance(sink, Sink):
        return sink
    partial = [hook for hook in HOOKS if hasattr(sink, hook)]
    if partial:
        missing = [hook for hook in HOOKS if hook not in partial]
        raise TypeError(
            f"sink {sink.name!r} ({type(sink).__name__}) has {', '.join(partial)} but not "
            f"{', '.join(missing)}: implement every hook of gateway.sinks.base.Sink"
        )
    return _WithDefaults(sink)
