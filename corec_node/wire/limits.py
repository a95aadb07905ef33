"""Size limits of CoreC wire protocol 1.4 (protocol/SPEC.md, "Size limits").

Every value is part of the protocol: a receiver rejects anything above them, so a sender
must stay under them. Each constant says why it is what it is.
"""

from __future__ import annotations

ENTITY_RECORD_BYTES = 10
"""One entity record: id u32 + channel u8 + value f32 + active u8 (``!IBf?``)."""

MAX_ENVELOPE_BYTES = 1 << 20
"""1 MiB. The envelope carries headers and small bodies; the largest is a full member list
(StatePush/StateReply), about 100 bytes a member with typical names and addresses, so a
cluster of several thousand members still fits in one frame."""

MAX_PAYLOAD_BYTES = 16 << 20
"""16 MiB. The payload frame of an entity batch: 1.6 M raw records, more than a node holds
in one block set, small enough that a hostile frame cannot exhaust an edge device."""

MAX_BATCH_RECORDS = MAX_PAYLOAD_BYTES // ENTITY_RECORD_BYTES
"""1,677,721 records: what fits in a raw payload. A zstd payload may not decompress to
more than this either (a compressed frame cannot smuggle a bigger batch, or a zip bomb)."""

MAX_NAME_BYTES = 255
"""Member names, sender, cluster label, alert kind (UTF-8 bytes): a DNS name fits."""

MAX_ADDR_BYTES = 255
"""``host:port`` addresses (UTF-8 bytes): a DNS name (253) plus a port does not need more."""

MAX_MEMBERS_PER_MESSAGE = 10_000
"""Member states in one Gossip/StatePush/StateReply. The 1 MiB envelope binds first for
long names; this bounds the work a receiver does for one message."""

MAX_PEERS_PER_MESSAGE = 1024
"""Addresses in one overlay message's peer sample, and ids in one IHAVE or GRAFT (since 1.15):
a sample is a few dozen and an IHAVE at most 256; this bounds a hostile one."""

MAX_VOTERS = 64
"""Voters in one configuration (Heartbeat.voters). Clusters keep 3, 5 or 7 voters; this
bounds a hostile heartbeat, not a real one."""

MAX_FEATURES = 32
"""Feature names one member announces (MemberState.features)."""

MAX_TAGS = 32
"""``key=value`` tags one member announces (MemberState.tags, since 1.8)."""

MAX_SETTINGS = 64
"""``key=value`` settings one member announces (MemberState.settings, since 1.10): the config
keys that must agree cluster-wide and its plugins' versions (``corec-node drift``)."""

MAX_TEXT_BYTES = 4096
"""Free text (Alert.text): a readable message, not a log dump."""

MAX_ROWS_PER_MESSAGE = 10_000
"""Aggregates rows in one message (values a column of AGGREGATE_COLUMNS): one row a block; 10,000 blocks of ~1000 entities is ten
million entities, more than one node owns."""

MAX_REASONS = 16
"""Reasons in one BatchReply's ``rejected`` map (since 1.4): a batch is refused for one
reason in 1.4; room for partial answers of later minors, none for a hostile map."""

MAX_ROW_KEYS = 64
"""Keys in one aggregates row: SPEC 9.2 defines 12 (block, count, mean, ...); room to add."""

# -- msgpack unpacker limits ----------------------------------------------------------
# They bound what one container or string in an envelope may declare, so that a tiny
# hostile frame announcing a 4 GiB array is refused before anything is allocated. The
# frame size (MAX_ENVELOPE_BYTES) bounds the total: msgpack needs at least one byte an
# object, so a 1 MiB envelope decodes to at most about a million small Python objects.

MSGPACK_MAX_STR_LEN = 64 << 10
"""Longest string: our longest field is Alert.text (4 KiB); minor versions get headroom."""

MSGPACK_MAX_BIN_LEN = 64 << 10
"""Longest bin: 1.0 has no bin field in the envelope (bulk data goes in the payload)."""

MSGPACK_MAX_ARRAY_LEN = 65_536
"""Longest array: member lists and rows (10,000) with headroom for minor versions."""

MSGPACK_MAX_MAP_LEN = 256
"""Largest map: envelope, body, member state and row maps have a handful of keys."""

MSGPACK_MAX_EXT_LEN = 0
"""No ext types in protocol 1.x; an ext object anywhere is refused outright."""
