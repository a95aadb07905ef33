"""Block genome: named, range-validated parameters that govern one block's own behaviour.

Pure: no I/O, no clock, no global random (the rng is an argument). A genome is a frozen
value; every operation returns a new one. It is part of block state: ``to_dict`` gives
plain values (str, int, float, list) that msgpack, SQLite JSON and PostgreSQL jsonb carry
as they are, and ``from_dict`` takes them back.

Rules:

1. The spec table ``GENES`` is the only place a gene is defined: kind, range or choices,
   default and meaning. APPEND ONLY for names: a stored genome names its genes, so a gene
   that is renamed or removed makes old rows unreadable (rule 5).
2. Every genome's params are valid: each gene present, of its kind, inside its range or
   among its choices. ``validate`` is the one check; a ValueError names the gene and what
   it accepts, so a bad config or a bad stored row says what to fix.
3. ``kernel`` is a choice whose choices the caller gives (``kernels=``), because plugins
   add kernels at run time; without them any non-empty name passes, and the engine checks
   it against its registry when it binds the kernel.
4. Lineage. ``mutate`` and ``recombine`` make a child: ``generation`` = the parents' highest
   + 1, ``parents`` = their ids. Inheritance (fusion, repair) copies a genome unchanged, id,
   generation and parents included: the block took that genome, it did not breed one.
   ``id`` is a digest of params, generation and parents, so equal genomes have equal ids
   on every node, and a genome bred twice the same way is recognised.
5. Reading old rows: ``from_dict`` fills a gene missing from the row with its default (a
   gene added after the row was written) and refuses a gene it does not know (a row from a
   newer version, or a typo): guessing what an unknown gene meant would be wrong.
6. Evolution only moves genes a shadow trial can judge (``Gene.evolves``): the trial
   scores forecasts (evolution.py), so only the forecaster's genes mutate by default. The
   anomaly sensitivity, scoring window, repair and fusion floors and the kernel are set by
   config or an operator and inherited, never drifted by chance.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

SEASONS = (0, 4, 7, 12, 24, 52, 60, 96, 168, 288)
"""Seasonal periods in ticks a forecaster may use; 0 = none. Quarterly, weekly (days),
monthly, daily (hours), yearly (weeks), hourly (minutes), daily (15 min), weekly (hours),
daily (5 min). A longer period costs 8 bytes per block per tick of period (the ring)."""

ID_BYTES = 8  # genome id: 16 hex characters; collisions need ~4e9 distinct genomes
MAX_REDRAWS = 16  # mutate: genes drawn again while the child equals its parent
FORMAT = 1  # to_dict's "v": bumped only if the dict's shape (not the gene list) changes


@dataclass(frozen=True, slots=True)
class Gene:
    """One row of the spec table. ``lo``/``hi`` bound float and int genes (inclusive);
    ``choices`` lists a choice gene's values (None: given by the caller, rule 3)."""

    name: str
    kind: str  # "float" | "int" | "choice"
    default: Any
    meaning: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[Any, ...] | None = None
    evolves: bool = False  # rule 6

    def accepts(self) -> str:
        """What this gene accepts, for error messages."""
        if self.kind == "choice":
            return "one of " + (repr(list(self.choices)) if self.choices else "the registered kernels")
        return f"a{'n' if self.kind == 'int' else ''} {self.kind} in [{self.lo}, {self.hi}]"


_GENE_LIST = (
    # Forecaster (forecast.py): damped-trend additive Holt-Winters, statsmodels' meanings.
    # Defaults: a block's mean averages many entities, so it is far smoother than one
    # reading and the newest mean deserves most weight (alpha 0.7), but not all (1 is naive,
    # no filtering); a slow, damped trend (beta 0.1, damping 0.9) follows drifts without
    # overshooting a turn; no season until one is learned (a wrong season costs more than
    # none).
    Gene("alpha", "float", 0.7, "level smoothing: weight of the newest observation in the level",
         0.01, 1.0, evolves=True),
    Gene("beta", "float", 0.1, "trend smoothing: weight of the newest level change in the trend",
         0.0, 0.5, evolves=True),
    Gene("gamma", "float", 0.1, "seasonal smoothing: weight of the newest deviation in its season slot",
         0.0, 0.9, evolves=True),
    Gene("season", "choice", 0, "seasonal period in ticks (0: no season); a block learns its own",
         choices=SEASONS, evolves=True),
    Gene("damping", "float", 0.9, "trend damping per tick ahead (1: undamped, a straight line)",
         0.8, 1.0, evolves=True),
    # Judging and acting on the block.
    Gene("sensitivity", "float", 4.0, "anomaly threshold: |forecast error| in robust sigmas that flags",
         1.5, 12.0),
    Gene("window", "int", 48, "ticks over which the forecast error is scored (MASE)", 8, 1024),
    Gene("repair_threshold", "float", 0.1, "error rate above which the block is repaired",
         0.0, 1.0),
    Gene("fusion_floor", "float", 0.2, "fitness under which the block fuses into a strong one",
         0.0, 1.0),
    Gene("kernel", "choice", "mean", "kernel that regenerates or transforms the block's entities"),
)

GENES: Mapping[str, Gene] = MappingProxyType({g.name: g for g in _GENE_LIST})
"""The spec table (rule 1), in declaration order."""

EVOLVING = tuple(g.name for g in _GENE_LIST if g.evolves)
"""Genes ``mutate`` moves unless told otherwise (rule 6)."""


def _check(gene: Gene, value: Any, kernels: Sequence[str] | None) -> Any:
    """``value`` normalized to the gene's kind, or ValueError naming the gene (rule 2)."""

    def bad(why: str = "") -> ValueError:
        return ValueError(f"gene {gene.name!r} must be {gene.accepts()}, got {value!r}{why}")

    if gene.kind == "choice":
        choices = gene.choices if gene.choices is not None else (
            tuple(kernels) if kernels is not None else None)
        if choices is None:  # rule 3
            if not isinstance(value, str) or not value:
                raise bad()
            return value
        if isinstance(value, bool):
            raise bad()
        for c in choices:
            if type(c) is type(value) and c == value:
                return c
            if isinstance(c, int) and isinstance(value, numbers.Integral) and int(value) == c:
                return c
        if gene.choices is None:
            raise ValueError(f"gene {gene.name!r} must be one of {sorted(choices)!r}, got {value!r}")
        raise bad()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad()
    if gene.kind == "int":
        if not isinstance(value, numbers.Integral) and not (
                math.isfinite(value) and float(value).is_integer()):
            raise bad()
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad()
    if not gene.lo <= value <= gene.hi:
        raise bad()
    return value


def validate(params: Mapping[str, Any], kernels: Sequence[str] | None = None) -> dict[str, Any]:
    """Checked and normalized params, genes in spec order. A gene missing from ``params``
    takes its default (rule 5); an unknown gene or a bad value raises ValueError naming it."""
    if not isinstance(params, Mapping):
        # ValueError, not TypeError: callers catch one error type for any bad genome data
        raise ValueError(f"genome params must be a mapping, got {type(params).__name__}")  # noqa: TRY004
    unknown = [k for k in params if k not in GENES]
    if unknown:
        raise ValueError(f"unknown genes {sorted(map(str, unknown))}; known: {list(GENES)}")
    return {
        name: _check(g, params[name], kernels) if name in params else g.default
        for name, g in GENES.items()
    }


def _digest(params: Mapping[str, Any], generation: int, parents: tuple[str, ...]) -> str:
    blob = json.dumps([sorted(params.items()), generation, list(parents)],
                      separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(blob.encode(), digest_size=ID_BYTES).hexdigest()


@dataclass(frozen=True, slots=True)
class Genome:
    """A valid genome (rule 2). Build it with :func:`make`, :func:`default_genome` or
    :func:`from_dict`; ``Genome(...)`` directly skips validation, so the core never does."""

    params: Mapping[str, Any]
    generation: int = 0
    parents: tuple[str, ...] = ()
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "id", _digest(self.params, self.generation, self.parents))

    def __getitem__(self, gene: str) -> Any:
        return self.params[gene]

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (to a worker process) despite the proxy
        return (Genome, (dict(self.params), self.generation, self.parents))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Genome) and self.id == other.id and (
            dict(self.params) == dict(other.params))

    def replace(self, kernels: Sequence[str] | None = None, **genes: Any) -> Genome:
        """The same genome with some genes set by hand (an operator or config): a new
        lineage step is not implied, so generation and parents stay."""
        return make({**self.params, **genes}, self.generation, self.parents, kernels=kernels)


def make(params: Mapping[str, Any], generation: int = 0, parents: Iterable[str] = (),
         *, kernels: Sequence[str] | None = None) -> Genome:
    """A validated genome (rule 2)."""
    if isinstance(generation, bool) or not isinstance(generation, numbers.Integral) or generation < 0:
        raise ValueError(f"genome generation must be an int >= 0, got {generation!r}")
    parents = tuple(parents)
    if not all(isinstance(p, str) and p for p in parents) or len(parents) > 2:
        raise ValueError(f"genome parents must be up to 2 genome ids, got {parents!r}")
    return Genome(validate(params, kernels), int(generation), parents)


def default_genome() -> Genome:
    """Every gene at its default: generation 0, no parents. The same id everywhere."""
    return Genome({name: g.default for name, g in GENES.items()})


# -- breeding ----------------------------------------------------------------------------


def _mutate_gene(gene: Gene, value: Any, rng: np.random.Generator, scale: float,
                 kernels: Sequence[str] | None, allowed: Sequence[Any] | None) -> Any:
    if gene.kind == "choice":
        choices = gene.choices if gene.choices is not None else tuple(kernels or ())
        if allowed is not None:
            choices = [c for c in choices if c in allowed]
        others = [c for c in choices if c != value]
        return others[int(rng.integers(len(others)))] if others else value
    span = gene.hi - gene.lo
    step = float(rng.normal(0.0, scale * span))
    x = value + step
    if gene.kind == "int":
        x = value + (round(step) or (1 if step >= 0 else -1))  # an int gene always moves
    # reflect at the bounds (clipping would pile mass on them), then clip what is left
    if x > gene.hi:
        x = 2 * gene.hi - x
    if x < gene.lo:
        x = 2 * gene.lo - x
    x = min(gene.hi, max(gene.lo, x))
    return int(x) if gene.kind == "int" else float(x)


def mutate(g: Genome, rng: np.random.Generator, rate: float = 0.3, scale: float = 0.1, *,
           genes: Iterable[str] | None = None, kernels: Sequence[str] | None = None,
           choices: Mapping[str, Sequence[Any]] | None = None) -> Genome:
    """A child of ``g``: each gene of ``genes`` (default :data:`EVOLVING`; ``kernel`` moves
    only when ``kernels`` lists the choices) changes with probability ``rate``; a float or
    int gene by a normal step of ``scale`` times its range (reflected into range), a choice
    gene to another choice, uniformly, among ``choices[gene]`` when given (a channel whose
    data has a known sampling may allow only the seasons that make sense, e.g.
    ``{"season": (0, 24, 168)}``). With ``rate > 0`` at least one gene is drawn, so a trial
    does not pit a genome against itself (a float gene's step can round to nothing only
    with a vanishing ``scale``). Generation + 1, parents ``(g.id,)``."""
    if not 0 <= rate <= 1 or not scale >= 0:
        raise ValueError(f"mutate needs 0 <= rate <= 1 and scale >= 0, got {rate}, {scale}")
    names = list(EVOLVING if genes is None else genes)
    for n in names:
        if n not in GENES:
            raise ValueError(f"unknown gene {n!r}; known: {list(GENES)}")
    if "kernel" in names and not kernels:
        names.remove("kernel")
    params = dict(g.params)
    hit = rng.random(len(names)) < rate
    if rate > 0 and names and not hit.any():
        hit[int(rng.integers(len(names)))] = True
    for n, h in zip(names, hit):
        if h:
            params[n] = _mutate_gene(GENES[n], params[n], rng, scale, kernels,
                                     (choices or {}).get(n))
    for _ in range(MAX_REDRAWS):  # a step reflected at a bound can land where it started
        if not (rate > 0 and names and params == dict(g.params)):
            break
        n = names[int(rng.integers(len(names)))]
        params[n] = _mutate_gene(GENES[n], params[n], rng, scale, kernels, (choices or {}).get(n))
    return Genome(validate(params, kernels if "kernel" in names else None),
                  g.generation + 1, (g.id,))


def recombine(a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
    """A child of ``a`` and ``b``: uniform crossover, each gene from either parent with
    probability 1/2, so every gene value is one a parent carried (always in range, and
    ``season`` never becomes a period neither parent had). Generation = the older's + 1."""
    pick = rng.random(len(GENES)) < 0.5
    params = {n: (a.params[n] if p else b.params[n]) for n, p in zip(GENES, pick)}
    return Genome(params, max(a.generation, b.generation) + 1, (a.id, b.id))


def breed(a: Genome, b: Genome, rng: np.random.Generator, rate: float = 0.3, scale: float = 0.1,
          *, genes: Iterable[str] | None = None, kernels: Sequence[str] | None = None,
          choices: Mapping[str, Sequence[Any]] | None = None) -> Genome:
    """``mutate(recombine(a, b))`` as one step of lineage: parents ``(a.id, b.id)``,
    generation the older's + 1 (the intermediate child is never a block's genome, so it is
    not an ancestor). With ``a == b`` it is a mutation of ``a`` with parents ``(a.id,)``."""
    if a.id == b.id:
        return mutate(a, rng, rate, scale, genes=genes, kernels=kernels, choices=choices)
    child = mutate(recombine(a, b, rng), rng, rate, scale, genes=genes, kernels=kernels,
                   choices=choices)
    return Genome(child.params, max(a.generation, b.generation) + 1, (a.id, b.id))


def inherit_fused(strong: Genome) -> Genome:
    """The genome a weak block fused into ``strong``'s group carries: the strong one,
    unchanged (rule 4): the group is one row and one forecaster, under the strong genome."""
    return strong


def inherit_repaired(best: Genome) -> Genome:
    """The genome a repaired block restarts with: its channel's best (``best`` is chosen by
    the caller, e.g. ``evolution.channel_best``), unchanged (rule 4)."""
    return best


# -- plain values --------------------------------------------------------------------------


def in_effect(g: Genome | None, gene: str, setting: Any) -> Any:
    """A gene that stands for a node setting (``repair_threshold``: ``engine.max_errors``,
    ``fusion_floor``: ``engine.min_fitness``; their defaults are the same): the block's
    value once its genome sets it away from the default, else the node's setting."""
    if g is None:
        return setting
    value = g.params[gene]
    return setting if value == GENES[gene].default else value


def to_dict(g: Genome) -> dict[str, Any]:
    """Plain values for msgpack, SQLite and PostgreSQL: ``{"v", "id", "generation",
    "parents", "params"}``. ``id`` is informative: ``from_dict`` recomputes it."""
    return {"v": FORMAT, "id": g.id, "generation": g.generation, "parents": list(g.parents),
            "params": dict(g.params)}


def from_dict(d: Mapping[str, Any], kernels: Sequence[str] | None = None) -> Genome:
    """A genome from ``to_dict``'s plain values (rules 2 and 5); ValueError saying what is
    wrong. A missing ``generation`` or ``parents`` means a hand-written genome (0, none)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a genome must be a mapping, got {type(d).__name__}")  # noqa: TRY004
    extra = set(d) - {"v", "id", "generation", "parents", "params"}
    if extra:
        raise ValueError(f"unknown genome fields {sorted(map(str, extra))}")
    if d.get("v", FORMAT) != FORMAT:
        raise ValueError(f"genome format {d.get('v')!r} is not {FORMAT} (written by a newer version?)")
    parents = d.get("parents", ())
    if not isinstance(parents, (list, tuple)):
        raise ValueError(f"genome parents must be a list of ids, got {parents!r}")  # noqa: TRY004
    return make(d.get("params", {}), d.get("generation", 0), parents, kernels=kernels)


def describe() -> list[dict[str, Any]]:
    """The spec table as plain rows (for ``corec-node genome`` and docs)."""
    return [
        {"gene": g.name, "kind": g.kind, "default": g.default, "range": g.accepts(),
         "evolves": g.evolves, "meaning": g.meaning}
        for g in _GENE_LIST
    ]
