"""What a sans-I/O core asks its shell to do.

Every core method returns a list of these, in the order the shell must carry them out
(a ``PersistVote`` comes before the ``Send`` of that vote, so a restart cannot vote twice).
The cores never touch a socket, a file or a clock; the shell (``corec_node/shell/``) does.
"""

from __future__ import annotations

from dataclasses import dataclass

from corec_node.wire.messages import MemberStatus, Message


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` directly (ROUTER/DEALER) to the member whose direct socket is ``to``."""

    to: str
    msg: Message


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Publish ``msg`` on this node's PUB stream (every subscriber gets it)."""

    msg: Message


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """A member's status changed as this node sees it (``old`` is None for a new one)."""

    name: str
    addr: str
    old: MemberStatus | None
    new: MemberStatus
    inc: int
    reason: str


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """A dead or left member was forgotten after the reap time."""

    name: str


@dataclass(frozen=True, slots=True)
class NameConflict:
    """Another live node claims this node's name (from ``addr``): both must say so."""

    name: str
    addr: str


@dataclass(frozen=True, slots=True)
class PersistVote:
    """Durably store (term, voted_for) before any later effect is carried out."""

    term: int
    voted_for: str | None


@dataclass(frozen=True, slots=True)
class PersistConfig:
    """Durably store this voter configuration (``mesh/voters.py``) before any later effect:
    it is acknowledged, and counted, only once it is on disk."""

    index: int
    term: int
    voters: tuple[tuple[str, str], ...]
    cluster: str
    settings: tuple[tuple[str, str], ...] = ()  # voters rule 9


@dataclass(frozen=True, slots=True)
class ConfigCommitted:
    """As leader: this voter configuration is stored by a majority of its voters (log it,
    audit it; the simulator checks that committed configurations form one history)."""

    index: int
    term: int
    voters: tuple[tuple[str, str], ...]
    settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    leader: str | None
    term: int


Effect = (
    Send | Broadcast | MemberChanged | MemberReaped | NameConflict | PersistVote | PersistConfig
    | ConfigCommitted | LeaderChanged
)
