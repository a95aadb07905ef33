"""Safety invariants of the nucleus election, checked at every step of a simulation.

The checker sees every ``PersistVote`` and ``LeaderChanged`` the simulated nodes emit, so
it judges what the nodes did (a vote counts when the voter persisted it, whether or not
the candidate ever heard of it), not what they believe:

- at most one leader per term, across all nodes, ever, among leaders whose voter sets
  overlap (two islands that formed apart, e.g. nodes that joined each other while their
  seeds were unreachable, each elect a leader of term 1; that is two clusters, counted in
  ``merged_islands``, and they converge on one leader when they merge);
- a node becomes leader of a term only if a majority of the voter set it holds at that
  moment persisted a vote for it in that term;
- one vote per term per node, even across restarts;
- a node's persisted term never goes down.

Liveness (convergence after faults heal) is checked by the cluster, which knows time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

__all__ = ["InvariantViolation", "Invariants"]


class InvariantViolation(AssertionError):
    """A safety property failed; the message says which, where and when."""


class Invariants:
    __slots__ = (
        "_grants",
        "_term",
        "_votes",
        "elections",
        "leader_of_term",
        "merged_islands",
        "strict",
        "violations",
    )

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict  # raise at the first violation (tests) or only count (sweeps)
        self.violations: list[str] = []
        self.leader_of_term: dict[int, list[tuple[str, frozenset[str]]]] = defaultdict(
            list
        )  # term -> (leader, voters)
        self.merged_islands = 0  # same-term leaders with disjoint voter sets: separate clusters
        self._votes: dict[tuple[str, int], str] = {}  # (voter, term) -> candidate
        self._grants: dict[tuple[str, int], set[str]] = defaultdict(
            set
        )  # (candidate, term) -> voters
        self._term: dict[str, int] = {}  # node -> last persisted term
        self.elections = 0

    def _fail(self, now: float, text: str) -> None:
        text = f"t={now:.3f}: {text}"
        self.violations.append(text)
        if self.strict:
            raise InvariantViolation(text)

    def on_persist(self, now: float, node: str, term: int, voted_for: str | None) -> None:
        last = self._term.get(node, 0)
        if term < last:
            self._fail(now, f"{node} persisted term {term} after term {last}")
        self._term[node] = term
        if voted_for is None:
            return
        key = (node, term)
        prev = self._votes.get(key)
        if prev is not None and prev != voted_for:
            self._fail(now, f"{node} voted twice in term {term}: {prev} then {voted_for}")
        self._votes[key] = voted_for
        self._grants[(voted_for, term)].add(node)

    def on_leader(self, now: float, node: str, term: int, voters: Mapping[str, str]) -> None:
        """``node`` reports itself leader of ``term`` holding the voter set ``voters``."""
        self.elections += 1
        mine = frozenset(voters)
        seen = self.leader_of_term[term]
        for other, theirs in seen:
            if other == node:
                continue
            if mine & theirs:
                self._fail(now, f"two leaders in term {term}: {other} and {node}")
            else:
                self.merged_islands += 1
        seen.append((node, mine))
        granted = sum(1 for v in self._grants.get((node, term), ()) if v in voters)
        need = len(voters) // 2 + 1
        if granted < need:
            self._fail(
                now,
                f"{node} leads term {term} with {granted} votes of {len(voters)} voters (needs {need})",
            )

    def votes_for(self, node: str, term: int) -> set[str]:
        return set(self._grants.get((node, term), ()))
