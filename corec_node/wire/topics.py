"""Topic frames (SPEC.md, "Topics"): the first frame of every message.

ZeroMQ SUB sockets filter by byte prefix of the first frame, so topics are chosen for
prefix filtering: ``ent.`` gets every entity channel, ``ent.007`` only channel 7 (three
digits, so ``ent.1`` never matches channel 12's ``ent.012`` by accident). Direct
(ROUTER/DEALER) messages carry the topic ``dir`` so that every message has one layout.
"""

from __future__ import annotations

import operator

from corec_node.wire.messages import (
    Ack,
    AggregateColumns,
    Aggregates,
    Alert,
    BatchReply,
    CopyDone,
    EntityBatch,
    EvolutionPlan,
    Flow,
    FusionPlan,
    Gossip,
    Heartbeat,
    HeartbeatAck,
    Learners,
    Message,
    Nack,
    NanoWeights,
    Ping,
    PingReq,
    Placement,
    PlacementRequest,
    Ready,
    SequenceHandoff,
    StatePush,
    StateReply,
    Vote,
    VoteRequest,
)
from corec_node.wire.overlay_messages import OVERLAY_CLASSES

TOPIC_MEMBERSHIP = b"mbr"
TOPIC_NUCLEUS = b"nuc"
TOPIC_AGGREGATES = b"agg"
TOPIC_COLUMNS = b"col"  # AGGREGATE_COLUMNS (1.14): not under ``agg``, whose subscribers expect row maps
TOPIC_ALERTS = b"alr"
TOPIC_DIRECT = b"dir"
TOPIC_FLOW = b"flw"
TOPIC_ENTITIES_ALL = b"ent."
"""Subscribe to this prefix for every entity channel."""

MAX_CHANNEL = 255

# Topic of every message class whose topic does not depend on its fields.
FIXED_TOPICS: dict[type, bytes] = {
    Ping: TOPIC_DIRECT,
    Ack: TOPIC_DIRECT,
    PingReq: TOPIC_DIRECT,
    Nack: TOPIC_DIRECT,
    StatePush: TOPIC_DIRECT,
    StateReply: TOPIC_DIRECT,
    VoteRequest: TOPIC_DIRECT,
    Vote: TOPIC_DIRECT,
    Gossip: TOPIC_MEMBERSHIP,
    Heartbeat: TOPIC_NUCLEUS,
    HeartbeatAck: TOPIC_DIRECT,
    Aggregates: TOPIC_AGGREGATES,
    AggregateColumns: TOPIC_COLUMNS,
    Alert: TOPIC_ALERTS,
    FusionPlan: TOPIC_NUCLEUS,
    Flow: TOPIC_FLOW,
    BatchReply: TOPIC_DIRECT,
    PlacementRequest: TOPIC_DIRECT,
    Placement: TOPIC_DIRECT,
    SequenceHandoff: TOPIC_DIRECT,
    CopyDone: TOPIC_DIRECT,
    Ready: TOPIC_DIRECT,
    Learners: TOPIC_NUCLEUS,
    EvolutionPlan: TOPIC_NUCLEUS,
    NanoWeights: TOPIC_DIRECT,
    **dict.fromkeys(OVERLAY_CLASSES, TOPIC_DIRECT),  # the overlay's (1.15): peer to peer
}

_ENTITY_TOPICS = tuple(b"ent.%03d" % ch for ch in range(MAX_CHANNEL + 1))
_CHANNEL_OF_TOPIC = {topic: ch for ch, topic in enumerate(_ENTITY_TOPICS)}


def entity_topic(channel: int) -> bytes:
    """``b"ent."`` + the channel as three decimal digits: ``entity_topic(7) == b"ent.007"``."""
    ch = operator.index(channel)
    if not 0 <= ch <= MAX_CHANNEL:
        raise ValueError(f"channel {ch} out of range [0, {MAX_CHANNEL}]")
    return _ENTITY_TOPICS[ch]


def entity_channel(topic: bytes) -> int | None:
    """The channel of an entity topic (``b"ent.007"`` -> 7), or None if it is not one."""
    return _CHANNEL_OF_TOPIC.get(bytes(topic))


def topic_for(msg: Message) -> bytes:
    """The topic frame ``msg`` travels under (PUB topic, or ``dir`` for direct messages)."""
    if type(msg) is EntityBatch:
        return entity_topic(msg.channel)
    try:
        return FIXED_TOPICS[type(msg)]
    except KeyError:
        raise TypeError(f"not a protocol message: {type(msg).__name__}") from None
