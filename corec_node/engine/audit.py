"""Audit: IsolationForest over block aggregates, to flag blocks that look unlike the rest.

Pure but for scikit-learn: no sockets, no asyncio, no clock (ticks are the only time), no
files. Deterministic: the same rows and ticks give the same fits and findings.

What it looks at, per block row (a dict of ``aggregate_rows`` or an ``AGGREGATE_DTYPE``
row): ``count``, ``active`` share, ``mean``, ``std``, ``min``, ``max``, ``error_rate``,
``fitness``. Channels measure different things on different scales (a temperature, a
pressure), so every feature is normalized *per channel* with a robust centre and spread
(median, MAD) taken from the window the model was fitted on; one forest then covers every
channel. A block whose channel was not in the fitted window is not scored (no baseline).

How the shell uses it (CPU-heavy: a fit is ~0.1-0.5 s, a score ~10-50 ms for 1,000 blocks,
so from a worker thread, one caller at a time; an Auditor is not thread-safe)::

    findings, records = await asyncio.to_thread(auditor.step, rows, tick)
    for rec in records + [f.record() for f in findings]:
        log.event("audit", kind=rec.kind, subject=rec.subject, reason=rec.reason, tick=rec.tick)
        await local_store.add_audit(rec.kind, rec.subject, rec.reason, details=rec.details)

Rules:
1. ``score`` judges rows against the model fitted on *earlier* ticks; ``step`` scores first
   and observes after, so an anomaly never trains the model that judges it.
2. The window is bounded in ticks (``window``) and rows (``max_window_rows``): memory does
   not grow with uptime.
3. A refit happens on ``observe`` when ``refit_every`` ticks passed since the last fit (and
   the first time ``min_rows`` rows are in the window). Each refit and each flag returns an
   :class:`AuditRecord` for the node's audit log.
4. ``step`` keeps the rows it flagged out of the window when they are few (at most
   MIN_UNLEARNED, or MAX_UNLEARNED_SHARE of the tick): a block that stays sick never becomes the baseline, and is
   flagged tick after tick (which is what :class:`AlertGate` waits for). When many blocks
   change at once, that is a new normal, and it is learned.
5. Data at rest costs little: rows the same model scored last time (the same features,
   blocks and channels, by a digest) get the same findings again, stamped with the new
   tick, without the forest (~20 ms for 2,500 rows; the digest ~0.2 ms).
6. A refit that falls due over a window holding the very rows the model was fitted on (the
   same set of ticks' rows as ``step`` was given them, by digest, however many ticks of
   each: a busy node skips the audit of a tick now and then) is skipped: data at rest is
   fitted once, not every ``refit_every`` ticks (~0.3 s for 75,000 rows). The rows are
   compared before rule 4 keeps flagged ones out, so a model that flags other rows than
   the one before does not make the window look new; the next refit is due
   ``refit_every`` ticks later.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURES = ("count", "active_share", "mean", "std", "min", "max", "error_rate", "fitness")
"""Columns of the feature vector, in order."""

MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its standard deviation
Z_CLIP = 50.0  # normalized features are clipped here: order is kept, and no inf reaches sklearn
RANGE_MARGIN = 4.0  # robust sigmas beyond anything in the fitted window that flag a block on their own
RANGE_SCORE = 0.01  # score added per robust sigma beyond the window's range
MAX_UNLEARNED_SHARE = 0.05  # flagged rows up to this share of a tick stay out of the window (rule 4) ...
MIN_UNLEARNED = 3  # ... or up to this many, so a node with few blocks keeps a sick one out too
MIN_SPREAD_REL = 1e-3  # a feature with no spread in the window gets this share of |centre| as spread ...
MIN_SPREAD_ABS = 1e-6  # ... and at least this, so a constant feature still scales finitely


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit decision, shaped for ``LocalStore.add_audit(kind, subject, reason, details=)``."""

    kind: str  # "audit_refit" | "audit_flag"
    subject: str  # "model", or "block <channel>:<number>"
    reason: str
    tick: int
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """A block judged anomalous. ``score`` > 0; higher is stranger (sklearn's
    ``-decision_function``: the offset set by ``contamination`` is 0)."""

    block: int
    channel: int
    score: float
    reason: str
    tick: int
    deviations: Mapping[str, float] = field(default_factory=dict)  # feature -> robust z-score

    def record(self) -> AuditRecord:
        return AuditRecord(
            kind="audit_flag",
            subject=f"block {self.channel}:{self.block & 0xFFFFFFFF}",
            reason=self.reason,
            tick=self.tick,
            details={"block": self.block, "channel": self.channel, "score": round(self.score, 6),
                     "deviations": {k: round(v, 3) for k, v in self.deviations.items()}},
        )

    def alert(self) -> dict[str, Any]:
        """The finding as an alert dict (``node.raise_alert``'s fields)."""
        return {"kind": "audit_anomaly", "text": f"block {self.channel}:{self.block & 0xFFFFFFFF}: {self.reason}",
                "severity": "warning", "block": self.block, "channel": self.channel, "tick": self.tick,
                "score": round(self.score, 6)}


def _digest(*arrays: np.ndarray) -> bytes:
    """What rule 5 compares: the arrays' bytes, shapes and types, hashed."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()


def features(rows: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, blocks, channels)`` from aggregate rows: dicts (None or NaN for missing
    statistics) or an ``AGGREGATE_DTYPE`` array. X is float64 (n, len(FEATURES)), NaN
    where a statistic is missing."""
    if isinstance(rows, np.ndarray) and rows.dtype.names is not None:
        cols = {k: np.asarray(rows[k], np.float64) for k in ("count", "active", "mean", "std", "min", "max", "error_rate", "fitness")}
        blocks = np.asarray(rows["block"], np.int64)
        channels = np.asarray(rows["channel"], np.int64)
    else:
        rows = list(rows)
        n = len(rows)
        blocks = np.fromiter((r["block"] for r in rows), np.int64, n)
        channels = np.fromiter((r["channel"] for r in rows), np.int64, n)
        cols = {}
        for k in ("count", "active", "mean", "std", "min", "max", "error_rate", "fitness"):
            cols[k] = np.fromiter((np.nan if r.get(k) is None else r[k] for r in rows), np.float64, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = cols["active"] / np.maximum(cols["count"], 1.0)
    X = np.column_stack([cols["count"], share, cols["mean"], cols["std"], cols["min"], cols["max"],
                         cols["error_rate"], cols["fitness"]])
    return X, blocks, channels


class _Scaler:
    """Per-channel robust centre and spread of each feature, and the range of the
    normalized window (what the forest saw)."""

    __slots__ = ("center", "hi", "lo", "spread")

    def __init__(self, X: np.ndarray, channels: np.ndarray) -> None:
        self.center: dict[int, np.ndarray] = {}
        self.spread: dict[int, np.ndarray] = {}
        self.lo: dict[int, np.ndarray] = {}
        self.hi: dict[int, np.ndarray] = {}
        for ch in np.unique(channels).tolist():
            sub = X[channels == ch]
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: centre NaN, handled below
                c = np.nanmedian(sub, axis=0)
                s = np.nanmedian(np.abs(sub - c), axis=0) * MAD_TO_SIGMA
            c = np.where(np.isnan(c), 0.0, c)
            floor = np.maximum(np.abs(c) * MIN_SPREAD_REL, MIN_SPREAD_ABS)
            s = np.where(np.isnan(s) | (s < floor), floor, s)
            self.center[ch], self.spread[ch] = c, s
            z = self._z(sub, c, s)
            self.lo[ch], self.hi[ch] = z.min(axis=0), z.max(axis=0)

    @staticmethod
    def _z(X: np.ndarray, c: np.ndarray, s: np.ndarray) -> np.ndarray:
        z = (X - c) / s
        return np.nan_to_num(z, nan=0.0, posinf=1e9, neginf=-1e9)  # missing statistic: at the centre

    def transform(self, X: np.ndarray, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Z, known, excess)``: robust z-scores (unclipped), a mask of the rows whose
        channel has a baseline, and how far (in robust sigmas) each row lies beyond the
        window's range on its most extreme feature."""
        Z = np.zeros_like(X)
        excess = np.zeros(len(X))
        known = np.zeros(len(X), bool)
        for ch in np.unique(channels).tolist():
            if ch not in self.center:
                continue
            m = channels == ch
            z = self._z(X[m], self.center[ch], self.spread[ch])
            Z[m] = z
            excess[m] = np.maximum(np.maximum(z - self.hi[ch], self.lo[ch] - z), 0.0).max(axis=1)
            known |= m
        return Z, known, excess


class Auditor:
    """Flags anomalous blocks with an IsolationForest refitted on a sliding window.

    :param contamination: expected share of anomalous rows (sklearn's meaning), or "auto".
    :param refit_every: ticks between two fits.
    :param random_state: seed of the forest (same seed, same data -> same model).
    :param window: ticks of rows kept for fitting.
    :param min_rows: rows needed before the first fit.
    :param max_window_rows: cap on rows kept (oldest ticks dropped first).
    :param n_estimators, max_samples: the forest's size (sklearn's meaning).
    """

    def __init__(
        self,
        contamination: float | str = 0.01,
        refit_every: int = 10,
        random_state: int = 0,
        *,
        window: int = 30,
        min_rows: int = 200,
        max_window_rows: int = 200_000,
        n_estimators: int = 100,
        max_samples: int = 256,
        range_margin: float = RANGE_MARGIN,
    ) -> None:
        if refit_every < 1 or window < 1:
            raise ValueError("refit_every and window must be >= 1")
        if contamination != "auto" and not 0.0 < float(contamination) <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5] or 'auto', got {contamination!r}")
        self.contamination = contamination
        self.refit_every = refit_every
        self.random_state = random_state
        self.window = window
        self.min_rows = min_rows
        self.max_window_rows = max_window_rows
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.range_margin = range_margin
        self._ticks: collections.deque[tuple[int, np.ndarray, np.ndarray, bytes]] = collections.deque()
        self._fitted_window: frozenset[bytes] | None = None  # the ticks' digests at the last fit (rule 6)
        self._rows = 0
        self.model: Any = None
        self.scaler: _Scaler | None = None
        self.fitted_tick: int | None = None
        self.fits = 0
        self._scored: tuple[Any, bytes, list[AuditFinding]] | None = None  # model, rows' digest, findings

    @property
    def window_rows(self) -> int:
        return self._rows

    def observe(self, rows: Any, tick: int) -> list[AuditRecord]:
        """Add a tick's rows to the window; refit when due. Returns the refit record, if any."""
        X, blocks, channels = features(rows)
        return self._observe(X, channels, tick, _digest(X, channels, blocks))

    def _observe(self, X: np.ndarray, channels: np.ndarray, tick: int, digest: bytes) -> list[AuditRecord]:
        """``observe`` on features; ``digest`` names the tick's rows for rule 6."""
        if len(X):
            self._ticks.append((tick, X, channels, digest))
            self._rows += len(X)
        while self._ticks and (tick - self._ticks[0][0] >= self.window or self._rows > self.max_window_rows):
            _, old, _, _ = self._ticks.popleft()
            self._rows -= len(old)
        due = self.model is None or tick - (self.fitted_tick or 0) >= self.refit_every
        if not due or self._rows < self.min_rows:
            return []
        window = frozenset(d for _, _, _, d in self._ticks)
        if self.model is not None and window == self._fitted_window:  # rule 6
            self.fitted_tick = tick
            return []
        self._fitted_window = window
        return [self._fit(tick)]

    @staticmethod
    def preload() -> None:
        """Import the model's library now (about 85 MB and a second): the shell does it in a
        worker thread at start, so memory is what it will be from the start and the first
        fit does not wait for it."""
        import sklearn.ensemble  # noqa: F401

    def _fit(self, tick: int) -> AuditRecord:
        from sklearn.ensemble import (
            IsolationForest,  # heavy import: preloaded at start, else the first fit's thread pays it
        )

        X = np.concatenate([x for _, x, _, _ in self._ticks])
        channels = np.concatenate([c for _, _, c, _ in self._ticks])
        scaler = _Scaler(X, channels)
        Z, _, _ = scaler.transform(X, channels)
        np.clip(Z, -Z_CLIP, Z_CLIP, out=Z)
        model = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, len(Z)),
            contamination=self.contamination,
            random_state=self.random_state,
        )
        model.fit(Z)
        self.model, self.scaler, self.fitted_tick = model, scaler, tick
        self.fits += 1
        first = self._ticks[0][0]
        return AuditRecord(
            kind="audit_refit",
            subject="model",
            reason=f"IsolationForest refit #{self.fits} on {len(Z)} rows of ticks {first}..{tick}",
            tick=tick,
            details={"rows": len(Z), "first_tick": int(first), "last_tick": int(tick),
                     "channels": sorted(int(c) for c in scaler.center), "contamination": self.contamination,
                     "n_estimators": self.n_estimators, "random_state": self.random_state},
        )

    def score(self, rows: Any, tick: int | None = None) -> list[AuditFinding]:
        """The rows the current model calls anomalous, strangest first (empty before the
        first fit). ``tick`` stamps the findings (default: the rows' own ``tick``)."""
        if self.model is None or self.scaler is None:
            return []
        X, blocks, channels = features(rows)
        if not len(X):
            return []
        if tick is None:
            tick = _row_tick(rows)
        return self._judged(X, blocks, channels, int(tick), _digest(X, channels, blocks))

    def _judged(self, X: np.ndarray, blocks: np.ndarray, channels: np.ndarray, tick: int,
                digest: bytes) -> list[AuditFinding]:
        """``score`` on features, ``digest`` naming them (rule 5)."""
        if self.model is None or self.scaler is None or not len(X):
            return []
        memo = self._scored
        if memo is not None and memo[0] is self.model and memo[1] == digest:  # rule 5
            return [dataclasses.replace(f, tick=int(tick)) for f in memo[2]]
        findings = self._score(X, blocks, channels, int(tick))
        self._scored = (self.model, digest, findings)
        return findings

    def _score(self, X: np.ndarray, blocks: np.ndarray, channels: np.ndarray, tick: int) -> list[AuditFinding]:
        assert self.model is not None and self.scaler is not None
        Z, known, excess = self.scaler.transform(X, channels)
        if not known.any():
            return []
        idx = np.flatnonzero(known)
        scores = -self.model.decision_function(np.clip(Z[idx], -Z_CLIP, Z_CLIP))
        beyond = excess[idx]
        out_of_range = beyond > self.range_margin
        flagged = np.flatnonzero((scores > 0) | out_of_range)
        combined = np.maximum(scores, 0.0) + RANGE_SCORE * np.minimum(beyond, Z_CLIP)
        out = []
        for j in flagged[np.argsort(-combined[flagged], kind="stable")].tolist():
            i = int(idx[j])
            z = Z[i]
            top = np.argsort(-np.abs(z), kind="stable")[:3]
            devs = {FEATURES[k]: float(np.clip(z[k], -1e6, 1e6)) for k in top.tolist() if abs(z[k]) >= 1.0}
            reason = ", ".join(f"{name} {v:+.1f} sigma" for name, v in devs.items()) or "an unusual mix of features"
            where = "beyond the range of" if out_of_range[j] else "against"
            out.append(AuditFinding(
                block=int(blocks[i]), channel=int(channels[i]), score=float(combined[j]),
                reason=f"{reason} {where} channel {int(channels[i])}'s recent blocks", tick=int(tick), deviations=devs,
            ))
        return out

    def step(self, rows: Any, tick: int) -> tuple[list[AuditFinding], list[AuditRecord]]:
        """Score ``rows`` against the model of earlier ticks, then add them to the window
        (without the flagged ones, when they are few: rule 4). Returns the findings and the
        decision records (refits, then one per flag)."""
        X, blocks, channels = features(rows)
        digest = _digest(X, channels, blocks)
        findings = self._judged(X, blocks, channels, int(tick), digest)
        flagged = {f.block for f in findings}
        if flagged and len(flagged) <= max(MIN_UNLEARNED, MAX_UNLEARNED_SHARE * len(X)):
            learn = ~np.isin(blocks, np.fromiter(flagged, np.int64))
            X, channels = X[learn], channels[learn]
        records = self._observe(X, channels, tick, digest)  # the digest of all the rows: rule 6
        return findings, records + [f.record() for f in findings]


class AlertGate:
    """Which findings deserve an alert: a block flagged with a score of at least
    ``min_score`` in ``persist`` of the last ``persist + 1`` audits, once per episode.

    An anomaly model flags a share of healthy rows on every tick (about ``contamination``
    of them, by construction): alerting on each finding would raise alerts every second on
    a healthy cluster. Those flags score low (at most ~0.05 in the tests' healthy windows;
    a shifted, dead, erroring or noisy block scores ~0.5), and a block flagged audit after
    audit is not chance (one miss is allowed: a sick block near the threshold flickers).
    An alerted block is not alerted again until it has gone ``calm`` audits unflagged
    (its episode is over; ``persist`` unless told). Pure; memory is bounded by the blocks
    flagged lately. ``engine.anomaly`` gates forecast anomalies with it (persist 1: a spike
    is one tick; a long calm: a block flickering near its threshold is one episode).
    """

    def __init__(self, persist: int = 3, min_score: float = 0.1, calm: int | None = None) -> None:
        if persist < 1 or (calm is not None and calm < 1):
            raise ValueError(f"persist and calm must be >= 1, got {persist}, {calm}")
        self.persist = persist
        self.window = persist + 1
        self.calm = persist if calm is None else calm
        self.min_score = min_score
        self._audits = 0
        self._flags: dict[int, collections.deque[int]] = {}  # block -> audits it was flagged in, lately
        self._episodes: dict[int, int] = {}  # alerted block -> the last audit that flagged it
        self.suppressed = 0  # findings that raised no alert (chance, or an episode already alerted)

    def step(self, findings: Sequence[AuditFinding]) -> list[AuditFinding]:
        """The findings of one audit -> those to alert now (strangest first)."""
        self._audits += 1
        now = self._audits
        flagged = {f.block: f for f in findings if f.score >= self.min_score}
        self.suppressed += len(findings) - len(flagged)
        out = []
        for block, finding in flagged.items():
            seen = self._flags.setdefault(block, collections.deque(maxlen=self.persist))
            seen.append(now)
            if block in self._episodes:  # an alerted episode goes on
                self._episodes[block] = now
            elif len(seen) == self.persist and now - seen[0] < self.window:
                self._episodes[block] = now
                out.append(finding)
                continue
            self.suppressed += 1
        for block in [b for b, seen in self._flags.items() if now - seen[-1] >= self.window]:
            del self._flags[block]
        for block in [b for b, last in self._episodes.items() if now - last >= self.calm]:
            del self._episodes[block]
        return sorted(out, key=lambda f: -f.score)


def _row_tick(rows: Sequence[Any] | np.ndarray) -> int:
    if isinstance(rows, np.ndarray):
        return int(rows["tick"][0]) if len(rows) else 0
    for r in rows if isinstance(rows, Iterable) else ():
        return int(r.get("tick") or 0)
    return 0


class LoadGate:
    """Whether this tick's rows are worth auditing: not while the node is still loading new
    entities. Blocks that are filling up change every tick and all at once, so they are no
    baseline and their flags are noise, and a fit or a score then only takes CPU from the
    load itself (the audit costs about the same whatever the records, so a cluster of more
    nodes would pay it more times over). A tick whose entity count grew by more than
    ``growth`` of it since the last call is a loading tick; after ``max_wait``
    loading ticks in a row the audit runs anyway, so a node that never stops growing is
    still audited. Updates to known entities never make a tick a loading one. Pure."""

    def __init__(self, growth: float = 0.01, max_wait: int = 30) -> None:
        self.growth = growth
        self.max_wait = max_wait
        self._last = 0
        self._waited = 0
        self.skipped = 0  # audits not run because the node was loading

    def settled(self, entities: int) -> bool:
        """Call before an audit with the entities the node holds; True: audit now."""
        grew = entities - self._last > self.growth * max(entities, 1)
        self._last = entities
        if not grew or self._waited >= self.max_wait:
            self._waited = 0
            return True
        self._waited += 1
        self.skipped += 1
        return False
