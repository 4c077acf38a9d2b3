"""The contract between the forwarder and a sink: a batch attempt, and what a sink returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at delivering the buffer rows `first..last` of `stream`.

    The forwarder writes the range down before the first try, so after a crash the same range is
    sent again, and `resumed` tells the sink it may already be upstream, in part or in full; the
    sink must then deliver only what is missing. `since_ms` is when the range was first tried
    (wall clock, milliseconds): nothing of it can be upstream from before that.
    """

    stream: str
    first: int
    last: int
    since_ms: int
    resumed: bool = False
    replay: bool = (
        False  # `edge-gateway replay`: the range was delivered before, maybe in other batches
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the sink refused for good; it goes to the dead-letter table."""

    position: int
    reason: str


@dataclass(frozen=True, slots=True)
class WriteResult:
    bytes_sent: int
    rejected: list[Rejection] = field(default_factory=list)


class Sink(Protocol):
    """An upstream destination. `write_batch` returns once the sink has confirmed the batch.

    Errors: `SinkError` (retried with backoff), `SinkBackpressureError` (retried after its
    `retry_after`), `SinkRejectedError` (the batch holds a record refused for good: the forwarder
    splits the batch to find it). Records refused one by one come back in `WriteResult.rejected`.
    """

    name: str

    async def write_batch(self, batch: pa.Table, attempt: Attempt) -> WriteResult: ...

    async def aclose(self) -> None: ...
