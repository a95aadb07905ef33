"""The control plane of the shell: membership and election (``mesh/core.py``) driven with
the node's clock, their effects carried out on the sockets, the vote file and the logs.

It owns the mesh core (behind the overlay, ``mesh/overlay.py``, with ``mesh.overlay``: then
membership news and heartbeats travel the tree over a few links, and the views' messages
go out direct as the core's do; once every member announces ``tree_data``, the data
plane's broadcasts travel the tree as well and no member's PUB stream is followed, so a
node's connections stay bounded: ``follow_tree_data``) and tells the rest of the node what
happened through one narrow, plain-data interface (``ControlEvents``: a ``ClusterView`` on every change of members or
leader, the placement digest in the leader's heartbeats, member and leader changes for the
plugin hooks, rows for SQLite), and learns from the data plane only the digest its own
heartbeats carry. It runs in the mesh process (``mesh_process.py``), where the data plane
cannot stall it; the events cross the link to the node process.

Care: everything here runs on the mesh process's loop; nothing may block it (the vote file
is a small fsynced write, the only disk I/O on this path).
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from corec_node import __version__, log
from corec_node.config import tag_map
from corec_node.mesh.core import HEARTBEATS_DIRECT, MEMBER_ACK_EVERY, MeshCore
from corec_node.mesh.effects import (
    Broadcast,
    ConfigCommitted,
    LeaderChanged,
    MemberChanged,
    MemberReaped,
    NameConflict,
    PersistConfig,
    PersistVote,
    Send,
)
from corec_node.mesh.election import ElectionConfig
from corec_node.mesh.hyparview import NeighborDown, NeighborUp, ViewSend
from corec_node.mesh.member import Member
from corec_node.mesh.membership import MembershipConfig
from corec_node.mesh.overlay import OVERLAY_FEATURE, OverlayConfig, OverlayMesh
from corec_node.mesh.plumtree import TreeSend
from corec_node.mesh.voters import Configuration, VoterConfig
from corec_node.shell.datadir import load_voters, mark_left, save_vote, save_voters
from corec_node.shell.joinwatch import JoinNews, JoinWatch
from corec_node.shell.traffic import Outbox
from corec_node.shell.transport import Transport
from corec_node.wire import FEATURES, PROTOCOL, SCHEMAS
from corec_node.wire.envelope import DATA_CARRIED_TYPES, message_type
from corec_node.wire.messages import Heartbeat, MemberState, MemberStatus, Message, MsgType
from corec_node.wire.overlay_messages import OVERLAY_CLASSES

TREE_DATA_FEATURE = "tree_data"  # and that it sends the data plane's broadcasts over the tree (1.16)
SNAPSHOT_PERIOD = 1.0  # write the member snapshot at most once a second
CONFLICT_GRACE = 10.0  # a node that finds its name taken this soon after it joined exits
DISCOVERY_RETRY = 5.0  # one join per discovered peer per 5 s
CONTROL_TYPES = frozenset({  # what the mesh core handles; the router sends these here
    MsgType.PING, MsgType.ACK, MsgType.PING_REQ, MsgType.NACK, MsgType.GOSSIP,
    MsgType.STATE_PUSH, MsgType.STATE_REPLY, MsgType.VOTE_REQUEST, MsgType.VOTE, MsgType.HEARTBEAT,
    MsgType.HEARTBEAT_ACK,
})
OVERLAY_TYPES = frozenset(  # the overlay's (SPEC 7.1): to the control plane too when it runs the overlay
    t for t, schema in SCHEMAS.items() if schema.body.cls in OVERLAY_CLASSES)
TREE_DATA_CLASSES = frozenset(SCHEMAS[t].body.cls for t in DATA_CARRIED_TYPES)  # what may ride the tree (1.16)
# how long a member must stay alive before the leader makes it a voter, per timer profile
PROMOTE_AFTER = {"lan": 2.0, "edge": 10.0, "test": 0.5}
_LIVE = (MemberStatus.ALIVE, MemberStatus.SUSPECT)


def profile_configs(profile: str) -> tuple[MembershipConfig, ElectionConfig]:
    return getattr(MembershipConfig, profile)(), getattr(ElectionConfig, profile)()


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the data plane needs to know of the cluster, as plain data."""

    members: Mapping[str, str]  # every known member (any status) -> its direct address
    live: tuple[str, ...]  # alive or suspect, this node included, sorted
    leader: str | None
    term: int
    data: Mapping[str, str] = field(default_factory=dict)  # member -> its data socket (1.5 and later)
    replicating: frozenset[str] = frozenset()  # members that hold replicas and learn (1.6 and later)
    rendezvous: frozenset[str] = frozenset()  # members that place blocks by rendezvous only (before 1.7)
    tags: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # member -> its tags (1.8 and later)
    evolving: frozenset[str] = frozenset()  # members that take the nucleus's evolution plans (1.10 and later)
    settings: tuple[tuple[str, str], ...] = ()  # the cluster's committed settings (voters rule 9); () none known
    unheard: frozenset[str] = frozenset()  # members whose state we have not heard (restored from our snapshot)

    @property
    def routed(self) -> bool:
        """Owner-routed ingest (SPEC 9.6): every live member has a data socket. Otherwise
        producer batches are republished on the PUB stream, as before 1.5."""
        return all(name in self.data for name in self.live)


class ControlEvents(Protocol):
    """What the control plane tells the rest of the node (in the node process: the data
    plane, the plugin hooks, the recorder)."""

    def view_changed(self, view: ClusterView) -> None: ...

    def leader_placement(self, digest: str) -> None:
        """The digest in our leader's heartbeat changed ("" : a leader that confirms no map)."""

    def member_event(self, event: dict[str, Any]) -> None:
        """For the ``corec_member_event`` hook (hookspecs.py)."""

    def leader_changed(self, leader: str | None, term: int) -> None:
        """For the ``corec_leader_changed`` hook."""

    def audit(self, kind: str, subject: str, reason: str, *, term: int | None = None, **details: Any) -> None: ...

    def nucleus(self, term: int, leader: str) -> None: ...

    def members(self, snapshot: Sequence[MemberState]) -> None:
        """The member snapshot to keep in SQLite."""

    def vote(self, term: int) -> None:
        """A vote of this term is on disk: SQLite keeps the highest term too, so a vote file
        rolled back behind it is not trusted at the next start (``shell/datacheck.py``)."""

    def stop(self, code: int) -> None:
        """Stop the node with this exit code."""


class PluginHost(Protocol):
    """What plugin hooks receive as ``node`` (hookspecs.py documents it)."""

    name: str


class HeartbeatGaps:
    """The largest gap between two heartbeats of our leader: how well the leader's timing
    held (an overloaded node shows here before it costs an election)."""

    __slots__ = ("largest", "late", "late_after", "thinned_every", "_from", "_last")

    def __init__(self) -> None:
        self.largest = 0.0
        self.late = 0  # gaps over ``late_after``: the interval plus a tenth of the election timeout
        self.late_after = float("inf")
        self.thinned_every = 0.0  # the interval of the heartbeats a member that is not a voter hears (core rule 15)
        self._from: str | None = None
        self._last = 0.0

    def heard(self, leader: str, now: float, thinned: bool = False) -> None:
        """``thinned``: we are not a voter and the leader publishes one heartbeat in ten;
        a gap is then late against that interval."""
        if leader == self._from:
            gap = now - self._last
            self.largest = max(self.largest, gap)
            self.late += gap > self.late_after + (self.thinned_every if thinned else 0.0)
        self._from, self._last = leader, now


def data_rides_tree(members: Iterable[Member]) -> bool:
    """Every live member whose build we heard announces ``tree_data`` (SPEC 7.1, 1.16). One
    whose build has not arrived yet is not taken for an older one: every join would
    switch the cluster's data plane to the PUB streams and back."""
    return all(TREE_DATA_FEATURE in m.build[2] for m in members if m.status in _LIVE and m.build[1])


class ControlPlane:
    """Drives one ``MeshCore`` for the node; see the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        addr: str,
        pub: str,
        profile: str,
        max_voters: int,
        data_dir: Path,
        transport: Transport,
        outbox: Outbox,
        events: ControlEvents,
        clock: Callable[[], float],
        data: str = "",
        tags: Sequence[str] = (),
        settings: Sequence[str] = (),
        cluster_settings: tuple[tuple[str, str], ...] = (),
        overlay: bool = False,
    ) -> None:
        self.name, self.addr, self.pub, self.data = name, addr, pub, data
        self.overlay = overlay
        self.cluster_settings = cluster_settings  # ours, for a configuration that holds none (voters rule 9)
        self.tags = tuple(tags)  # node.tags, announced with our member record
        self.settings = tuple(settings)  # what must agree cluster-wide, announced too (drift)
        self.profile = profile
        self.voter_config = VoterConfig(max_voters=max_voters, promote_after=PROMOTE_AFTER.get(profile, 2.0))
        self.data_dir = data_dir
        self.transport = transport
        self.outbox = outbox
        self.events = events
        self._clock = clock
        self.core: MeshCore | OverlayMesh | None = None
        self.neighbors: set[str] = set()  # the overlay's: the peers we hold a link to
        self.tree_data = False  # the data plane's broadcasts ride the tree, no PUB followed (``follow_tree_data``)
        self.on_tree_data: Callable[[str, Message], None] | None = None  # a data broadcast the tree delivered
        self.tree_delivered: collections.Counter[str] = collections.Counter()  # what the tree delivered, by type
        self.elections_started = 0
        self.conflicts: dict[str, str] = {}  # other node's addr -> the name it shares with us
        self.leader_placement: str | None = None  # digest in our leader's last heartbeat (SPEC 9.1)
        self._placement_digest = ""  # the map our own heartbeats confirm, set by the data plane
        self._peers: dict[str, tuple[str, str]] = {}  # name -> (direct addr, pub addr), for cleanup on reap
        self._joined_at = float("-inf")  # wall time of our last join: we are the newcomer in a conflict
        self._discovered: dict[str, float] = {}  # addr -> when we last tried to join it
        self._snapshot_dirty = False
        self.member_changes = 0  # member changes and reaps so far: what watches members looks again when it grows
        self._snapshot_at = 0.0
        self._durable: tuple[tuple[int, str | None], Configuration] = ((0, None), Configuration())  # on disk
        self.disk_error: str | None = None  # the last vote or configuration write that failed
        self.hints = 0  # connection closes the socket monitor reported (core rule 13)
        self.gaps = HeartbeatGaps()
        self._join_watch = JoinWatch((), 0.0)
        self._last_view: ClusterView | None = None
        self._legacy_seen: dict[str, str] = {}  # the overlay's old members, as last logged

    @property
    def placement_digest(self) -> str:
        return self._placement_digest

    @placement_digest.setter
    def placement_digest(self, digest: str) -> None:
        """The map the nucleus confirms in its heartbeats (the core stamps them)."""
        self._placement_digest = digest
        if self.core is not None:
            self.core.placement = digest

    # -- life -----------------------------------------------------------------------

    def start(self, snapshot: Sequence[MemberState], join: Sequence[str], *, term: int,
              voted_for: str | None, now: float, abstain: bool = False, join_required: bool = False,
              join_timeout: float = 30.0) -> None:
        mcfg, ecfg = profile_configs(self.profile)
        self.gaps.late_after = ecfg.heartbeat_interval + ecfg.election_timeout_min / 10
        self.gaps.thinned_every = (MEMBER_ACK_EVERY - 1) * ecfg.heartbeat_interval
        stored = load_voters(self.data_dir)
        config = Configuration(*stored) if stored is not None else None
        self._durable = ((term, voted_for), config or Configuration())
        features = (*FEATURES, OVERLAY_FEATURE, TREE_DATA_FEATURE) if self.overlay else FEATURES
        rng = random.Random()
        core = MeshCore(self.name, self.addr, self.pub, mcfg, ecfg, rng, now,
                        term=term, voted_for=voted_for, config=config, voter_config=self.voter_config,
                        build=(__version__, PROTOCOL, features, self.data, self.tags, self.settings),
                        abstain=abstain, settings=self.cluster_settings)
        # plumtree rule 3: this life's broadcasts are numbered past any earlier life's
        self.core = OverlayMesh(core, self.addr, OverlayConfig(), rng, now, first_seq=time.time_ns() // 1000) \
            if self.overlay else core
        self.core.placement = self._placement_digest
        if snapshot or join:
            self._joined_at = time.time()
        self._join_watch = JoinWatch(join, now, required=join_required, timeout=join_timeout)
        self.apply(self.core.start(snapshot, join, now))

    @property
    def ready(self) -> bool:
        return self.core is not None

    @property
    def leader(self) -> str | None:
        return self.core.leader if self.core is not None else None

    @property
    def term(self) -> int:
        return self.core.term if self.core is not None else 0

    def voters_json(self) -> dict[str, Any]:
        """``corec-node voters``: the configuration this node holds, as ``raft list-peers``."""
        assert self.core is not None
        cfg = self.core.config
        return {"index": cfg.index, "config_term": cfg.term, "committed": self.core.voters.committed,
                "disk_error": self.disk_error,
                "cluster_id": cfg.cluster, "features": sorted(f for f in FEATURES if self.core.feature_on(f)), "foreign": [{"name": n, "cluster_id": c} for n, c in self.core.foreign.items()],
                "voters": [{"name": n, "addr": a} for n, a in cfg.voters],
                "settings": dict(cfg.settings), "leader": self.core.leader, "term": self.core.term}

    def view(self) -> ClusterView:
        assert self.core is not None
        members = self.core.membership.members()
        return ClusterView(
            members={m.name: m.addr for m in members},
            data={m.name: m.build[3] for m in members if m.build[3]} | ({self.name: self.data} if self.data else {}),
            live=tuple(sorted(m.name for m in members if m.status in _LIVE)),
            leader=self.core.leader,
            term=self.core.term,
            replicating=frozenset(m.name for m in members if "replicas" in m.build[2]) | {self.name},
            # a member whose build we have not heard yet is not taken for an old one: the rule
            # would flip, and every block move, until its state arrives
            rendezvous=frozenset(m.name for m in members if m.build[1] and "ring" not in m.build[2]) - {self.name},
            unheard=frozenset(m.name for m in members if not m.build[1]) - {self.name},
            tags={m.name: tag_map(m.build[4]) for m in members if m.build[4]},
            evolving=frozenset(m.name for m in members if "evolution" in m.build[2]) | {self.name},
            settings=self.core.config.settings if self.core.voters.committed else (),
        )

    # -- inputs -----------------------------------------------------------------------

    def handle(self, sender: str, msg: Message, now: float, missed: int = 0) -> None:
        """A decoded control message (``CONTROL_TYPES``); a core bug on one message is
        logged, never fatal."""
        assert self.core is not None
        addr = self.core.membership.addr_of(sender) if sender != self.name else None
        if addr is not None:  # before our answer is queued: towards a restarted peer, a fresh dial
            self.transport.redial_if_down(addr)
        try:
            self.apply(self.core.handle(sender, msg, now, missed))
        except Exception:
            logging.getLogger(log.LOGGER_NAME).exception("handle_failed", extra={"fields": {"type": type(msg).__name__}})
            return
        if type(msg) is Heartbeat:
            self._heartbeat(sender, msg, now)
        elif self.overlay:
            for origin, carried in self.core.delivered:  # type: ignore[union-attr]
                self.tree_delivered[message_type(carried).name.lower()] += 1
                if type(carried) is Heartbeat:
                    self._heartbeat(origin, carried, now)
                elif type(carried) in TREE_DATA_CLASSES and self.on_tree_data is not None:
                    self.on_tree_data(origin, carried)

    def share(self, msg: Message) -> bool:
        """A broadcast of the data plane, over the tree while ``tree_data`` holds; False when
        it does not (the PUB stream is then the only way)."""
        if not self.tree_data or self.core is None:
            return False
        try:
            self.apply(self.core.share(msg, self._clock()))  # type: ignore[union-attr]
        except ValueError as exc:  # not encodable inside a TREE_GOSSIP (over the envelope limit): lost
            log.event("tree_share_failed", logging.WARNING, type=type(msg).__name__, error=str(exc))
            return False
        return True

    @property
    def legacy_members(self) -> list[str]:
        """Live members that speak no overlay: while any, the cluster runs by the full mesh's
        rules (overlay rule 10). Empty without the overlay (this node is such a member)."""
        core = self.core
        return sorted(core.legacy.values()) if isinstance(core, OverlayMesh) else []

    @property
    def full_mesh(self) -> bool:
        """Every member is probed and followed: no overlay here, or a member without it."""
        return not self.overlay or bool(self.core.legacy)  # type: ignore[union-attr]

    def _watch_legacy(self) -> None:
        """Say when the cluster turns into a full mesh for an old member, and back (the
        overlay replaces its map when it changes, so an identity check is enough)."""
        legacy = self.core.legacy  # type: ignore[union-attr]
        if legacy is self._legacy_seen:
            return
        before, self._legacy_seen = self._legacy_seen, legacy
        if legacy:
            log.event("overlay_full_mesh", logging.WARNING, members=",".join(sorted(legacy.values())),
                      detail="live members that speak no overlay (an older release, or mesh.overlay = false): "
                             "every node runs as a full mesh until they are gone")
        elif before:
            log.event("overlay_tree", detail="every live member speaks the overlay: broadcasts over the tree again")

    def follow_tree_data(self) -> bool:
        """Switch between the tree and every member's PUB stream for the data plane's
        broadcasts (SPEC 7.1, 1.16): the tree while ``data_rides_tree``, else the streams
        as before. True when it switched."""
        core = self.core
        wanted = self.overlay and core is not None and data_rides_tree(core.membership.records())
        if wanted == self.tree_data:
            return False
        self.tree_data = wanted
        assert core is not None
        if wanted:  # the dead ones too: their streams were kept in case they return
            for pub in list(self.transport.sub_peers):
                self.transport.disconnect_sub(pub)
        else:
            for member in core.membership.members():
                if member.name != self.name and member.status in _LIVE:
                    self.transport.connect_sub(member.pub)
        log.event("tree_data", on=wanted, subscribed=len(self.transport.sub_peers))
        return True

    def _heartbeat(self, sender: str, msg: Heartbeat, now: float) -> None:
        """A heartbeat the election core has seen (direct, published, or over the tree)."""
        assert self.core is not None
        if sender == self.leader and sender != self.name:
            core = self.core
            self.gaps.heard(sender, now, not core.voters.voter and core.membership.announced(HEARTBEATS_DIRECT))
        self._placement_heartbeat(sender, msg)

    def speaks_for(self, name: str, addr: str) -> bool:
        """An overlay message from member ``name`` names ``addr`` as its sender: true unless we
        know that member at another address (a joiner is not known yet). Without it, anyone
        who reaches the port could have us link to, or send our cached broadcasts to, a
        third party's address."""
        known = self.core.membership.addr_of(name) if self.core is not None else None
        return known is None or known == addr

    def tick(self, now: float) -> None:
        assert self.core is not None
        self.apply(self.core.tick(now))
        if self.overlay:
            self._watch_legacy()
        news = self._join_watch.check(self.core.membership.pending_joins(), now)
        if news is not None:
            self._join_news(news)
        if self._snapshot_dirty and now - self._snapshot_at >= SNAPSHOT_PERIOD:
            self.save_snapshot(now)

    def note_stall(self, lag: float, now: float) -> None:
        if self.core is not None:
            self.core.note_stall(lag, now)

    def join(self, addrs: list[str], now: float) -> None:
        assert self.core is not None
        self._joined_at = time.time()
        self.apply(self.core.join(addrs, now))

    def leave(self, now: float) -> None:
        assert self.core is not None
        mark_left(self.data_dir)  # before the news goes out: a restart does not rejoin by itself
        self.apply(self.core.leave(now))

    def force_leave(self, name: str, now: float, *, prune: bool = False) -> None:
        """ValueError when the member is not dead (or, with ``prune``, not dead or left)."""
        assert self.core is not None
        self.apply(self.core.force_leave(name, now, prune=prune))

    def settle(self, settings: dict[str, str], now: float) -> dict[str, Any]:
        """``corec-node settings set``, on the leader: the entry that changes the cluster's
        settings (voters rule 9). ValueError names why not."""
        assert self.core is not None
        self.apply(self.core.settle(settings, now))
        return self.voters_json()

    def recover_voters(self, names: list[str], now: float) -> dict[str, Any]:
        """Rewrite the voter configuration on this survivor (ValueError: why not)."""
        assert self.core is not None
        before = self.core.config
        self.apply(self.core.recover(names, now))
        after = self.core.config
        log.event("voters_recovered", logging.WARNING, index=after.index, voters=",".join(sorted(after.names())),
                  previous=",".join(sorted(before.names())),
                  detail="voter configuration rewritten by an operator: the old voters not named are out")
        self.events.audit("voters_recovered", ",".join(sorted(after.names())),
                            "operator recovery after the loss of a majority of voters",
                            term=self.term, index=after.index, previous=sorted(before.names()))
        return self.voters_json()

    def peer_hint(self, addr: str, refused: bool) -> None:
        """The socket monitor: our connection to ``addr`` closed (core rule 13)."""
        if self.core is None:
            return
        member = next((m for m in self.core.membership.members() if m.addr == addr), None)
        if member is None or member.status not in _LIVE:
            return  # a member that left or is known dead: an announced close, not a hint
        log.event("peer_connection_lost", logging.DEBUG, name=member.name, addr=addr, refused=refused)
        self.hints += 1
        self.apply(self.core.hint(member.name, refused, self._clock()))

    def discovered(self, name: str, addr: str, now: float) -> None:
        """A LAN beacon from a node of our cluster: join it unless we know it alive already."""
        assert self.core is not None
        member = self.core.membership.member(name)
        if member is not None and member.addr == addr and member.status in _LIVE:
            return
        if now - self._discovered.get(addr, float("-inf")) < DISCOVERY_RETRY:
            return
        self._discovered[addr] = now
        log.event("peer_discovered", name=name, addr=addr)
        self.join([addr], now)

    def save_snapshot(self, now: float, *, force: bool = False) -> None:
        """The member snapshot to SQLite when it changed (``force``: at stop, whatever)."""
        if self.core is None or not (self._snapshot_dirty or force):
            return
        self._snapshot_dirty = False
        self._snapshot_at = now
        self.events.members(self.core.membership.snapshot())

    # -- effects ----------------------------------------------------------------------

    def apply(self, effects: list[Any]) -> None:
        """Carry out the core's effects in order (a vote is on disk before it is sent). A
        vote or configuration that cannot be written stops the batch there (core rule 11)."""
        changed = False
        for effect in effects:
            if type(effect) in (PersistVote, PersistConfig) and not self._persist(effect):
                assert self.core is not None
                vote, config = self._durable
                effects = self.core.write_failed(vote, config, self._clock())
                self.apply(effects)
                break
            match effect:
                case Send(to=to, msg=msg):
                    if to != self.addr:
                        self.outbox.send(to, msg)
                case Broadcast(msg=msg):
                    self.outbox.publish(msg)
                case ViewSend(to=to, msg=msg) | TreeSend(to=to, msg=msg):
                    if to != self.addr:
                        self.outbox.send(to, msg)
                case NeighborUp(peer=peer):
                    self.neighbors.add(peer)
                    log.event("overlay_neighbor_up", logging.DEBUG, peer=peer, neighbors=len(self.neighbors))
                case NeighborDown(peer=peer):
                    self.neighbors.discard(peer)
                    log.event("overlay_neighbor_down", logging.DEBUG, peer=peer, neighbors=len(self.neighbors))
                case MemberChanged():
                    self._member_changed(effect)
                    changed = True
                case MemberReaped(name=name):
                    self._member_reaped(name)
                    changed = True
                case NameConflict(name=name, addr=addr):
                    self._name_conflict(name, addr)
                case PersistVote(voted_for=voted_for):
                    if voted_for == self.name:  # only a candidate votes for itself
                        self.elections_started += 1
                case ConfigCommitted(index=index, term=term, voters=voters):
                    names = ",".join(n for n, _ in voters)
                    log.event("voters_committed", index=index, term=term, voters=names)
                    self.events.audit("voters", names, "voter configuration committed", term=term, index=index)
                case LeaderChanged(leader=leader, term=term):
                    self.leader_placement = None  # the new leader has confirmed nothing yet
                    changed = True
                    self._leader_changed(leader, term)
        if changed:
            self._send_view(self.view())

    def _send_view(self, view: ClusterView) -> None:
        self._last_view = view
        self.events.view_changed(view)

    def refresh_view(self) -> None:
        """Send the view again if it differs from the last one sent: what a member announces
        of itself (its data socket) can change with no change of status."""
        if self.core is None:
            return
        view = self.view()
        if view != self._last_view:
            self._send_view(view)

    def _persist(self, effect: PersistVote | PersistConfig) -> bool:
        """Write a vote or a configuration durably; False (logged, shown by ``status``) when
        the disk refuses it."""
        try:
            if type(effect) is PersistVote:
                save_vote(self.data_dir, effect.term, effect.voted_for)
                self._durable = ((effect.term, effect.voted_for), self._durable[1])
                self.events.vote(effect.term)
            else:
                save_voters(self.data_dir, effect.index, effect.term, effect.voters, effect.cluster, effect.settings)
                self._durable = (self._durable[0], Configuration(effect.index, effect.term, effect.voters,
                                                                 effect.cluster, effect.settings))
        except OSError as exc:
            what = "vote" if type(effect) is PersistVote else "voter configuration"
            error = f"cannot write the {what} in {self.data_dir}: {exc.strerror or exc}"
            if error != self.disk_error:
                log.event("disk_write_failed", logging.ERROR, error=error,
                          detail="not voting, standing or acknowledging until it can be written")
            self.disk_error = error
            return False
        if self.disk_error is not None:
            log.event("disk_write_recovered", previous=self.disk_error)
            self.disk_error = None
        return True

    def _member_changed(self, change: MemberChanged) -> None:
        assert self.core is not None
        self._snapshot_dirty = True
        self.member_changes += 1
        if change.name != self.name:
            member = self.core.membership.member(change.name)
            if member is not None:
                self._peers[change.name] = (member.addr, member.pub)
                if change.new == MemberStatus.DEAD:
                    self.transport.redial(member.addr, member.pub)  # keep listening: it may return
                elif change.new in (MemberStatus.ALIVE, MemberStatus.SUSPECT) and not self.tree_data:
                    self.transport.connect_sub(member.pub)
                elif change.new == MemberStatus.LEFT:
                    self.transport.disconnect_sub(member.pub)
        old = change.old.label if change.old is not None else None
        log.event("member_changed", name=change.name, addr=change.addr, old=old,
                  new=change.new.label, inc=change.inc, reason=change.reason)
        self.events.member_event({
            "name": change.name, "addr": change.addr, "old": old,
            "new": change.new.label, "incarnation": change.inc, "reason": change.reason})

    def _member_reaped(self, name: str) -> None:
        self._snapshot_dirty = True
        self.member_changes += 1
        addr, pub = self._peers.pop(name, ("", ""))
        if addr:
            self.transport.disconnect_sub(pub)
            self.transport.forget(addr)
        log.event("member_reaped", name=name)
        self.events.member_event({
            "name": name, "addr": addr, "old": None, "new": "reaped", "incarnation": None, "reason": "reaped"})

    def _join_news(self, news: JoinNews) -> None:
        peers, waited = ",".join(news.addrs), round(news.waited, 1)
        if news.event == "join_unanswered":
            log.event("join_unanswered", logging.WARNING, peers=peers, waited=waited,
                      detail="no peer answered yet: running alone, retrying with backoff")
        elif news.event == "join_answered":
            log.event("join_answered", peers=peers, waited=waited)
        else:
            log.event("join_failed", logging.ERROR, peers=peers, waited=waited,
                      detail=f"none of the peers answered within {waited:g} s (mesh.join_required): exiting")
            self.events.stop(1)

    def _name_conflict(self, name: str, addr: str) -> None:
        if self.conflicts.get(addr) == name:
            return
        self.conflicts[addr] = name
        newcomer = time.time() - self._joined_at < CONFLICT_GRACE
        log.event("name_conflict", logging.ERROR, name=name, other_addr=addr,
                  detail=f"another live node at {addr} uses the name {name!r}; give each node its own --name",
                  action="exiting: this node joined last" if newcomer else "keeping the name: the node that joined last exits")
        if newcomer:
            self.events.stop(1)

    def _leader_changed(self, leader: str | None, term: int) -> None:
        log.event("leader_changed", leader=leader, term=term)
        self.events.leader_changed(leader, term)
        self.events.audit("leader_change", leader or "-", "elected" if leader else "leader lost", term=term)
        if leader == self.name:
            self.events.nucleus(term, leader)

    def _placement_heartbeat(self, sender: str, msg: Heartbeat) -> None:
        """A heartbeat, after the election core saw it: from our leader, its digest."""
        if sender != self.leader or msg.term != self.term or sender == self.name:
            return
        if msg.placement != self.leader_placement:
            self.leader_placement = msg.placement
            self.events.leader_placement(msg.placement)
