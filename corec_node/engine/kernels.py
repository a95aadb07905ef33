"""Kernels: vectorized ``f(values, state) -> values``, registered by name. Pure but for the
seeded numpy Generator each state carries (same seed, same calls, same output).

A kernel produces synthetic entities (a simulated sensor advances its values each tick)
or transforms incoming ones (``clip`` before ingest). Rules for a kernel, built-in or from
a plugin:

1. Vectorized: one call per batch (a block, a channel), never a Python loop per value.
2. Return a new float32 array of the same length; never modify ``values`` in place.
3. Randomness only from ``state.rng``; time only from ``state.tick``. No I/O, no clock: a
   kernel runs inside the tick and must not block.
4. Parameters come from ``state.params``; an unknown or bad parameter raises ValueError
   when the kernel is first called, so a config typo fails early.

Built-ins: ``identity``, ``random_walk`` (``sigma``, optional ``lo``/``hi`` bounds),
``sine`` (``amplitude``, ``period`` in ticks, ``offset``, ``noise``, ``phase_step`` radians
per id), ``clip`` (``lo``, ``hi``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from corec_node.wire.entities import ENTITY_DTYPE


@dataclass(slots=True)
class KernelState:
    """What a kernel may read: a seeded Generator, its parameters, the tick and the ids of
    the entities (in ``values`` order, or None when not known)."""

    rng: np.random.Generator
    params: Mapping[str, Any] = field(default_factory=dict)
    tick: int = 0
    ids: np.ndarray | None = None

    @classmethod
    def seeded(cls, seed: int, params: Mapping[str, Any] | None = None, **kw: Any) -> KernelState:
        return cls(np.random.default_rng(seed), dict(params or {}), **kw)


Kernel = Callable[[np.ndarray, KernelState], np.ndarray]


def _params(state: KernelState, allowed: Mapping[str, float]) -> dict[str, float]:
    unknown = set(state.params) - set(allowed)
    if unknown:
        raise ValueError(f"unknown kernel parameters {sorted(unknown)}; known: {sorted(allowed)}")
    out = dict(allowed)
    for k, v in state.params.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"kernel parameter {k!r} must be a number, got {v!r}") from None
    return out


def identity(values: np.ndarray, state: KernelState) -> np.ndarray:
    """The values unchanged (a copy)."""
    _params(state, {})
    return np.array(values, dtype=np.float32)


def random_walk(values: np.ndarray, state: KernelState) -> np.ndarray:
    """A synthetic sensor: ``value + N(0, sigma)``, clipped to [lo, hi]."""
    p = _params(state, {"sigma": 1.0, "lo": -np.inf, "hi": np.inf})
    if p["sigma"] < 0:
        raise ValueError("random_walk: sigma must be >= 0")
    out = np.asarray(values, np.float64) + state.rng.normal(0.0, p["sigma"], len(values))
    return np.clip(out, p["lo"], p["hi"]).astype(np.float32)


def sine(values: np.ndarray, state: KernelState) -> np.ndarray:
    """A periodic signal: ``offset + amplitude * sin(2 pi tick / period + phase_step * id)
    + N(0, noise)``. Ignores the incoming values (a generator, not a transform)."""
    p = _params(
        state, {"amplitude": 1.0, "period": 60.0, "offset": 0.0, "noise": 0.0, "phase_step": 0.0}
    )
    if p["period"] <= 0 or p["noise"] < 0:
        raise ValueError("sine: period must be > 0 and noise >= 0")
    n = len(values)
    phase = 2.0 * np.pi * state.tick / p["period"]
    if state.ids is not None and p["phase_step"]:
        phase = phase + p["phase_step"] * np.asarray(state.ids, np.float64)
    out = p["offset"] + p["amplitude"] * np.sin(np.broadcast_to(phase, (n,)))
    if p["noise"]:
        out = out + state.rng.normal(0.0, p["noise"], n)
    return out.astype(np.float32)


def clip(values: np.ndarray, state: KernelState) -> np.ndarray:
    """Clamp incoming values to [lo, hi]; NaN stays NaN (still an error at ingest)."""
    p = _params(state, {"lo": -np.inf, "hi": np.inf})
    return np.clip(np.asarray(values, np.float32), p["lo"], p["hi"]).astype(np.float32)


BUILTINS: Mapping[str, Kernel] = MappingProxyType(
    {"identity": identity, "random_walk": random_walk, "sine": sine, "clip": clip}
)


class KernelRegistry:
    """Kernels by name. Plugins register theirs at start (a name is taken once)."""

    __slots__ = ("_kernels",)

    def __init__(self, kernels: Mapping[str, Kernel] | None = None, builtins: bool = True) -> None:
        self._kernels: dict[str, Kernel] = dict(BUILTINS) if builtins else {}
        for name, fn in (kernels or {}).items():
            self.register(name, fn)

    def register(self, name: str, kernel: Kernel, *, replace: bool = False) -> None:
        """Add ``kernel`` under ``name``; ValueError if taken (unless ``replace``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"kernel name must be a non-empty string, got {name!r}")
        if not callable(kernel):
            raise TypeError(f"kernel {name!r} is not callable")
        if name in self._kernels and not replace:
            raise ValueError(f"kernel {name!r} is already registered")
        self._kernels[name] = kernel

    def get(self, name: str) -> Kernel:
        """The kernel named ``name``; KeyError naming the known ones otherwise."""
        try:
            return self._kernels[name]
        except KeyError:
            raise KeyError(f"unknown kernel {name!r}; known: {self.names()}") from None

    def names(self) -> list[str]:
        return sorted(self._kernels)

    def __contains__(self, name: object) -> bool:
        return name in self._kernels


def bind(kernel: Kernel, state: KernelState) -> Callable[[np.ndarray], np.ndarray]:
    """``values -> kernel(values, state)``: what repair takes per channel."""
    return lambda values: kernel(values, state)


def guarded(fn: Callable[[np.ndarray], np.ndarray], on_fault: Callable[[], None]) -> Callable[[np.ndarray], np.ndarray]:
    """``fn``, but the values as they came (and ``on_fault()``) when it raises or returns
    another shape: a plugin's kernel never stops a tick."""
    def call(values: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(fn(values), np.float32)
            if out.shape == values.shape:
                return out
        except Exception:  # noqa: BLE001 - a plugin's bug, counted by on_fault
            pass
        on_fault()
        return values
    return call


def transform(records: np.ndarray, kernel: Kernel, state: KernelState) -> np.ndarray:
    """A copy of entity records with ``kernel`` applied to their values (e.g. ``clip``)."""
    out = np.array(records, dtype=ENTITY_DTYPE)
    state.ids = out["id"]
    out["value"] = kernel(out["value"].astype(np.float32), state)
    return out


@dataclass(frozen=True, slots=True)
class SyntheticChannel:
    """A simulated channel a config can declare: ``count`` entities with ids
    ``first_id .. first_id + count - 1`` whose values a kernel advances every tick."""

    channel: int
    count: int
    kernel: str = "random_walk"
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    first_id: int = 0
    initial: float = 0.0
    active_share: float = 1.0  # share of entities reported active (drawn once, seeded)

    def __post_init__(self) -> None:
        if not 0 <= self.channel <= 0xFF:
            raise ValueError(f"channel must be in [0, 255], got {self.channel}")
        if self.count < 0 or self.first_id < 0 or self.first_id + self.count > 1 << 32:
            raise ValueError("ids first_id .. first_id + count - 1 must fit in uint32")
        if not 0.0 <= self.active_share <= 1.0:
            raise ValueError("active_share must be in [0, 1]")


class SyntheticSource:
    """Generates a SyntheticChannel's records tick by tick. Deterministic: the same spec
    gives the same records for the same sequence of ticks, on any machine."""

    __slots__ = ("spec", "kernel", "state", "values", "_records")

    def __init__(self, spec: SyntheticChannel, registry: KernelRegistry | None = None) -> None:
        self.spec = spec
        self.kernel = (registry or KernelRegistry()).get(spec.kernel)
        rng = np.random.default_rng([spec.seed, spec.channel])
        ids = np.arange(spec.first_id, spec.first_id + spec.count, dtype=np.uint32)
        self.state = KernelState(rng, dict(spec.params), 0, ids)
        self.values = np.full(spec.count, spec.initial, np.float32)
        self._records = np.empty(spec.count, ENTITY_DTYPE)
        self._records["id"] = ids
        self._records["channel"] = spec.channel
        self._records["active"] = rng.random(spec.count) < spec.active_share

    def generate(self, tick: int) -> np.ndarray:
        """Advance to ``tick`` and return the records (a fresh ENTITY_DTYPE array)."""
        self.state.tick = tick
        values = self.kernel(self.values, self.state)
        if len(values) != self.spec.count:
            raise ValueError(f"kernel {self.spec.kernel!r} returned {len(values)} values")
        self.values = np.asarray(values, np.float32)
        out = self._records.copy()
        out["value"] = self.values
        return out


def generate(
    spec: SyntheticChannel, tick: int, registry: KernelRegistry | None = None
) -> np.ndarray:
    """Records of ``spec`` at ``tick``: a pure function of (spec, tick), computed by a fresh
    source replaying ticks 0..tick (O(tick): a running node or simulation keeps one
    :class:`SyntheticSource` per channel and calls ``generate(tick)`` on it instead)."""
    if tick < 0:
        raise ValueError(f"tick must be >= 0, got {tick}")
    src = SyntheticSource(spec, registry)
    for t in range(tick):
        src.generate(t)
    return src.generate(tick)
