"""The contract between the forwarder and a sink: a batch attempt, and what a sink returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at delivering the buffer rows `first..last` of `stream`.

    The forwarder writes the range down before the first try, so after a crash the same range is
    sent again, and `resumed` tells the sink it may already be upstream, in part or in full; the
    sink must then deliver only what is missing. `since_ms` is when the range was first tried
    (the gateway's wall clock, milliseconds; it can step, so a sink judges only ages by it).
    `marks` is what the sink noted just before the first send (`MarksBeforeSend`; Kafka: each
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


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the sink refused for good; it goes to the dead-letter table."""

    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    bytes_sent: int
    rejected: list[Rejection] = field(default_factory=list)


class MarksBeforeSend(Protocol):
    """A sink that must note something upstream before the first send of an attempt (JSON
    values), so that a resend can find what the earlier tries delivered. The forwarder calls it
    once per attempt, before recording the attempt, and retries it like a send."""

    def marks(self, batch: pa.Table, attempt: Attempt) -> dict[str, Any]: ...


class Sink(Protocol):
    """An upstream destination. `write_batch` returns once the sink has confirmed the batch.

    Errors: `SinkError` (retried with backoff), `SinkBackpressureError` (retried after its
    `retry_after`), `SinkRejectedError` (the batch holds a record refused for good: the forwarder
    splits the batch to find it). Records refused one by one come back in `WriteResult.rejected`.
    """

    name: str

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult: ...

    async def aclose(self) -> None: ...
