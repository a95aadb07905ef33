"""The overlay's messages (protocol 1.15): HyParView's partial views and Plumtree's tree.

The overlay cores (``mesh/hyparview.py``, ``mesh/plumtree.py``) speak these, and name
peers by their direct address (``host:port``), as a join does before any member is known:
so each body's ``sender`` is the sending node's address, not its member name (that is the
envelope's ``s``). All travel on topic ``dir`` to the peer's direct socket (SPEC 7.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MessageId = tuple[str, int]
"""A broadcast's id: (its origin's address, the origin's sequence number)."""

# -- views (HyParView) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    """Take me into your active view, and walk my join through the overlay."""

    sender: str


@dataclass(frozen=True, slots=True)
class JoinReply:
    """The contact took the joiner into its active view; ``peers`` seed the passive view."""

    sender: str
    peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ForwardJoin:
    """A join's random walk: ``joiner`` wants in, ``ttl`` more hops to go."""

    sender: str
    joiner: str
    ttl: int


@dataclass(frozen=True, slots=True)
class Neighbor:
    """Ask to become active peers; ``high`` must be accepted (the asker has no peer left,
    or ends a join walk)."""

    sender: str
    high: bool


@dataclass(frozen=True, slots=True)
class NeighborReply:
    sender: str
    accepted: bool


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The sender dropped us from its active view; ``leaving``: it is gone for good."""

    sender: str
    leaving: bool = False


@dataclass(frozen=True, slots=True)
class Shuffle:
    """A sample of ``origin``'s views on a random walk (``ttl`` hops left), to refresh passive views."""

    sender: str
    origin: str
    peers: tuple[str, ...]
    ttl: int


@dataclass(frozen=True, slots=True)
class ShuffleReply:
    sender: str
    peers: tuple[str, ...]


# -- the tree (Plumtree) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeGossip:
    """A broadcast in full; ``hops`` counts the links it has crossed, this one included.
    ``payload``: what is broadcast; on the wire, the originating member's name and one
    carried message (a membership GOSSIP or a HEARTBEAT, SPEC 7.1)."""

    sender: str
    msg_id: MessageId
    payload: Any
    hops: int


@dataclass(frozen=True, slots=True)
class IHave:
    """Lazy announcements: (id, hops at the sender) pairs."""

    sender: str
    ids: tuple[tuple[MessageId, int], ...]


@dataclass(frozen=True, slots=True)
class Graft:
    """Send me these messages, and push to me eagerly from now on."""

    sender: str
    ids: tuple[MessageId, ...]


@dataclass(frozen=True, slots=True)
class Prune:
    """Stop pushing to me in full: announce instead."""

    sender: str


ViewMessage = Join | JoinReply | ForwardJoin | Neighbor | NeighborReply | Disconnect | Shuffle | ShuffleReply
TreeMessage = TreeGossip | IHave | Graft | Prune
OverlayMessage = ViewMessage | TreeMessage
OVERLAY_CLASSES = (Join, JoinReply, ForwardJoin, Neighbor, NeighborReply, Disconnect, Shuffle, ShuffleReply,
                   TreeGossip, IHave, Graft, Prune)
