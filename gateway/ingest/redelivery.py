"""Recognises QoS 1/2 messages the broker redelivers after we committed them (our ack was lost).

The broker redelivers such a message with the DUP flag and its original packet id. For every
committed QoS 1/2 message we remember (packet id, topic, payload digest, batch number); a DUP
delivery matching an entry is a redelivery and is acked without being stored again.

An entry lives until the broker has provably received the ack for its batch: after acking a
batch, the ingest publishes a QoS 1 "ack barrier" on the same connection, and the broker's PUBACK
for it means every packet sent before it (our acks) arrived, since MQTT runs over one ordered
TCP stream. Until then — through a dropped connection, a broker restart or a crash — the entry
stays, and the redelivery is recognised. Once confirmed, the entry goes, so a packet id the broker
reuses later for a new message with the same bytes is a new reading. A confirmation counts only
once every message received before it has been through the filter (`MqttIngest.acks_confirmed`):
redeliveries the broker sent before it read our acks are among those. A fresh (non-DUP) delivery
under a packet id also proves the previous message under it was acked.

Entries are committed with each batch (and deleted once confirmed, in a later commit), so they
survive a crash.

After a reconnect the redeliveries can arrive while their first deliveries still wait, unacked,
in the same pending batch: messages accepted since the last `remember` count as known too.

Packet ids belong to a broker session. When the broker answers a connect with no session
present (it restarted without its persistence file, the session expired, a failover), the old
session's ids mean nothing: the first message of the new session (`RawMessage.session`) drops
every entry, and the next commit deletes them from the buffer. Within one session the broker
never has two unacked messages under one id as long as its in-flight window stays below 65,536
(`mqtt.max_inflight`). Mosquitto before 2.0.13 (Debian 12 ships 2.0.11) breaks that bound while a
queued backlog drains (each ack of its oldest in-flight message moves up to a whole window of
queued ones into flight), so the filter also copes with reuse: the ingest flags a message that
comes under an id the broker may still hold, one not yet acked or acked without a barrier's
confirmation (`RawMessage.id_reused`); several entries may share an id, and such a delivery does
not count as proof that the id was acked. (The broker may send it while our ack is on the wire:
were it taken as proof, a broker restart before it read that ack would redeliver the earlier
message with nothing left to recognise it by.)
"""

from __future__ import annotations

import zlib

from gateway.model import RawMessage

InflightEntry = tuple[int, str, int, int]  # packet id, topic, payload digest, batch number


def payload_digest(payload: bytes) -> int:
    """A 63-bit digest (fits DuckDB's BIGINT): crc32 and length."""
    return (zlib.crc32(payload) << 31) | (len(payload) & 0x7FFFFFFF)


Entry = tuple[str, int, int]  # topic, payload digest, batch number


class RedeliveryFilter:
    def __init__(self, entries: list[InflightEntry] | None = None) -> None:
        # Packet id -> what was last committed under it; earlier entries under the same id
        # (the broker reused it while an earlier message was unacked) wait in _older. The
        # common case stays one tuple per id: this runs for every message.
        self._last: dict[int, Entry] = {}
        self._older: dict[int, list[Entry]] = {}
        # Since the last remember (accepted, not committed yet): packet id -> (topic, digest),
        # and in _accepted_older any earlier one under a reused id.
        self._accepted: dict[int, tuple[str, int]] = {}
        self._accepted_older: dict[int, list[tuple[str, int]]] = {}
        for mid, topic, digest, batch in entries or []:
            self._add(mid, (topic, digest, batch))
        self._next_batch = max((e[3] for e in entries or []), default=0) + 1
        self.confirmed_upto = 0  # batches whose acks the broker has confirmed
        self._session = 0  # the session the entries belong to (0: the one the buffer last saw)

    def _add(self, mid: int, entry: Entry) -> None:
        earlier = self._last.get(mid)
        if earlier is not None:
            self._older.setdefault(mid, []).append(earlier)
        self._last[mid] = entry

    def _new_session(self, session: int) -> None:
        # Nothing of the old session can be redelivered under its packet ids: every entry goes
        # (the next commit deletes them), and so do messages accepted but not yet committed.
        self._session = session
        self._last.clear()
        self._older.clear()
        self._accepted.clear()
        self._accepted_older.clear()
        self.confirmed_upto = self._next_batch - 1

    def _known(self, mid: int, topic: str, digest: int) -> bool:
        accepted = self._accepted.get(mid)
        if accepted is not None and accepted == (topic, digest):
            return True
        last = self._last.get(mid)
        if last is not None and last[0] == topic and last[1] == digest:
            return True
        if mid in self._accepted_older and (topic, digest) in self._accepted_older[mid]:
            return True
        return any(e[0] == topic and e[1] == digest for e in self._older.get(mid, ()))

    def is_redelivery(self, message: RawMessage) -> bool:
        """True for a DUP delivery of a message already committed; updates what it knows."""
        if message.qos == 0:
            return False
        if message.session > self._session:
            self._new_session(message.session)
        mid, topic = message.mid, message.topic
        digest = payload_digest(message.payload)
        if message.dup:
            if self._known(mid, topic, digest):
                return True
        elif not message.id_reused:
            # A fresh message under an id not in flight: the broker had read our ack.
            self._last.pop(mid, None)
            self._older.pop(mid, None)
        earlier = self._accepted.get(mid)
        if earlier is not None:
            self._accepted_older.setdefault(mid, []).append(earlier)
        self._accepted[mid] = (topic, digest)
        return False

    def remember(self, messages: list[RawMessage]) -> tuple[list[InflightEntry], int]:
        """Record a batch about to be committed; returns the entries to persist and its number."""
        batch = self._next_batch
        self._next_batch += 1
        self._accepted.clear()
        self._accepted_older.clear()
        last = self._last
        rows: list[InflightEntry] = []
        for message in messages:
            if message.qos == 0 or message.session < self._session:
                continue  # an old session's id can never be redelivered
            mid, topic = message.mid, message.topic
            digest = payload_digest(message.payload)
            if (message.id_reused or message.dup) and mid in last:
                self._add(mid, (topic, digest, batch))  # keep the earlier one too
            else:
                last[mid] = (topic, digest, batch)
            rows.append((mid, topic, digest, batch))
        return rows, batch

    def confirm(self, upto_batch: int) -> None:
        """The broker has received our acks for every batch up to this one."""
        if upto_batch <= self.confirmed_upto:
            return
        self.confirmed_upto = upto_batch
        self._last = {mid: e for mid, e in self._last.items() if e[2] > upto_batch}
        if self._older:
            older = ((mid, [e for e in es if e[2] > upto_batch]) for mid, es in self._older.items())
            self._older = {mid: es for mid, es in older if es}

    def __len__(self) -> int:
        return len(self._last) + sum(len(es) for es in self._older.values())
