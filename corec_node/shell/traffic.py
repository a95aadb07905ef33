"""What goes in and out of a node's sockets: encoding with per-topic sequence numbers, the
counters behind ``status`` and the metrics, and the count of rejected frames.

Both planes of the shell send through one ``Outbox`` and count in one ``Traffic``; a
rejected frame is counted by reason and logged at most once a second (a flood must not
flood the log).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from corec_node import log
from corec_node.shell.transport import Transport
from corec_node.wire import SequenceCounter, WireError, encode_message, message_type, topic_for
from corec_node.wire.topics import TOPIC_DIRECT

REJECT_LOG_EVERY = 1.0  # seconds between two frame_rejected lines


class Traffic:
    """Counters of messages and bytes by type and topic, and of rejected frames by reason."""

    __slots__ = ("bytes_in", "bytes_out", "messages_in", "messages_out", "rejected",
                 "topic_in", "topic_out", "_last_reject_log")

    def __init__(self) -> None:
        self.messages_in: collections.Counter[str] = collections.Counter()
        self.messages_out: collections.Counter[str] = collections.Counter()
        self.topic_in: collections.Counter[bytes] = collections.Counter()
        self.topic_out: collections.Counter[bytes] = collections.Counter()
        self.bytes_in: collections.Counter[bytes] = collections.Counter()
        self.bytes_out: collections.Counter[bytes] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self._last_reject_log = 0.0

    def count_in(self, msg_type: str, topic: bytes, frames: list[Any]) -> None:
        """After decode: a hostile topic frame never becomes a label."""
        self.messages_in[msg_type] += 1
        self.topic_in[topic] += 1
        self.bytes_in[topic] += sum(len(f) for f in frames)

    def count_out(self, topic: bytes, frames: list[Any]) -> None:
        self.topic_out[topic] += 1
        self.bytes_out[topic] += sum(len(f) for f in frames)

    def reject(self, where: str, exc: WireError) -> None:
        self.rejected[exc.reason] += 1
        now = time.monotonic()
        if now - self._last_reject_log > REJECT_LOG_EVERY:
            self._last_reject_log = now
            log.event("frame_rejected", logging.INFO, where=where, reason=exc.reason,
                      detail=exc.detail[:200], total=sum(self.rejected.values()))


class Outbox:
    """Encodes a message under this node's name and cluster, numbers it on its topic, sends
    it and counts it. Never raises for a peer's sake: ``Transport`` drops and counts."""

    __slots__ = ("cluster", "counters", "name", "traffic", "transport")

    def __init__(self, transport: Transport, traffic: Traffic, *, name: str, cluster: str) -> None:
        self.transport = transport
        self.traffic = traffic
        self.name = name
        self.cluster = cluster
        self.counters = SequenceCounter()

    def frames(self, msg: Any, topic: bytes, payload: Any = None) -> list[Any]:
        return encode_message(msg, sender=self.name, seq=self.counters.next(topic),
                              cluster=self.cluster, payload=payload)

    def send(self, addr: str, msg: Any, payload: Any = None) -> bool:
        """A direct message to one member's ROUTER; False when the transport dropped it."""
        frames = self.frames(msg, TOPIC_DIRECT, payload)
        if not self.transport.send(addr, frames):
            return False
        self._counted(msg)
        self.traffic.count_out(TOPIC_DIRECT, frames)
        return True

    def reply(self, identity: bytes, msg: Any) -> bool:
        """A direct answer to a producer, on the connection (ROUTER ``identity``) its
        message came in on; False when the transport dropped it."""
        frames = self.frames(msg, TOPIC_DIRECT)
        if not self.transport.reply(identity, frames):
            return False
        self._counted(msg)
        self.traffic.count_out(TOPIC_DIRECT, frames)
        return True

    def publish(self, msg: Any, payload: Any = None) -> None:
        """A broadcast on this node's PUB stream, under the message's own topic."""
        topic = topic_for(msg)
        self.publish_frames(topic, self.frames(msg, topic, payload))
        self._counted(msg)

    def _counted(self, msg: Any) -> None:
        """One more message out of its type, by the wire's name (``heartbeat_ack``)."""
        self.traffic.messages_out[message_type(msg).name.lower()] += 1

    def publish_frames(self, topic: bytes, frames: list[Any]) -> None:
        self.transport.publish(frames)
        self.traffic.count_out(topic, frames)
