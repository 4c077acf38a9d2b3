"""Content identity: a message whose topic and payload arrived before, within its route's
`dedup_window`, is a copy, not a new reading.

Packet ids and the DUP flag cannot tell a broker rollback apart: a broker restarted from its
last save (a crash, a power cut) delivers again, as new (DUP=0), every message the gateway
acked since that save. For payloads that carry a device time or a sequence number the bytes
themselves are the identity, so routes of such devices set a window (`routes[].dedup_window`).
Two genuinely equal payloads within the window (a plain `21.5`, sent twice) cannot be told
apart from a copy: such routes must not set it (docs/architecture.md).

The identities are kept in the buffer, committed with the batch that first held them, so a
gateway that went down with the broker (one power cut for both) still knows them; the buffer
drops a copy's rows as it appends the batch (gateway/buffer/store.py), and the decoder drops a
copy of a message decoded but not committed yet.
"""

from __future__ import annotations

import hashlib


def content_identity(topic: str, payload: bytes) -> int:
    """64 bits of BLAKE2b over topic and payload, as DuckDB's BIGINT (signed).

    64 bits, not a crc32: a day's window on a busy route holds millions of identities, where 32
    bits would make a false copy likely.
    """
    digest = hashlib.blake2b(topic.encode(), digest_size=8)
    digest.update(b"\0")
    digest.update(payload)
    return int.from_bytes(digest.digest(), "big", signed=True)
