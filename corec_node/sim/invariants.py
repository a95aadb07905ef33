"""Safety invariants of the nucleus election, checked at every step of a simulation.

The checker sees every ``PersistVote`` and ``LeaderChanged`` the simulated nodes emit, so
it judges what the nodes did (a vote counts when the voter persisted it, whether or not
the candidate ever heard of it), not what they believe:

- at most one leader per term, across all nodes, ever (bootstrap is explicit, so there
  are no islands that formed apart: every node's voters come from one configuration
  history);
- a node becomes leader of a term only if a majority of the voter set it holds at that
  moment persisted a vote for it in that term;
- one vote per term per node, even across restarts;
- a node's persisted term never goes down;
- committed voter configurations form one history: never two different ones with one
  index.

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
        "_commits",
        "_grants",
        "_term",
        "_votes",
        "elections",
        "leader_of_term",
        "strict",
        "violations",
    )

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict  # raise at the first violation (tests) or only count (sweeps)
        self.violations: list[str] = []
        self.leader_of_term: dict[int, list[tuple[str, frozenset[str]]]] = defaultdict(
            list
        )  # term -> (leader, voters)
        self._votes: dict[tuple[str, int], str] = {}  # (voter, term) -> candidate
        self._grants: dict[tuple[str, int], set[str]] = defaultdict(
            set
        )  # (candidate, term) -> voters
        self._term: dict[str, int] = {}  # node -> last persisted term
        self.elections = 0
        self._commits: dict[int, tuple[int, tuple[tuple[str, str], ...], str]] = {}  # index -> (term, voters, by)

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
        for other, _theirs in seen:
            if other != node:
                self._fail(now, f"two leaders in term {term}: {other} and {node}")
        seen.append((node, mine))
        granted = sum(1 for v in self._grants.get((node, term), ()) if v in voters)
        need = len(voters) // 2 + 1
        if granted < need:
            self._fail(
                now,
                f"{node} leads term {term} with {granted} votes of {len(voters)} voters (needs {need})",
            )

    def on_commit(self, now: float, node: str, index: int, term: int,
                  voters: tuple[tuple[str, str], ...]) -> None:
        """``node``, as leader, saw the configuration ``index`` stored by a majority."""
        seen = self._commits.get(index)
        if seen is None:
            self._commits[index] = (term, voters, node)
        elif (seen[0], seen[1]) != (term, voters):
            self._fail(now, f"two configurations committed with index {index}: {seen[1]} in term "
                            f"{seen[0]} by {seen[2]}, {voters} in term {term} by {node}")

    @property
    def committed(self) -> dict[int, tuple[int, tuple[tuple[str, str], ...], str]]:
        """index -> (term, voters, the leader that saw it committed)."""
        return self._commits

    def votes_for(self, node: str, term: int) -> set[str]:
        return set(self._grants.get((node, term), ()))
