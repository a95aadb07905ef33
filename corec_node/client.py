"""Producer client: send entity records to a cluster, each record straight to its owner.

    from corec_node.client import Client
    with Client("127.0.0.1:7400") as c:
        c.send(records)          # an ENTITY_DTYPE array (any channels), or columns
    print(c.accepted, c.rejected, c.unconfirmed)

Owner-routed (SPEC 9.5, protocol 1.5). At its first send the client asks the node it was
given for the placement map (PLACEMENT_REQUEST, answered within ``map_timeout``), splits
each batch by the owner of its records' blocks and sends every part straight to its
owner's data socket: one DEALER and one window per owner, so what a cluster ingests grows
with its members. With 2 or more copies (the map's ``replicas``) an owner's part is
grouped by the holders of its blocks before it is cut into batches (``by_holders``): the
owner forwards each batch to the other holders, one message each, so a batch then goes on
to one or two of them, not to most of the cluster. An answer that names a newer placement
epoch makes the client fetch the map again (from the node it was given; if that fails the
old map stays) and split later batches by the new one. A node that receives records it no
longer owns forwards them and answers for the whole batch, so a stale map costs a hop,
never a record.

The 1.4 path: when the node does not answer the map request (older than 1.5, or
unreachable), when its map has no owners (some member is older than 1.5), or with
``route=False``, everything goes to the given address, which republishes or forwards it.

Idempotent producers: the client has a random producer id and numbers its batches with
one rising ``pseq`` across all owners (a batch offered again keeps its number). An owner
applies a batch only in the blocks where it is newer than the last one it applied from
this producer: a retry is refused ``duplicate`` (counted here as accepted, in
``duplicates`` too: an earlier offer of the same batch stored it), an older batch that a
newer one overtook ``out_of_order`` (the newer values stand). Send big batches (thousands of records): one
record per message is tens of times slower.

Answers (SPEC 9.4). With ``acks=1`` (the default) every batch is answered: accepted
(queued for its owner's store) or refused with a reason. Per socket, the client keeps at
most ``window`` batches unanswered, so a busy node holds its producers without ever
holding its own socket; a batch refused as busy is sent again, with backoff, for
``retry_busy`` seconds. A socket whose node answers nothing within ``reply_timeout``
(down, of another cluster, or older than 1.4) leaves its batches *unconfirmed*: the client
stops waiting for answers there and counts everything it sends there as unconfirmed. An
answer that comes late still counts: the batch moves from unconfirmed to what the node
said. With ``acks=0`` nothing is answered nor awaited: those records are counted
``sent_unacknowledged``, never accepted. With ``acks="all"`` a batch is accepted once
every holder of its blocks (owner and replicas, SPEC 9.7) queued it; a cluster older than
1.6 (its map names no replicas) acknowledges by the owner alone. A batch refused
``no_leader`` (an election under way, or the minority side of a partition) is offered
again like a busy one. A batch refused as ``not_owner``, whole or in part (the maps of the
node and of the owner it forwarded to disagreed while a change spread), is split again by
a newer map under its own ``pseq`` (``rerouted``): the part already stored answers
``duplicate``, which is not counted twice, and a part that a newer batch overtook
meanwhile answers ``out_of_order`` (the newer values stand).
"""

from __future__ import annotations

import collections
import itertools
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from corec_node.engine.blocks import FusionTable, check_block_size
from corec_node.engine.placement import RENDEZVOUS, PlacementMap, by_holders, partition
from corec_node.shell.transport import tcp
from corec_node.wire import (
    ENTITY_DTYPE,
    BatchReply,
    EntityBatch,
    Placement,
    PlacementRequest,
    ReplyStage,
    WireError,
    as_entity_array,
    decode_batch,
    decode_message,
    encode_message,
    make_batch,
)
from corec_node.wire.limits import MAX_BATCH_RECORDS

LINGER_MS = 5_000  # what close() leaves queued batches to reach the node; past it they are dropped
LINGER_SLACK_MS = 250  # flush_all: a term() this close to the linger's end is the linger's end
_last_close: float | None = None  # when the last Client socket with a linger was closed
DEFAULT_BATCH = 10_000  # records per message: 100 KB frames, far past per-message overhead
DEFAULT_WINDOW = 32  # batches unanswered at most, per socket: 320 K records in flight keep a node's worker busy
REPLY_TIMEOUT = 30.0  # seconds a batch waits for its answer (a node refuses as busy after 5 of its own)
RETRY_BUSY = 30.0  # seconds a batch refused as busy is offered again
RETRIED = frozenset(("busy", "no_leader"))  # refusals that store nothing and pass: offered again
NOT_OWNER = "not_owner"  # refused by a node whose map differs: split anew by a newer map (_reroute)
DUPLICATE, OUT_OF_ORDER = "duplicate", "out_of_order"  # an earlier offer stored it; a newer batch overtook it
BACKOFF_MIN, BACKOFF_MAX = 0.01, 0.5  # seconds between two offers of a busy batch, doubling
LATE_KEPT = 1024  # unconfirmed batches per socket whose late answer still counts (older ones stay unconfirmed)
MAP_TIMEOUT = 1.0  # seconds the first send waits for the map; a node answers in milliseconds, a 1.4 node never
MAP_RETRY = 1.0  # seconds between two map fetches while answers say ours is old: the node we ask may lag a tick
OWNER_DOUBT = 1.0  # seconds an owner may leave its oldest batch unanswered before we ask whether it is gone
SLAB_BATCHES = 4  # batches per owner split at a time: the split's fixed cost spread, a new map used soon
WAIT_STEP = 0.2  # seconds a full window waits at a time before the owners are looked at again
ACKS = (0, 1, "all")

NOT_ASKED = "route=False: everything goes to the given address"
OLD_CLUSTER = "the cluster has nodes older than 1.5"


@dataclass(slots=True)
class _Batch:
    """One batch on its way: what to send again if the node is busy."""

    channel: int
    count: int
    payload: bytes
    pseq: int  # its producer sequence: kept when it is offered again
    epoch: int  # the map it was split by (0: not split)
    first_sent: float
    delete: bool = False  # the records name entities to remove
    sent: float = 0.0
    backoff: float = BACKOFF_MIN
    due: float | None = None  # when to offer it again, once refused as busy
    reroute: bool = False  # refused as not its owner's: split anew by a newer map, same pseq
    # records of this pseq counted accepted already, whose offers again answer ``duplicate``
    # (shared by the parts a batch refused in part is split into): not counted twice
    credit: list[int] | None = None


class _Link:
    """One DEALER to one node's socket (an owner's data socket, or the given address on the
    1.4 path) and the batches on their way there."""

    __slots__ = ("addr", "answered", "late", "name", "parked", "pending", "silent", "sock", "timeout")

    def __init__(self, ctx: zmq.Context, addr: str, name: str | None, timeout: float | None) -> None:
        self.addr = addr
        self.name = name  # the owner's name; None for the given address
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)  # on close, give queued batches 5 s to leave
        self.sock.setsockopt(zmq.SNDHWM, 1_000)
        self.timeout = timeout
        if timeout is not None:
            self.sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
        self.sock.connect(tcp(addr))
        self.pending: dict[int, _Batch] = {}  # sent, awaiting an answer, by the seq it was sent under
        self.parked: list[_Batch] = []  # refused as busy, to be offered again when due
        self.late: collections.OrderedDict[int, _Batch] = collections.OrderedDict()  # counted unconfirmed
        self.answered = False  # its node has answered: it speaks 1.4 or later
        self.silent = False  # it answered nothing within reply_timeout: answers are no longer awaited

    def waiting(self) -> int:
        return len(self.pending) + len(self.parked)


class Client:
    """Producer DEALERs: one to each owner's data socket (owner-routed), or one to the
    given node (the 1.4 path). Not thread-safe (ZeroMQ sockets are not)."""

    def __init__(self, addr: str, *, cluster: str = "corec", name: str | None = None,
                 batch: int = DEFAULT_BATCH, compress: bool = False, timeout: float | None = None,
                 window: int = DEFAULT_WINDOW, reply_timeout: float = REPLY_TIMEOUT,
                 retry_busy: float = RETRY_BUSY, acks: int | str = 1, route: bool = True,
                 map_timeout: float = MAP_TIMEOUT) -> None:
        """``timeout``: seconds ``send`` may wait for a node to take or answer a batch
        before it raises TimeoutError (None: wait; a busy node makes its producers wait on
        purpose, so set it only to notice a node that is gone). ``window``: batches sent
        and not yet answered, at most, per socket (per owner). ``reply_timeout``: seconds
        after which an unanswered batch counts as unconfirmed. ``retry_busy``: seconds a
        batch refused as busy is offered again (0: never). ``acks``: 1 (each owner answers
        once it queued the records for its store), 0 (no answers: fire and forget) or
        ``"all"`` (treated as 1 until blocks have replicas). ``route``: False sends
        everything to ``addr`` (the 1.4 path). ``map_timeout``: seconds the first send
        waits for the placement map before it takes the 1.4 path."""
        if not 0 < batch <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch must be 1..{MAX_BATCH_RECORDS}")
        if window < 1 or reply_timeout <= 0 or retry_busy < 0 or map_timeout <= 0:
            raise ValueError("window must be >= 1, reply_timeout and map_timeout > 0, retry_busy >= 0")
        if acks not in ACKS or isinstance(acks, bool):
            raise ValueError(f"acks must be 0, 1 or 'all', got {acks!r}")
        self.addr = addr
        self.cluster = cluster
        self.name = name or f"client-{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.compress = compress
        self.window = window
        self.reply_timeout = reply_timeout
        self.retry_busy = retry_busy
        self.acks = acks
        self.route = route
        self.map_timeout = map_timeout
        self.timeout = timeout
        self.producer = secrets.randbits(63) or 1  # nonzero: 0 is the anonymous producer nobody checks
        self._wire_acks = 0 if acks == 0 else 1  # "all": 2 once a map says blocks have replicas (1.6)
        self.acks_all_by_owner = acks == "all"  # until a 1.6 map says otherwise
        self._ctx = zmq.Context.instance()
        self._poller = zmq.Poller()
        self._links: dict[str, _Link] = {}  # by address
        self._map_sock: zmq.Socket | None = None
        self._closed = False
        self._seq = 0  # envelope seq: one counter for every message this producer sends
        self._pseq = 0  # producer sequence: one per batch, rising across all owners
        self._deleting = False  # batches made now name entities to remove (``delete``)
        self._map_asked = False
        self._placement: PlacementMap | None = None  # None: not routed
        self._owner_addr: dict[str, str] = {}
        self._fusions = FusionTable()
        self._block_size = 0
        self._copies = 1  # copies of each block, from the map (its replicas): batches cut by holders when > 1
        self._want_epoch = 0  # the highest placement epoch an answer named
        self._map_doubt = False  # an owner stopped answering: its blocks may have moved
        self._next_map_try = 0.0
        self.sent_records = 0  # records handed to send() and to a socket
        self.accepted = 0  # records the owners accepted (queued for storing)
        self.rejected: collections.Counter[str] = collections.Counter()  # records refused, by reason
        self.unconfirmed = 0  # records sent and never answered
        self.sent_unacknowledged = 0  # records sent with acks 0: handed to a socket, no answer asked
        self.retries = 0  # batches offered again after a busy answer
        self.duplicates = 0  # of the records accepted, those an earlier offer of the same batch had stored
        self.routed = False  # records go straight to their owners (set at the first send)
        self.why_unrouted = ""  # when not routed, why (after the first send)
        self.map_epoch = 0  # the placement epoch of the map batches are split by
        self.map_fetches = 0  # maps received (the first one included)
        self.rehomed = 0  # records resent to a new owner after theirs left the map
        self.rerouted = 0  # records of batches refused as sent to a node that does not own them, sent again
        self.owners_used: set[str] = set()  # owners sent to directly
        self.sent_by_owner: collections.Counter[str] = collections.Counter()  # records sent to each owner

    @property
    def answered(self) -> bool:
        """Some node has answered a batch: it speaks 1.4 or later."""
        return any(link.answered for link in self._links.values())

    @property
    def silent(self) -> bool:
        """Some socket's node answered nothing within reply_timeout: no answers awaited there."""
        return any(link.silent for link in self._links.values())

    # -- the map --------------------------------------------------------------------------

    def _first_map(self) -> None:
        self._map_asked = True
        if not self.route:
            self.why_unrouted = NOT_ASKED
            return
        placement = self._request_map()
        if placement is None:
            self.why_unrouted = (f"{self.addr} did not answer the map request within {self.map_timeout:g} s: "
                                 f"older than 1.5, or unreachable")
            return
        self._adopt(placement)

    def _request_map(self) -> Placement | None:
        """Ask the given node for its map; None when no usable answer came in time."""
        if self._map_sock is None:
            self._map_sock = self._ctx.socket(zmq.DEALER)
            self._map_sock.setsockopt(zmq.LINGER, 0)  # a request nobody took is worth nothing
            self._map_sock.setsockopt(zmq.SNDHWM, 4)
            self._map_sock.connect(tcp(self.addr))
        sock = self._map_sock
        while sock.poll(0):  # answers to requests that timed out: old news
            sock.recv_multipart()
        self._seq += 1
        try:
            sock.send_multipart(encode_message(PlacementRequest(epoch=self.map_epoch), sender=self.name,
                                               seq=self._seq, cluster=self.cluster), zmq.NOBLOCK)
        except zmq.Again:
            return None
        end = time.monotonic() + self.map_timeout
        while (left := end - time.monotonic()) > 0:
            if not sock.poll(max(1, int(left * 1000))):
                break
            try:
                _, env, _ = decode_message(sock.recv_multipart(zmq.NOBLOCK), cluster=self.cluster)
            except (WireError, zmq.Again):
                continue
            if isinstance(env.msg, Placement):
                return env.msg
        return None

    def _adopt(self, p: Placement) -> None:
        """Split later batches by ``p`` (no owners: some member is older than 1.5, the 1.4 path)."""
        self.map_fetches += 1
        self.map_epoch = max(self.map_epoch, p.epoch)
        if self.acks == "all":
            self._wire_acks = 2 if p.replicas else 1
            self.acks_all_by_owner = not p.replicas
        if not p.owners:
            self._placement, self.routed, self.why_unrouted = None, False, OLD_CLUSTER
            return
        try:
            placement = PlacementMap(p.epoch, [o.name for o in p.owners], rule=p.rule or RENDEZVOUS)
            block_size = check_block_size(p.block_size)
            fusions = FusionTable({int(r["block"]): int(r["root"]) for r in p.fusions})
            owner_addr = {o.name: o.data for o in p.owners}
            for data in owner_addr.values():
                tcp(data)
        except (ValueError, TypeError, KeyError) as exc:  # the node's bug: its own 1.4 path still works
            self._placement, self.routed = None, False
            self.why_unrouted = f"the map {self.addr} sent is not usable ({exc})"
            return
        self._placement, self._block_size, self._fusions, self._owner_addr = placement, block_size, fusions, owner_addr
        self._copies = max(1, p.replicas)
        self.routed, self.why_unrouted = True, ""

    def _refresh_map(self, *, newer: bool = True) -> None:
        """Between two slabs of a send: fetch the map again when an answer named a newer
        epoch (or an owner went silent), at most every MAP_RETRY seconds."""
        if not self.route or not ((newer and self._want_epoch > self.map_epoch) or self._map_doubt):
            return
        now = time.monotonic()
        if now < self._next_map_try:
            return
        self._next_map_try = now + MAP_RETRY
        placement = self._request_map()
        if placement is None:
            return  # the old map stays: a stale map costs a forward, not a record
        self._map_doubt = False
        if placement.epoch > self.map_epoch or (self._placement is None) != (not placement.owners):
            self._adopt(placement)

    def _check_owners(self, *, newer: bool = True) -> None:
        """An owner that leaves its oldest batch unanswered for OWNER_DOUBT may be gone (a
        dead owner answers nothing): ask for the map. Batches waiting at an owner the new map
        no longer has go to their new owners, with their own pseq (SPEC 9.6). ``newer``:
        also fetch it when an answer named a newer epoch (between slabs; not while flushing,
        where nothing is left to split)."""
        if self._placement is not None and not self._map_doubt:
            now = time.monotonic()
            for link in self._links.values():
                if link.name is not None and link.pending and \
                        now - min(b.sent for b in link.pending.values()) > OWNER_DOUBT:
                    self._map_doubt = True
                    break
        before = self._placement
        self._refresh_map(newer=newer)
        if self._placement is not None and self._placement is not before:
            self._rehome()

    def _rehome(self) -> None:
        members = set(self._placement.members) if self._placement is not None else set()
        for addr, link in list(self._links.items()):
            if link.name is None or link.name in members:
                continue
            items = [*link.pending.values(), *link.parked]
            link.pending.clear()
            link.parked.clear()
            self._poller.unregister(link.sock)
            link.sock.close(0)  # what it still queued for a gone owner is resent below
            del self._links[addr]
            for item in items:
                if item.reroute:  # refused there: split by whatever map we have now
                    self._reroute_now(item)
                    continue
                self.rehomed += item.count
                self._resend(item)

    def _reroute(self, link: _Link, item: _Batch) -> None:
        """A batch refused (whole or in part) as ``not_owner``, split by a map newer than the
        one it was split by; parked again until we have one (counted refused once
        ``retry_busy`` has passed)."""
        self._check_owners()
        if self.map_epoch <= item.epoch:
            if time.monotonic() - item.first_sent >= self.retry_busy:
                self.rejected[NOT_OWNER] += item.count
                return
            item.due = time.monotonic() + item.backoff
            item.backoff = min(item.backoff * 2, BACKOFF_MAX)
            if self._links.get(link.addr) is link:
                link.parked.append(item)
            else:  # its owner left the map meanwhile
                self._reroute_now(item)
            return
        self._reroute_now(item)

    def _reroute_now(self, item: _Batch) -> None:
        self.rerouted += item.count
        self._resend(item)

    def _resend(self, item: _Batch) -> None:
        """A batch split anew by the current map, each part with the batch's pseq (a newer
        batch's values in a block stand: SPEC 9.6) and its credit."""
        records = decode_batch(EntityBatch(channel=item.channel, count=item.count, compressed=self.compress),
                               item.payload)
        for link, part in self._split(records):
            payload = make_batch(part, item.channel, compress=True)[1] if self.compress else part.tobytes()
            self._put(link, _Batch(item.channel, len(part), payload, item.pseq, self.map_epoch if self._placement
                                   is not None else 0, item.first_sent, item.delete, credit=item.credit))

    # -- sending --------------------------------------------------------------------------

    def send(self, records: Any) -> int:
        """Send records (any channels); returns how many were handed over. Waits while
        ``window`` batches to the owner of the next one are unanswered."""
        arr = as_entity_array(records)  # validated once here, not again per frame
        if arr.size == 0:
            return 0
        if not self._map_asked:
            self._first_map()
        channels = np.ascontiguousarray(arr["channel"])
        cuts = np.flatnonzero(channels[1:] != channels[:-1]) + 1
        if len(cuts) and not (channels[cuts] > channels[cuts - 1]).all():  # not grouped by channel yet
            arr = arr[np.argsort(channels, kind="stable")]
            channels = np.ascontiguousarray(arr["channel"])
            cuts = np.flatnonzero(channels[1:] != channels[:-1]) + 1
        for part in np.split(arr, cuts) if len(cuts) else (arr,):
            channel = int(part["channel"][0])
            pos = 0
            while pos < len(part):
                self._pump(time.monotonic())  # answers already here: a newer epoch, busy batches due
                self._check_owners()
                owners = len(self._placement.members) if self._placement is not None else 1
                slab = part[pos:pos + self.batch * owners * SLAB_BATCHES]  # a few full batches per owner
                pos += len(slab)
                queues = []
                for link, piece in self._split(slab):
                    pieces = -(-len(piece) // self.batch)
                    queues.append([(link, chunk) for chunk in (np.array_split(piece, pieces) if pieces > 1 else (piece,))])
                for round_ in itertools.zip_longest(*queues):  # owners in turn: every window fills, none waits alone
                    for link, chunk in filter(None, round_):
                        self._send_chunk(link, channel, chunk)
                        self.sent_records += len(chunk)
                        if link.name is not None:
                            self.sent_by_owner[link.name] += len(chunk)
        return len(arr)

    def delete(self, channel: int, ids: Any) -> int:
        """Remove entities ``ids`` of ``channel`` from the cluster: sent like records (to
        each block's owner, in order with what this producer sent before, answered and
        counted the same way), and removed by every holder of their blocks (SPEC 9.7)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() > 0xFFFFFFFF):
            raise ValueError("entity ids are uint32")
        records = np.zeros(len(ids), ENTITY_DTYPE)
        records["id"], records["channel"] = ids, channel
        self._deleting = True
        try:
            return self.send(records)
        finally:
            self._deleting = False

    def _split(self, slab: np.ndarray) -> list[tuple[_Link, np.ndarray]]:
        """Each owner's part of ``slab`` with its socket (all of it to ``addr`` when not routed)."""
        if self._placement is None:
            return [(self._link(self.addr, None), slab)]
        resolve = self._fusions.resolve if self._fusions else None
        parts = partition(slab, self._placement, self._block_size, resolve)
        return [(self._link(self._owner_addr[owner], owner),
                 by_holders(records, self._placement, self._block_size, self._copies, resolve))  # one replica message a batch
                for owner, records in parts.items()]

    def _link(self, addr: str, name: str | None) -> _Link:
        link = self._links.get(addr)
        if link is None:
            link = self._links[addr] = _Link(self._ctx, addr, name, self.timeout)
            self._poller.register(link.sock, zmq.POLLIN)
        elif name is not None:
            link.name = name
        if name is not None:
            self.owners_used.add(name)
        return link

    def _send_chunk(self, link: _Link, channel: int, chunk: np.ndarray) -> None:
        """One ENTITY_BATCH of valid records of one channel, kept (as bytes: the caller may
        reuse its array at once) until the node answers it."""
        if self.compress:
            _, payload = make_batch(chunk, channel, compress=True)
        else:
            payload = chunk.tobytes()
        if self._wire_acks:
            while self._links.get(link.addr) is link and link.waiting() >= self.window:
                self._pump(min(self._next_deadline(), time.monotonic() + WAIT_STEP), in_send=True)
                self._check_owners()
        self._pseq += 1
        if self._links.get(link.addr) is not link:  # its owner left the map meanwhile: split this chunk anew
            self._resend(_Batch(channel, len(chunk), payload, self._pseq, 0, time.monotonic(), self._deleting))
            return
        epoch = self.map_epoch if self._placement is not None else 0  # 0: not split by a map
        self._put(link, _Batch(channel, len(chunk), payload, self._pseq, epoch, time.monotonic(), self._deleting))

    def _put(self, link: _Link, item: _Batch) -> None:
        header = EntityBatch(channel=item.channel, count=item.count, compressed=self.compress,
                             producer=self.producer, pseq=item.pseq, acks=self._wire_acks, epoch=item.epoch,
                             delete=item.delete)
        self._seq += 1
        try:
            link.sock.send_multipart(encode_message(header, sender=self.name, seq=self._seq, cluster=self.cluster,
                                                    payload=item.payload))
        except zmq.Again:
            raise TimeoutError(f"{link.addr} did not take a batch within {link.timeout:g} s") from None
        if not self._wire_acks:  # nothing will answer: handed over is all that is known
            self.sent_unacknowledged += item.count
            return
        if link.silent:  # no answer is awaited: counted now, a late one still welcome
            self._unconfirmed(link, self._seq, item)
            return
        item.sent = time.monotonic()
        link.pending[self._seq] = item

    # -- answers ------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every batch sent is answered (or counted unconfirmed, or ``timeout``
        seconds pass); True when none is left unanswered."""
        end = None if timeout is None else time.monotonic() + timeout
        while any(link.waiting() for link in self._links.values()):
            deadline = min(self._next_deadline(), time.monotonic() + WAIT_STEP)
            if end is not None:
                if time.monotonic() >= end:
                    return False
                deadline = min(deadline, end)
            self._pump(deadline)
            self._check_owners(newer=False)
        if self._links:
            self._pump(time.monotonic())  # late answers that came meanwhile
        return True

    def _next_deadline(self) -> float:
        """When something must happen without an answer: a busy batch's next offer, the
        oldest batch's reply timeout, or ``timeout``."""
        times = []
        for link in self._links.values():
            limit = self.reply_timeout if link.timeout is None else min(link.timeout, self.reply_timeout)
            times += [b.sent + limit for b in link.pending.values()]
            times += [b.due for b in link.parked if b.due is not None]
        return min(times, default=time.monotonic())

    def _pump(self, deadline: float, *, in_send: bool = False) -> None:
        """Read answers on every socket until ``deadline``, then offer due batches again and
        expire old ones (``in_send``: a node that never answered within ``timeout`` raises
        TimeoutError)."""
        if not self._links:
            return
        wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
        ready = dict(self._poller.poll(wait_ms))
        if ready:
            for link in list(self._links.values()):
                if link.sock not in ready:
                    continue
                while True:
                    try:
                        frames = link.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_answer(link, frames)
        self._due(in_send)

    def _on_answer(self, link: _Link, frames: list[bytes]) -> None:
        try:
            _, env, _ = decode_message(frames, cluster=self.cluster)
        except WireError:
            return  # not ours to understand: the batch it may answer expires unconfirmed
        reply = env.msg
        if not isinstance(reply, BatchReply) or reply.stage != ReplyStage.QUEUED:
            return  # a later stage or another message: nothing 1.4 acts on
        self._want_epoch = max(self._want_epoch, reply.epoch)  # newer than our map: fetched before the next slab
        item = link.pending.pop(reply.seq, None)
        if item is None:
            item = link.late.pop(reply.seq, None)
            if item is None:
                return  # answered already (or acks 0 to a node older than 1.5: not counted)
            self.unconfirmed -= item.count  # a late answer: the batch is accounted for after all
            link.silent = False
        link.answered = True
        accepted = min(reply.accepted, item.count)
        rejected = dict(reply.rejected)
        # a duplicate is this batch stored already, by an earlier offer of the same pseq (one
        # that went unanswered, or a part sent again to a new owner that held it as a replica)
        duplicates = min(int(rejected.pop(DUPLICATE, 0)), item.count - accepted)
        overtaken = min(int(rejected.pop(OUT_OF_ORDER, 0)), item.count - accepted - duplicates)
        # of those, the ones an earlier offer of a batch refused in part was answered for
        # (stored then, or overtaken then or since) are counted already: the credit
        known = min(duplicates + overtaken, item.credit[0]) if item.credit else 0
        if known:
            item.credit[0] -= known
        known_stored = min(known, duplicates)
        self.duplicates += duplicates - known_stored
        self.accepted += accepted + duplicates - known_stored
        if overtaken > known - known_stored:
            self.rejected[OUT_OF_ORDER] += overtaken - (known - known_stored)
        answered = accepted + duplicates + overtaken  # records whose fate this answer settles
        left = item.count - answered
        if not left:
            return
        refused = rejected or {"unknown": left}
        reroute = NOT_OWNER in refused  # the node's map differs: split anew once ours is newer
        if set(refused) <= RETRIED | {NOT_OWNER} and not (reroute and self._placement is None) \
                and time.monotonic() - item.first_sent < self.retry_busy:
            if answered:  # offered again whole, same pseq: these answer duplicate or out_of_order then
                item.credit = item.credit or [0]
                item.credit[0] += answered
            item.reroute = reroute
            wait = max(item.backoff, MAP_RETRY / 4) if reroute else item.backoff  # the node's epoch reaches us
            item.due = time.monotonic() + wait
            item.backoff = min(item.backoff * 2, BACKOFF_MAX)
            link.parked.append(item)
            return
        first = next(iter(refused))
        for reason, n in refused.items():  # the node's counts, and what it did not count under the first
            take = min(n, left)
            self.rejected[reason] += take
            left -= take
        if left:
            self.rejected[first] += left

    def _due(self, in_send: bool) -> None:
        now = time.monotonic()
        for link in list(self._links.values()):
            due = [b for b in link.parked if b.due is not None and b.due <= now]
            if due:
                link.parked = [b for b in link.parked if b not in due]
                for item in due:
                    self.retries += 1
                    item.due = None
                    if item.reroute:
                        self._reroute(link, item)
                        continue
                    self._put(link, item)  # same pseq: a retry must never apply twice
            for key, item in list(link.pending.items()):
                if in_send and link.timeout is not None and now - item.sent >= link.timeout and not link.answered:
                    self._give_up_answers(link)  # nothing more to wait for: close() returns at once
                    raise TimeoutError(f"{link.addr} did not take a batch within {link.timeout:g} s")
                if now - item.sent >= self.reply_timeout:
                    del link.pending[key]
                    self._unconfirmed(link, key, item)
                    if not link.answered:
                        self._give_up_answers(link)
                        break

    def _unconfirmed(self, link: _Link, seq: int, item: _Batch) -> None:
        """No answer in time: counted unconfirmed until (if ever) its answer comes."""
        self.unconfirmed += item.count
        link.late[seq] = item
        while len(link.late) > LATE_KEPT:
            link.late.popitem(last=False)

    def _give_up_answers(self, link: _Link) -> None:
        """Nothing answered within reply_timeout: an older node, or none. Count what is in
        flight there as unconfirmed and stop waiting for its answers (ZeroMQ's queue holds
        the rest); an owner gone silent may have left the cluster: fetch the map again."""
        link.silent = True
        for seq, item in link.pending.items():
            self._unconfirmed(link, seq, item)
        for item in link.parked:
            self.unconfirmed += item.count
        link.pending.clear()
        link.parked.clear()
        if link.name is not None:
            self._map_doubt = True
        if link.timeout is None:  # the legacy node's queue blocks the send: bound it anyway
            link.sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.reply_timeout * 1000)))
            link.timeout = self.reply_timeout

    # -- the end ------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Records sent and not answered yet (busy ones waiting to be offered again included)."""
        return sum(b.count for link in self._links.values() for b in [*link.pending.values(), *link.parked])

    def _close_sockets(self) -> None:
        global _last_close
        self._closed = True
        for link in self._links.values():
            link.sock.close()
            _last_close = time.perf_counter()  # its LINGER_MS run from here (flush_all)
        if self._map_sock is not None:
            self._map_sock.close(0)

    def close(self) -> None:
        """Wait for the answers still due (``flush``), then close the sockets."""
        if not self._closed:
            try:
                self.flush()
            finally:
                self._close_sockets()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # an error on the way: do not wait for answers
            if not self._closed:
                self._close_sockets()
            return
        self.close()


def flush_all() -> bool:
    """Wait until ZeroMQ has written out what every closed ``Client`` left queued: True, or
    False when LINGER_MS passed first (what was still queued is dropped). It ends this
    process's ZeroMQ context: call it once, after the last Client is closed."""
    started = time.perf_counter()
    zmq.Context.instance().term()
    # the linger of the last socket closed runs from its close, not from here: term() returning
    # at the end of it (a refused connection took nothing) must not read as all written
    since = time.perf_counter() - (_last_close if _last_close is not None else started)
    return since * 1000 < LINGER_MS - LINGER_SLACK_MS
