"""Recognises QoS 1/2 messages the broker redelivers after we committed them (our ack was lost).

The broker redelivers such a message with the DUP flag and its original packet id. For every
committed QoS 1/2 message we remember (packet id, topic, payload digest, batch number); a DUP
delivery matching an entry is a redelivery and is acked without being stored again. Two distinct
messages with the same bytes both count, because:

- a fresh (non-DUP) delivery under a packet id proves the broker had our ack for the previous
  message under it, so that entry goes;
- entries live only for the last few batches of a connection: acks go out right after each commit,
  so once a connection has committed KEEP_BATCHES more batches, older entries are acked for sure,
  and a packet id reused 65,535 messages later cannot be mistaken for a redelivery.

Entries are committed with each batch, so they survive a crash and match the redeliveries that
follow the restart.
"""

from __future__ import annotations

import zlib

from gateway.model import RawMessage

KEEP_BATCHES = 3

InflightEntry = tuple[int, str, int, int]  # packet id, topic, payload digest, batch number


def payload_digest(payload: bytes) -> int:
    """A 63-bit digest (fits DuckDB's BIGINT): crc32 and length."""
    return (zlib.crc32(payload) << 31) | (len(payload) & 0x7FFFFFFF)


class RedeliveryFilter:
    def __init__(self, entries: list[InflightEntry] | None = None) -> None:
        self._last: dict[int, tuple[str, int, int]] = {}
        for mid, topic, digest, batch in entries or []:
            self._last[mid] = (topic, digest, batch)
        self._next_batch = max((e[3] for e in entries or []), default=0) + 1
        self._session: int | None = None
        self._session_first_batch = self._next_batch

    def is_redelivery(self, message: RawMessage) -> bool:
        """True for a DUP delivery of a message already committed; updates what it knows."""
        if message.qos == 0:
            return False
        if not message.dup:
            self._last.pop(message.mid, None)
            return False
        known = self._last.get(message.mid)
        return (
            known is not None
            and known[0] == message.topic
            and known[1] == payload_digest(message.payload)
        )

    def remember(self, messages: list[RawMessage]) -> tuple[list[InflightEntry], int]:
        """Record a batch about to be committed.

        Returns the entries to persist with it and the batch number up to which persisted
        entries can be deleted (0: none yet).
        """
        batch = self._next_batch
        self._next_batch += 1
        if messages and messages[-1].session != self._session:
            self._session = messages[-1].session
            self._session_first_batch = batch
        rows: list[InflightEntry] = []
        for message in messages:
            if message.qos == 0:
                continue
            digest = payload_digest(message.payload)
            self._last[message.mid] = (message.topic, digest, batch)
            rows.append((message.mid, message.topic, digest, batch))
        cutoff = batch - KEEP_BATCHES
        if cutoff < self._session_first_batch:
            return rows, 0
        self._last = {mid: e for mid, e in self._last.items() if e[2] > cutoff}
        return rows, cutoff

    def __len__(self) -> int:
        return len(self._last)
