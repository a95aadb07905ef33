"""Typed protocol messages: what the mesh cores send and receive.

The cores (membership, election, engine) speak these dataclasses only; the envelope codec
(``envelope.py``) turns them into frames and back, validating every field, so a core never
sees a value of the wrong type. Field names here are the body keys on the wire.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from corec_node.wire.overlay_messages import OverlayMessage


class MsgType(enum.IntEnum):
    # WARNING: ONLY APPEND TO THIS LIST! The numeric values are part of the protocol itself.
    PING = 1
    ACK = 2
    PING_REQ = 3
    NACK = 4
    GOSSIP = 5
    STATE_PUSH = 6
    STATE_REPLY = 7
    VOTE_REQUEST = 10
    VOTE = 11
    HEARTBEAT = 12
    ENTITY_BATCH = 20
    AGGREGATES = 21
    ALERT = 22
    FUSION_PLAN = 23
    FLOW = 24
    HEARTBEAT_ACK = 25
    BATCH_REPLY = 26
    PLACEMENT_REQUEST = 27
    PLACEMENT = 28
    SEQUENCE_HANDOFF = 29
    COPY_DONE = 30
    READY = 31
    LEARNERS = 32
    EVOLUTION_PLAN = 33
    NANO_WEIGHTS = 34
    AGGREGATE_COLUMNS = 35
    VIEW_JOIN = 36  # since 1.15: the overlay (SPEC 7.1)
    VIEW_JOIN_REPLY = 37
    FORWARD_JOIN = 38
    NEIGHBOR = 39
    NEIGHBOR_REPLY = 40
    DISCONNECT = 41
    SHUFFLE = 42
    SHUFFLE_REPLY = 43
    TREE_GOSSIP = 44
    IHAVE = 45
    GRAFT = 46
    PRUNE = 47


class MemberStatus(enum.IntEnum):
    # WARNING: ONLY APPEND TO THIS LIST! The numeric values are part of the protocol itself.
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class MemberState:
    """One member as gossiped: enough for any node to reach it and order updates."""

    name: str
    addr: str  # "host:port" of its ROUTER (direct) socket
    pub: str  # "host:port" of its PUB socket
    inc: int  # incarnation; only the member itself raises it (to refute)
    status: MemberStatus
    version: str = ""  # since 1.3: the member's build ("" unknown), as it announced itself
    protocol: str = ""  # since 1.3: the wire protocol it speaks, "MAJOR.MINOR"
    features: tuple[str, ...] = ()  # since 1.3: what it supports that changes the wire
    data: str = ""  # since 1.5: "host:port" of its data (producer) socket; "" none
    tags: tuple[str, ...] = ()  # since 1.8: "key=value" labels from its config (node.tags), for people and plugins
    pruned: bool = False  # since 1.9: with status left, an operator's force-leave --prune: forget it now
    settings: tuple[str, ...] = ()  # since 1.10: "key=value" of its config that must agree cluster-wide, and plugin versions


# -- membership (SWIM + Lifeguard) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe; the target answers Ack to ``reply_to``."""

    probe: int
    target: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class Ack:
    probe: int
    target: str  # the member that was probed (the sender itself, or via a relay)


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a member to probe ``target`` for us and relay its Ack (or a Nack)."""

    probe: int
    target: str
    target_addr: str
    reply_to: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Lifeguard: the relay is alive but got no Ack from the target in time."""

    probe: int
    target: str


@dataclass(frozen=True, slots=True)
class Gossip:
    """Member updates broadcast on the PUB stream (topic ``mbr``). Since 1.13 ``quiet``:
    how many of the sender's Gossip messages just before this one carried no update for
    the last time, so a receiver that missed only those will hear
    all they carried again and needs no push-pull (membership rule 9). None: not told (a
    1.12 sender): every gap may have lost something."""

    updates: tuple[MemberState, ...]
    quiet: int | None = None


@dataclass(frozen=True, slots=True)
class StatePush:
    """Full state push-pull: the receiver merges and answers StateReply."""

    join: bool
    reply_to: str
    members: tuple[MemberState, ...]


@dataclass(frozen=True, slots=True)
class StateReply:
    members: tuple[MemberState, ...]


# -- nucleus election ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Voter:
    """One voter of a configuration (since 1.3): its name and direct address."""

    name: str
    addr: str


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """``pre`` marks a pre-vote: it asks, changes nothing, and is refused while a live
    leader is heard. ``cfg_term``/``cfg_index``/``cfg_cluster`` (since 1.3) identify the
    candidate's voter configuration: a voter whose own is newer, or of another cluster,
    refuses it."""

    term: int
    pre: bool
    reply_to: str
    cfg_term: int = 0
    cfg_index: int = 0
    cfg_cluster: str = ""


@dataclass(frozen=True, slots=True)
class Vote:
    term: int
    granted: bool
    pre: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader heartbeat on the PUB stream (topic ``nuc``). ``placement`` (since 1.1) is the
    digest of the member set the leader places blocks over (``engine.placement.members_digest``):
    followers act on a new placement map only when their own view has the same digest.
    Empty: the sender does not confirm maps (a 1.0 leader); followers act on their own view.
    Since 1.3: ``seq`` numbers the heartbeat (followers answer HeartbeatAck), and the
    leader's voter configuration travels in ``cfg_term``, ``cfg_index``, ``voters``, with
    the highest index it knows committed in ``commit`` and the id of the cluster it was
    bootstrapped in, ``cfg_cluster``. Since 1.11: the configuration's cluster ``settings``,
    ``key=value`` sorted (voters rule 9; empty: it holds none)."""

    term: int
    leader: str
    placement: str = ""
    seq: int = 0
    cfg_term: int = 0
    cfg_index: int = 0
    voters: tuple[Voter, ...] = ()
    commit: int = 0
    cfg_cluster: str = ""
    settings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    """A follower's answer to its leader's heartbeat ``seq`` (direct, since 1.3): it follows
    the leader of ``term`` and has stored the configuration ``(cfg_term, cfg_index)``. The
    leader's lease and its configuration commits count these."""

    term: int
    seq: int
    cfg_term: int
    cfg_index: int


# -- engine (SPEC section 9) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityBatch:
    """Header of an entity batch; the records travel in the payload frame.

    Since 1.5 (owner-routed ingest, SPEC 9.6): ``producer`` (a producer's id, 0 anonymous)
    and ``pseq`` (its sequence, rising by batch across all the owners it sends to) make
    retries idempotent; ``acks`` is what the producer waits for (0 nothing, 1 the owner
    queued the records for its store); ``epoch`` is the placement epoch of the map the
    producer split the batch by (0: not split); ``hops`` counts forwards between nodes.
    Since 1.6 (replicas, SPEC 9.7): ``replica`` 1 marks records a block's owner stored, sent
    to the block's other holders (answered once queued: what ``acks`` 2, all, waits for);
    2 a block's copy for a new holder (catch-up); 0 a producer's batch. ``delete``: the
    records name entities to remove (their values are ignored), in order with writes."""

    channel: int
    count: int
    compressed: bool
    producer: int = 0
    pseq: int = 0
    acks: int = 1
    epoch: int = 0
    hops: int = 0
    replica: int = 0
    delete: bool = False


@dataclass(frozen=True, slots=True)
class Aggregates:
    """An owner's block aggregates after its tick ``tick`` (topic ``agg``): one row map per
    block, with the keys of SPEC 9.2."""

    tick: int
    rows: tuple = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert a node raised (topic ``alr``): its ``kind`` and readable ``text``; since 1.10
    ``facts``, a row map of ``uid``, ``severity``, ``block``, ``channel``, ``value`` and
    ``plugin`` (each optional), so every node can keep the alert as its raiser did."""

    kind: str
    text: str
    facts: dict | None = None


@dataclass(frozen=True, slots=True)
class FusionPlan:
    """The nucleus's fusion decisions (topic ``nuc``), fenced by its ``term``. Each entry is a
    map ``{"weak", "strong", "channel", "reason"}``; every node applies them in order."""

    term: int
    fusions: tuple = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Flow:
    """Ingest flow control (topic ``flw``, since 1.2): the sender's backlog of stream batches
    is deep, so nodes that republish producer batches should pause taking new ones for
    ``hold_ms`` milliseconds (or until the sender's next FLOW); 0 ends the pause."""

    hold_ms: int


class ReplyStage(enum.IntEnum):
    # WARNING: ONLY APPEND TO THIS LIST! The numeric values are part of the protocol itself.
    QUEUED = 0  # the batch was queued for storing and republished (or refused)


REPLY_MINOR = 4  # producers of protocol 1.4 and later read BatchReply; older ones never do


@dataclass(frozen=True, slots=True)
class BatchReply:
    """A node's answer to a producer's EntityBatch (direct, to the producer's connection,
    since 1.4): the batch's ``seq`` (its envelope's), how many of its records the node
    ``accepted`` and how many it refused, by reason (``rejected``, empty when none).
    ``stage`` says how far the accepted records got: 1.4 answers once, when the batch is
    queued; a later minor may answer again for the same batch at a later stage, and a
    producer ignores stages it does not know. Producers are held by how many batches they
    leave unanswered, never by the node's socket (SPEC 9.4)."""

    seq: int
    accepted: int
    rejected: Mapping[str, int] = field(default_factory=dict)
    stage: int = ReplyStage.QUEUED
    epoch: int = 0  # since 1.5: the node's placement epoch when the batch reached a node that does not own all of it


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A producer asks a node for the placement map (direct, since 1.5); ``epoch``: the map
    it holds (0 none)."""

    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Owner:
    """A member that owns blocks under a placement map, and where its data socket is."""

    name: str
    data: str


@dataclass(frozen=True, slots=True)
class Placement:
    """The placement map the answering node acts on (direct, since 1.5): its ``epoch`` and
    member ``digest`` (SPEC 9.1), the ``block_size`` that makes block ids, the ``owners``
    (every member of the map, with its data socket), and the ``fusions`` in force (rows
    ``{"block": id, "root": id}``: a fused block is placed under its root, engine rule 5).
    A producer computes each block's owner with the map's ``rule`` (SPEC 9.1)."""

    epoch: int
    digest: str
    block_size: int
    owners: tuple[Owner, ...] = ()
    fusions: tuple = ()
    replicas: int = 0  # since 1.6: copies of each block (0: a 1.5 node, one copy); acks 2 waits for all
    rule: str = ""  # since 1.7: "ring" (rule 5); absent: rendezvous (rule 1)


@dataclass(frozen=True, slots=True)
class SequenceHandoff:
    """Producer sequences handed to a block's new owner with the block (direct, since 1.5):
    rows ``{"producer": id, "block": id, "pseq": n}``, the highest sequence each producer
    has applied to each block (SPEC 9.6). Sent before the block's records."""

    rows: tuple = ()


@dataclass(frozen=True, slots=True)
class CopyDone:
    """A member sent a learner every block copy it owes it under the map of ``digest``
    (data socket, since 1.6, after the copies: SPEC 9.7); ``records`` it sent; ``epoch`` the
    member's placement epoch, which the learner's rows must pass once it owns blocks."""

    digest: str
    records: int = 0
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Ready:
    """A learner caught up under the map of ``digest``: every member sent its CopyDone.
    To the nucleus's data socket (since 1.6), again every tick until it is a member."""

    digest: str


@dataclass(frozen=True, slots=True)
class Learners:
    """The members the nucleus of ``term`` names learners (topic ``nuc``, since 1.6): they
    hold copies and own no block until they have caught up (SPEC 9.7). Sent on change and
    every engine tick."""

    term: int
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EvolutionPlan:
    """The nucleus of ``term`` gives some blocks a challenger genome to run in shadow
    (topic ``nuc``, since 1.10): each row names the block, the challenger as genome JSON
    and the id of the genome it challenges (SPEC 9.8)."""

    term: int
    challenges: tuple = ()  # of row maps: block, challenger (genome JSON), current (genome id)


@dataclass(frozen=True, slots=True)
class NanoWeights:
    """The torch forecasters' weights of blocks of intelligent channels, sent by a block's
    holder to a new holder after a map change (data socket, since 1.12, SPEC 9.8): one row
    map ``{"block": id, "ticks": n, "size": bytes}`` per block, in the order their bytes
    follow one another in the payload frame (opaque bytes: the forecaster's own state
    format); ``ticks``: the ticks of means the sender's forecaster of the block has seen."""

    rows: tuple  # of row maps: block, ticks, size


COLUMNS_MINOR = 14  # owners of protocol 1.14 and later publish AGGREGATE_COLUMNS beside AGGREGATES
COLUMNS_FEATURE = "agg_columns"  # the feature a 1.14 member announces for it


@dataclass(frozen=True, slots=True)
class AggregateColumns:
    """An owner's block aggregates after its tick ``tick`` as columns (topic ``col``, since
    1.14): ``columns`` maps each key of SPEC 9.2 to its values, one a row, every column as
    long as the others; the same rows as AGGREGATES, at under half the bytes and three
    fifths of the work to take in (the keys are written once, and checked a column at a
    time)."""

    tick: int
    columns: dict = field(default_factory=dict)


Message = (
    Ping | Ack | PingReq | Nack | Gossip | StatePush | StateReply
    | VoteRequest | Vote | Heartbeat | HeartbeatAck | EntityBatch | Aggregates | Alert | FusionPlan | Flow
    | BatchReply | PlacementRequest | Placement | SequenceHandoff | CopyDone | Ready | Learners | EvolutionPlan
    | NanoWeights | AggregateColumns | OverlayMessage
)
