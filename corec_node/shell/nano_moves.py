"""Intelligent blocks' models moved with their blocks (``intelligence.py`` rule 6; SPEC 9.8,
NANO_WEIGHTS, since 1.12). A mixin of ``Intelligence``: the blocks, stored bytes and
trainer it reads are the layer's, set up in its ``__init__``.

When a map change makes this node copy a block to a new holder (``learning.py``: the block's
one sender of engine rule 3, its owner or a holder that stays), the block's model goes too.
``moved`` asks the child for fresh weights (``snapshot``); a tick that finds them, or
``SEND_WAIT`` seconds later what there is, sends them in chunks (``nano_handoff.py``)
through the holder's lane, after the block's copy, once the holder announced protocol 1.12
or later (an older one is never sent the message; one whose protocol is not known in
``PEER_WAIT`` s is given up). Each block's bytes carry ``ticks``, the ticks of means its
model was handed (counted here: those this node submitted, plus those a received model
carried; a model restored from the local store counts from 0 again). The receiver checks the
message whole (``nano_handoff.unpack``), then each block: its channel intelligent here, the
block held here (by the adopted map or the view about to be) and in the store (its copy
applied: a peer's bytes never make a model of a block this node does not have); one that is
not yet waits ``PARK_SECONDS`` at most, in ``PARK_BYTES`` at most. It loads the bytes when
its own model of the block was handed fewer ticks, or there is none (then they are loaded
with the block's first row here); else it keeps its own. What it drops is counted by reason;
nothing a peer sends raises.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from corec_node import log
from corec_node.shell import nano_handoff

SEND_WAIT = 3.0  # seconds a moved block's weights wait for the child's fresh snapshot (rule 6)
PEER_WAIT = 30.0  # seconds they wait for the new holder's protocol to be known (rule 6)
PARK_SECONDS = 30.0  # received weights of a block not held here yet wait this long for the map (rule 6)
PARK_BYTES = 16 << 20  # and take this much memory at most


@dataclass(slots=True)
class _Outgoing:
    """A moved block's weights, waiting for a fresh snapshot and its holder's protocol."""

    holder: str
    block: int
    ticks: int  # the model's ticks when the snapshot was asked for
    before: bytes | None  # the weights then: others are the fresh snapshot
    since: float


class WeightMoves:
    """Sending a moved block's model, and taking a peer's (see the module)."""

    def _init_moves(self) -> None:
        # ``send(holder, msg, payload, sent)``: the data plane's lane to a holder (set by the
        # node); ``_minors``: each member's protocol minor
        self.send: Callable[[str, Any, Any, Callable[[int | None], None]], None] | None = None
        self._minors: dict[str, int] = {}
        self._outgoing: dict[tuple[str, int], _Outgoing] = {}
        self._parked: dict[int, tuple[int, bytes, str, float]] = {}  # block -> ticks, bytes, sender, since
        self._parked_bytes = 0
        self._received: dict[int, tuple[int, str]] = {}  # block -> (ticks, sender) of its bytes in _stored
        self.weights_sent = self.weights_received = self.weights_loaded = self.weights_kept = 0
        self.weights_dropped: collections.Counter[str] = collections.Counter()  # received, by reason
        self.weights_unsent: collections.Counter[str] = collections.Counter()  # to send, by reason
        self.last_loaded: dict[str, Any] | None = None

    def peers(self, members: Iterable[Any]) -> None:
        """The members as gossiped (``MemberState``): whose protocol takes NANO_WEIGHTS."""
        for m in members:
            major, _, minor = str(getattr(m, "protocol", "")).partition(".")
            if major == "1" and minor.isdigit():
                self._minors[m.name] = int(minor)

    def moved(self, holder: str, blocks: Iterable[int]) -> None:
        """The data plane copies ``blocks`` to a new ``holder`` (engine rule 3): their models
        go too, once the child's fresh weights are in (or ``SEND_WAIT`` later)."""
        if not self.channels or self.off is not None:
            return
        trainer, now, asked = self.trainer, time.monotonic(), []
        for b in blocks:
            b = int(b)
            if b >> 32 not in self.channels:
                continue
            state = self.blocks.get(b)
            if state is not None:
                ticks = state.ticks
            elif b in self._stored:
                ticks = self._received.get(b, (0, ""))[0]
            else:
                continue  # no model of it here (it had no row yet): nothing to move
            before = trainer.weights(b) if trainer is not None else None
            self._outgoing[(holder, b)] = _Outgoing(holder, b, ticks, before, now)
            if state is not None:
                asked.append(b)
        if asked and trainer is not None:
            trainer.snapshot(asked)

    def _weights_of(self, block: int) -> bytes | None:
        blob = self.trainer.weights(block) if self.trainer is not None else None
        return blob if blob is not None else self._stored.get(block)

    def _send_moved(self) -> None:
        """Send the moved blocks' weights that are ready (fresh, or waited enough) to holders
        whose protocol takes them; each tick, never waiting."""
        now, trainer = time.monotonic(), self.trainer
        ready: dict[str, list[tuple[int, int, bytes]]] = {}
        for key, out in list(self._outgoing.items()):
            minor = self._minors.get(out.holder)
            if minor is not None and minor < nano_handoff.NANO_MINOR:
                reason = "old_peer"  # it would refuse the message as an unknown type (SPEC 14)
            elif minor is None:
                if now - out.since < PEER_WAIT:
                    continue
                reason = "unknown_peer"
            elif trainer is not None and out.block in self.blocks and trainer.weights(out.block) is out.before \
                    and now - out.since < SEND_WAIT:
                continue  # the fresh snapshot is not in yet
            else:
                blob = self._weights_of(out.block)
                if blob is None:
                    reason = "no_weights"
                elif len(blob) > nano_handoff.MAX_BLOB:
                    reason = "too_large"
                elif self.send is None:
                    reason = "no_lane"
                else:
                    reason = ""
                    ready.setdefault(out.holder, []).append((out.block, out.ticks, blob))
            del self._outgoing[key]
            if reason:
                self.weights_unsent[reason] += 1
        send = self.send
        for holder, items in ready.items():
            for msg, payload in nano_handoff.pack(items):
                if send is not None:  # always: nothing is ready without a lane
                    send(holder, msg, payload, self._sent(len(msg.rows)))
            log.event("nano_weights_sent", to=holder, blocks=len(items))

    def _sent(self, blocks: int) -> Callable[[int | None], None]:
        def sent(seq: int | None) -> None:
            if seq is None:
                self.weights_unsent["not_sent"] += blocks
            else:
                self.weights_sent += blocks
        return sent

    def received(self, sender: str, msg: Any, payload: Any, members: Mapping[str, Any]) -> None:
        """A member's NANO_WEIGHTS (rule 6): checked, then each block's bytes loaded, kept
        for the block's first row, parked until the map gives us the block, or dropped and
        counted. Never raises: a node never dies from a peer's bytes."""
        try:
            self._receive(sender, msg, payload, members)
        except Exception:  # a bug here must cost the weights, not the node
            logging.getLogger(log.LOGGER_NAME).exception("nano_weights_failed")
            self.weights_dropped["error"] += 1

    def _receive(self, sender: str, msg: Any, payload: Any, members: Mapping[str, Any]) -> None:
        try:
            items = nano_handoff.unpack(msg, payload)
        except nano_handoff.Refused as exc:
            self.weights_dropped[exc.reason] += exc.blocks
            return
        self.weights_received += len(items)
        if sender == self.engine.name or sender not in members:
            self.weights_dropped["stranger"] += len(items)
            return
        if not self.channels or self.off is not None:
            self.weights_dropped["off"] += len(items)
            return
        now = time.monotonic()
        for block, ticks, blob in items:
            if block >> 32 not in self.channels:
                self.weights_dropped["not_intelligent"] += 1
            elif self._takes(block):
                self._take(block, ticks, blob, sender)
            elif self._parked_bytes + len(blob) <= PARK_BYTES and block not in self._parked:
                self._parked[block] = (ticks, blob, sender, now)
                self._parked_bytes += len(blob)
            else:
                self.weights_dropped["not_held"] += 1

    def _takes(self, block: int) -> bool:
        """A block's weights are taken once the block is held here and its state is in (its
        copy goes through the ingest queue, the weights do not): so a peer's bytes never
        make this node keep models of blocks it does not have."""
        return (block in self.blocks or self.engine.store.has_block(block)) and self._holds(block)

    def _holds(self, block: int) -> bool:
        """Whether this node holds ``block`` under its adopted map or the view it is about
        to adopt (a sender may adopt a map a moment before us)."""
        engine = self.engine
        root = engine.store.fusions.resolve(np.array([block], np.int64))
        for placement in (engine.placement, getattr(engine, "_pending", None)):
            if placement is not None and engine.name in placement.everyone:
                if placement.holder_mask(root, engine.copies)[0, placement.everyone.index(engine.name)]:
                    return True
        return False

    def _unpark(self) -> None:
        now = time.monotonic()
        for block, (ticks, blob, sender, since) in list(self._parked.items()):
            held = self._takes(block)
            if held or now - since > PARK_SECONDS:
                del self._parked[block]
                self._parked_bytes -= len(blob)
                if held:
                    self._take(block, ticks, blob, sender)
                else:
                    self.weights_dropped["not_held"] += 1

    def _take(self, block: int, ticks: int, blob: bytes, sender: str) -> None:
        """A held block's bytes from ``sender``: loaded unless our own model has seen as many ticks."""
        state = self.blocks.get(block)
        if state is not None:
            own = state.ticks
        elif block in self._stored:
            own = self._received.get(block, (0, ""))[0]
        else:
            own = -1
        if own >= ticks:
            self.weights_kept += 1
            return
        if state is not None and self.trainer is not None:
            self.trainer.load(block, blob)  # applied by the child before the next tick's means
            state.ticks = ticks
            self._loaded(block, ticks, sender)
        else:  # loaded with the block's first row here (``_add``)
            self._stored[block] = blob
            self._received[block] = (ticks, sender)

    def _loaded(self, block: int, ticks: int, sender: str) -> None:
        self.weights_loaded += 1
        self.last_loaded = {"block": block, "ticks": ticks, "from": sender}
        log.event("nano_weights_loaded", block=block, ticks=ticks, sender=sender)
