"""The committed voter configuration: who may elect the nucleus, changed only by the leader,
one member at a time. Pure: no I/O, no clock; every input carries ``now``.

Raft's single-server membership change, with the configuration entries as the only log.

Rules (``mesh/core.py`` drives this object beside the election):

Rule 1. A configuration is ``(index, term, voters)``: ``index`` counts changes, ``term`` is
    the term of the leader that made it. Configurations are ordered by ``(term, index)``,
    as Raft orders logs by their last entry. Every node uses the latest configuration it
    has stored, committed or not, to vote and to count votes.

Rule 2. Durable before acted on. A node adopts a configuration by emitting
    ``PersistConfig`` first; only then does it acknowledge it (``HeartbeatAck``) or count
    itself for it. The shell writes it fsynced, like the vote.

Rule 3. Only the leader changes the configuration, one voter added or removed at a time,
    and only when the previous change is committed: stored by a majority of the
    configuration it created (any majority of the old set and of the new one intersect,
    so two leaders can never be elected by disjoint majorities; a dead voter can be
    removed without its own acknowledgement).

Rule 4. A new leader first commits its configuration again under its own term (index + 1,
    same voters) and changes nothing before that commits (Ongaro 2015: without it, a
    change made by a deposed leader and one made by its successor can both commit).

Rule 5. Followers take the configuration in their leader's heartbeat whenever it differs
    from theirs (the leader's is at least as new as any committed one: a candidate wins
    only with votes of nodes whose configuration is not newer than its own).

Rule 6. Bootstrap is explicit. A node with no stored configuration and no join address
    founds a cluster of one (index 1). A node started with join addresses starts with no
    configuration (index 0) and no vote: it is a member, not a voter, until a leader adds
    it. So a minority side of a partition, which has no leader, can never add voters.

Rule 7. Promotion and removal (what the leader changes, in this order): a voter that has
    left, or is no longer a member, is removed; then a member alive for ``promote_after``
    seconds is added while there are fewer than ``max_voters`` voters (the rest stay
    members with every feature but a vote, as Consul and etcd keep 3, 5 or 7 servers).

Rule 8. One cluster, one history. Bootstrap draws a cluster id, carried by every
    configuration, heartbeat and vote request. A node takes configurations and heartbeats
    only of its own cluster (a node with none yet takes the first leader's), and refuses
    votes to another's: two clusters bootstrapped apart never merge their elections. A node
    that founded a cluster of one and is told to join another gives its one-node
    configuration up (it asked to be a member elsewhere).

Rule 9. The cluster's settings ride the configuration (protocol 1.11): the keys every node
    must run with alike (``shell/cluster_settings.py``), as ``key=value`` pairs. The founder
    writes its own; a leader that finds none (a configuration made by an older release)
    writes its own with rule 4's entry. Every change keeps them; only the leader changes
    them (``settle``), as one more entry, once the previous one committed, so every node
    that stores the configuration stores them, and a minority side can never change them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from corec_node.mesh.effects import ConfigCommitted, Effect, PersistConfig

__all__ = ["Configuration", "VoterConfig", "Voters"]


@dataclass(frozen=True, slots=True)
class Configuration:
    """One configuration entry (rule 1). ``voters`` is sorted by name."""

    index: int = 0
    term: int = 0
    voters: tuple[tuple[str, str], ...] = ()
    cluster: str = ""  # the id drawn when the cluster was bootstrapped (rule 8); "" none yet
    settings: tuple[tuple[str, str], ...] = ()  # rule 9: sorted (key, value); () none yet

    @property
    def id(self) -> tuple[int, int]:
        return (self.term, self.index)

    def names(self) -> frozenset[str]:
        return frozenset(n for n, _ in self.voters)

    def as_dict(self) -> dict[str, str]:
        return dict(self.voters)

    def majority(self) -> int:
        return len(self.voters) // 2 + 1

    def changed(self, term: int, voters: Mapping[str, str],
                settings: tuple[tuple[str, str], ...] | None = None) -> Configuration:
        return Configuration(self.index + 1, term, tuple(sorted(voters.items())), self.cluster,
                             self.settings if settings is None else settings)


@dataclass(frozen=True, slots=True)
class VoterConfig:
    """Rule 7's settings. The defaults keep five voters, as Consul and etcd advise: two
    may fail; more voters make every commit and election wait for more acknowledgements."""

    max_voters: int = 5
    promote_after: float = 2.0  # seconds alive before a member is made a voter: not a flapper

    def __post_init__(self) -> None:
        if self.max_voters < 1 or self.promote_after < 0:
            raise ValueError(f"VoterConfig needs max_voters >= 1 and promote_after >= 0, got {self}")


class Voters:
    """This node's configuration, and as leader, the change in flight and its acks."""

    __slots__ = ("_acks", "_pending", "commit_index", "config", "current", "name", "own_settings")

    def __init__(self, name: str, config: VoterConfig, stored: Configuration,
                 own_settings: tuple[tuple[str, str], ...] = ()) -> None:
        self.name = name
        self.config = config
        self.own_settings = own_settings  # this node's file's values of rule 9's keys
        self.current = stored  # the latest stored (rule 1)
        self.commit_index = 0  # the highest index this node knows committed
        self._pending: Configuration | None = None  # as leader: the entry awaiting its majority
        self._acks: dict[str, int] = {}  # as leader: voter -> highest index it stored

    @property
    def voter(self) -> bool:
        return self.name in self.current.names()

    @property
    def committed(self) -> bool:
        return self.commit_index >= self.current.index > 0

    def bootstrap(self, voters: Mapping[str, str], cluster: str) -> list[Effect]:
        """Rule 6: found a cluster, with its id: of one (``{name: addr}``), or, for a node
        upgraded from a protocol without configurations, of the members its snapshot
        remembers."""
        entry = Configuration(1, 0, tuple(sorted(voters.items())), cluster, self.own_settings)
        out = self._store(entry)
        if len(entry.voters) == 1:
            self.commit_index = 1
            out.append(ConfigCommitted(entry.index, entry.term, entry.voters, entry.settings))
        return out

    def abandon(self) -> list[Effect]:
        """Rule 8: forget a one-node configuration of our own, to join another cluster."""
        self.stop_leading()
        self.commit_index = 0
        return self._store(Configuration())

    def recover(self, entry: Configuration) -> list[Effect]:
        """An operator's configuration (core rule 10): stored as ours; nothing is pending."""
        self._pending = None
        self._acks = {}
        return self._store(entry)

    # -- follower -----------------------------------------------------------------------

    def follow(self, leader_config: Configuration, commit: int) -> list[Effect]:
        """Rule 5: the configuration in our leader's heartbeat (already checked to come from
        the leader of a term not older than ours)."""
        out = self._store(leader_config) if leader_config != self.current else []
        if commit > self.commit_index and commit <= self.current.index:
            self.commit_index = commit
        return out

    # -- leader -------------------------------------------------------------------------

    def lead(self, term: int) -> list[Effect]:
        """Rule 4: elected in ``term``: commit the configuration again under this term
        (with this node's settings if it holds none: rule 9)."""
        self._acks = {}
        entry = self.current.changed(term, self.current.as_dict(), self.current.settings or self.own_settings)
        self._pending = entry
        return self._store(entry)

    def stop_leading(self) -> None:
        self._pending = None
        self._acks = {}

    def acked(self, voter: str, cfg_term: int, cfg_index: int, our_term: int) -> list[Effect]:
        """A follower has stored the configuration ``(cfg_term, cfg_index)`` (a HeartbeatAck);
        only entries made in our term count towards our pending entry."""
        if cfg_term != our_term or cfg_index <= self._acks.get(voter, 0):
            return []
        self._acks[voter] = cfg_index
        return self._try_commit()

    def plan(self, term: int, alive_since: Mapping[str, tuple[str, float]], members: Iterable[str],
             now: float) -> list[Effect]:
        """Rule 7, once the previous change committed: ``alive_since`` maps each alive member
        to (its address, the ``now`` it became alive); ``members`` are the names membership
        still holds and that have not left."""
        if self._pending is not None or self.current.term != term or not self.committed:
            return []
        voters = self.current.as_dict()
        keep = set(members)
        gone = sorted(n for n in voters if n not in keep and n != self.name)
        if gone:
            del voters[gone[0]]
        elif len(voters) < self.config.max_voters:
            ready = sorted(n for n, (_, since) in alive_since.items()
                           if n not in voters and now - since >= self.config.promote_after)
            if not ready:
                return []
            voters[ready[0]] = alive_since[ready[0]][0]
        else:
            return []
        entry = self.current.changed(term, voters)
        self._pending = entry
        return self._store(entry)

    def remove(self, name: str, term: int) -> list[Effect]:
        """As leader: the change that takes ``name`` out (a leaving leader takes itself out
        before it goes: voters rule 7)."""
        voters = self.current.as_dict()
        if (self._pending is not None or self.current.term != term or not self.committed
                or name not in voters or len(voters) == 1):
            return []
        del voters[name]
        entry = self.current.changed(term, voters)
        self._pending = entry
        return self._store(entry)

    def settle(self, term: int, settings: Mapping[str, str]) -> tuple[list[Effect], str]:
        """Rule 9, as leader: the entry that changes the cluster's settings to include
        ``settings``; its effects, or none and the reason it cannot be made now."""
        if self.current.term != term:
            return [], "this node is not the leader"
        if self._pending is not None or not self.committed:
            return [], "the previous configuration change has not committed yet: try again in a moment"
        merged = dict(self.current.settings) | dict(settings)
        entry = self.current.changed(term, self.current.as_dict(), tuple(sorted(merged.items())))
        if entry.settings == self.current.settings:
            return [], ""
        self._pending = entry
        return self._store(entry), ""

    def heartbeat(self) -> tuple[Configuration, int]:
        """What the leader's heartbeats carry: its latest configuration and commit index."""
        return self.current, self.commit_index

    # -- helpers ------------------------------------------------------------------------

    def _store(self, entry: Configuration) -> list[Effect]:
        self.current = entry
        self.commit_index = min(self.commit_index, entry.index)
        out: list[Effect] = [PersistConfig(entry.index, entry.term, entry.voters, entry.cluster, entry.settings)]
        if self._pending is not None and self._pending is entry:
            self._acks[self.name] = entry.index
            out += self._try_commit()
        return out

    def _try_commit(self) -> list[Effect]:
        entry = self._pending
        if entry is None:
            return []
        names = entry.names()
        stored = sum(1 for v, i in self._acks.items() if v in names and i >= entry.index)
        if stored < entry.majority():
            return []
        self.commit_index = entry.index
        self._pending = None
        return [ConfigCommitted(entry.index, entry.term, entry.voters, entry.settings)]
