"""CoreC wire protocol 1.1 (protocol/SPEC.md): entity records, topics, message envelope.

Pure codecs: bytes in, typed values out, no I/O. Every decoder raises :class:`WireError`
(with a short ``reason`` slug for metrics) and nothing else on bad input.
"""

from corec_node.wire import limits
from corec_node.wire.batch import decode_batch, make_batch
from corec_node.wire.entities import (
    ENTITY_DTYPE,
    as_entity_array,
    decode_entities,
    encode_entities,
)
from corec_node.wire.envelope import (
    DECODE_EXCEPTIONS,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SCHEMAS,
    Envelope,
    decode_message,
    encode_message,
    message_type,
)
from corec_node.wire.errors import WireError
from corec_node.wire.messages import (
    Ack,
    Aggregates,
    Alert,
    EntityBatch,
    FusionPlan,
    Gossip,
    Heartbeat,
    MemberState,
    MemberStatus,
    Message,
    MsgType,
    Nack,
    Ping,
    PingReq,
    StatePush,
    StateReply,
    Vote,
    VoteRequest,
)
from corec_node.wire.sequence import SeqEvent, SequenceCounter, SequenceTracker
from corec_node.wire.topics import (
    TOPIC_AGGREGATES,
    TOPIC_ALERTS,
    TOPIC_DIRECT,
    TOPIC_ENTITIES_ALL,
    TOPIC_MEMBERSHIP,
    TOPIC_NUCLEUS,
    entity_channel,
    entity_topic,
    topic_for,
)

__all__ = [
    "DECODE_EXCEPTIONS",
    "ENTITY_DTYPE",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "SCHEMAS",
    "TOPIC_AGGREGATES",
    "TOPIC_ALERTS",
    "TOPIC_DIRECT",
    "TOPIC_ENTITIES_ALL",
    "TOPIC_MEMBERSHIP",
    "TOPIC_NUCLEUS",
    "Ack",
    "Aggregates",
    "Alert",
    "EntityBatch",
    "FusionPlan",
    "Envelope",
    "Gossip",
    "Heartbeat",
    "MemberState",
    "MemberStatus",
    "Message",
    "MsgType",
    "Nack",
    "Ping",
    "PingReq",
    "SeqEvent",
    "SequenceCounter",
    "SequenceTracker",
    "StatePush",
    "StateReply",
    "Vote",
    "VoteRequest",
    "WireError",
    "as_entity_array",
    "decode_batch",
    "decode_entities",
    "decode_message",
    "encode_entities",
    "encode_message",
    "entity_channel",
    "entity_topic",
    "limits",
    "make_batch",
    "message_type",
    "topic_for",
]
