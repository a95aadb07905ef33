"""Membership timers and fan-outs (``MembershipConfig``) and its named profiles (``PROFILES``):
lan (the defaults), edge and test, each value with its reason. The rule numbers refer to the
rules at the top of membership.py (7: probing, 8: suspicion, 9: gossip, 11-13: join,
anti-entropy, reap, 16: stalls).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PROFILES", "MembershipConfig"]


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timers and fan-outs. Named profiles: ``lan()`` (the defaults), ``edge()``, ``test()``.

    Failure detection arithmetic for the lan defaults, n = 3..10 on loopback:
      detection ~= t1 (until some survivor's round-robin reaches the dead node: the minimum
                       of n-1 uniform phases over (n-1) * 0.2 s, ~0.15 s on average)
                  + 0.2 (one probe period: direct 0.1 s, then indirect, then suspect)
                  + 0.8 (suspicion min: the other survivors probe a member they heard
                         suspected first, so k confirmations arrive within ~0.4 s and the
                         timeout falls from 1.6 s to 0.8 s)
                  + <= 0.05 (the dead verdict waits for the next gossip flush)
                ~= 1.2 s typical, ~1.5 s when t1 is unlucky (P(t1 > 0.6 s) < 5 %): < 2 s.
    No false suspicion from loop stalls of tens of ms: a target has the whole 0.2 s period
    to answer, a stalled prober does not count its stall (rule 16), and a node stopped for
    0.6 s is first suspected >= 0.2 s after it stopped and declared dead no earlier than
    0.8 s after that, so it wakes and refutes in time.
    """

    # One probe per 200 ms per node (~5 small messages/s each); sets detection speed.
    probe_interval: float = 0.2
    # Above 10 members a node starts its probes further apart, n / 10 probe intervals, up to
    # 4x (0.8 s, from 40 members): each member is still probed every 0.2-0.8 s by someone,
    # and what a node sends and answers for probing stops growing with the cluster (40 idle
    # nodes: 5 probe messages a node a second instead of 20). Small clusters are unchanged.
    probe_spread_from: int = 10
    probe_spread_max: float = 4.0
    # Direct Ack wait: loopback/LAN RTT is ~1 ms, so 100 ms absorbs a stall of tens of ms
    # and leaves the other 100 ms of the period for the indirect round.
    probe_timeout: float = 0.1
    # k relays (memberlist's IndirectChecks): routes around one bad link with margin.
    indirect_checks: int = 3
    # min = 4 x 0.2 = 0.8 s up to 10 nodes: longer than a 0.6 s stop plus its refutation,
    # short enough for detection under 2 s.
    suspicion_mult: int = 4
    # max = 1.6 s when nobody confirms: a lone (perhaps slow) accuser gives the accused
    # twice the time to refute, still inside the 2 s budget. memberlist uses 6 at 1 s probes.
    suspicion_max_mult: int = 2
    # Lifeguard: an unhealthy node stretches its timeouts up to 8x (memberlist's default).
    awareness_max: int = 8
    # Each update rides 4 * ceil(log10(n + 1)) flushes (memberlist's RetransmitMult):
    # 8 flushes, 400 ms, for 10 nodes; covers a subscriber that connected a moment late.
    retransmit_mult: int = 4
    # Flush queued updates at most every 50 ms: a verdict leaves at the next tick after a
    # quiet spell, retransmits batch into one frame.
    gossip_interval: float = 0.05
    # Anti-entropy: one full sync per node every 5 s (scaled up above 32 nodes); the PUB
    # sequence-gap resync repairs most losses long before.
    push_pull_interval: float = 5.0
    # Forget dead/left members after 24 h (Serf's reconnect/tombstone timeout). Dead members
    # stay voters until then, so a partition cannot shrink its quorum into a majority.
    reap_after: float = 86400.0
    # Keep knocking on dead members as long as we remember them: a partition heals whenever
    # the network does.
    reconnect_for: float = 86400.0
    # One dead member per 3 s per node: a healed partition merges within seconds, and a
    # really dead node costs one small message per node every 3 s.
    reconnect_interval: float = 3.0
    # An unanswered join is retried after 2 s, doubling up to 16 s, until answered.
    join_retry: float = 2.0
    # Rule 16: a silence longer than this between calls, past the next deadline we gave,
    # means our own loop stalled (the shell wakes at that deadline). None turns the guard
    # off (a simulator with coarse ticks).
    stall_gap: float | None = 0.1

    def __post_init__(self) -> None:
        for key in (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "push_pull_interval",
            "reap_after",
            "reconnect_interval",
            "join_retry",
        ):
            if not getattr(self, key) > 0:
                raise ValueError(
                    f"membership config: {key} must be > 0, got {getattr(self, key)!r}"
                )
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(
                f"membership config: probe_timeout ({self.probe_timeout}) must be shorter than "
                f"probe_interval ({self.probe_interval}) to leave time for indirect probes"
            )
        if self.probe_spread_from < 1 or not self.probe_spread_max >= 1:
            raise ValueError(
                f"membership config: probe_spread_from ({self.probe_spread_from}) and "
                f"probe_spread_max ({self.probe_spread_max}) must be >= 1"
            )
        for key in ("suspicion_mult", "suspicion_max_mult", "awareness_max", "retransmit_mult"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"membership config: {key} must be >= 1, got {getattr(self, key)!r}"
                )
        if self.indirect_checks < 0:
            raise ValueError(
                f"membership config: indirect_checks must be >= 0, got {self.indirect_checks!r}"
            )
        if self.reconnect_for < 0 or self.reconnect_for > self.reap_after:
            raise ValueError(
                f"membership config: reconnect_for ({self.reconnect_for}) must be between 0 and "
                f"reap_after ({self.reap_after}): a reaped member cannot be reconnected"
            )
        if self.stall_gap is not None and not self.stall_gap > 0:
            raise ValueError(
                f"membership config: stall_gap must be > 0 or None, got {self.stall_gap!r}"
            )

    @classmethod
    def lan(cls) -> MembershipConfig:
        """The defaults: a LAN or one host; death seen in ~1-2 s."""
        return cls()

    @classmethod
    def edge(cls) -> MembershipConfig:
        """Lossy Wi-Fi and small CPUs (a Raspberry Pi): slower, surer verdicts (~6-10 s)."""
        return cls(
            # radio links lose and delay packets in bursts: memberlist's LAN pace
            probe_interval=1.0,
            # Wi-Fi RTT spikes to hundreds of ms, and a Pi's loop stalls longer
            probe_timeout=0.5,
            suspicion_mult=4,  # min 4 s
            # max 24 s for a lone accuser (memberlist's default): flaky links accuse wrongly
            suspicion_max_mult=6,
            gossip_interval=0.2,  # fewer, bigger frames on a slow link
            push_pull_interval=30.0,  # memberlist's LAN value: full syncs cost airtime
            # 72 h: edge devices go offline for long stretches and must come back as voters
            reap_after=259200.0,
            reconnect_for=259200.0,
            reconnect_interval=10.0,  # knocking costs airtime too
            join_retry=5.0,
            stall_gap=0.5,  # a Pi's loop may legitimately pause longer between ticks
            probe_spread_max=1.0,  # already memberlist's 1 s a probe: no later first probe
        )

    @classmethod
    def test(cls) -> MembershipConfig:
        """The lan failure detector with fast background work, so tests and the simulator
        see anti-entropy, reconnect and reaping within seconds."""
        return cls(
            push_pull_interval=1.0,  # anti-entropy visible within a test's patience
            reap_after=30.0,  # long enough that a test reads "dead" before it is reaped
            reconnect_for=30.0,
            reconnect_interval=0.5,  # a healed partition merges in about a second
            join_retry=0.5,
        )

    @classmethod
    def profile(cls, name: str) -> MembershipConfig:
        try:
            return PROFILES[name]()
        except KeyError:
            raise ValueError(
                f"unknown membership profile {name!r}; expected one of {', '.join(PROFILES)}"
            ) from None


PROFILES: dict[str, Callable[[], MembershipConfig]] = {
    "lan": MembershipConfig.lan,
    "edge": MembershipConfig.edge,
    "test": MembershipConfig.test,
}
