"""The scoring stage: a tick's points in, feature rows and their scores out, one micro-batch.

One stage for every place that scores: the engine (in its own process or in each scoring worker,
``engine.runtime.shards``) and shadow replay (``engine.chaos.replay``), so the three cannot drift.

The detector seam is ``RowScorer`` and ``ScoringStage.score`` is the one call to it: whatever
detector a bundle ships (today ``engine.detectors.pipeline.ScoringPipeline``) is called there and
nowhere else. Points become feature rows through the stage's online features (``push``).

Hostile input costs only itself: a row the detector cannot score (a feature that overflowed to
infinity, a value the model refuses) is refused alone, with its reason, and the rest of the tick is
scored. Rows with non-finite features never reach the detector; if it still refuses a batch, the
batch is split in halves until the rows it refuses are found (a handful of extra calls, only when
something is wrong).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)

Batch = tuple[
    float, Any
]  # (perf_counter of arrival, points: list of (ts, service, metric, value) or columns)


@runtime_checkable
class RowScorer(Protocol):
    """The detector as the scoring stage calls it: feature rows in, calibrated scores out.

    ``feature_spec`` says which features to build from points; ``threshold_`` separates anomalous
    scores (strictly above) from normal ones; ``detector`` names it in events and the journal.
    """

    detector: str
    feature_spec: Any
    threshold_: float

    @property
    def feature_names(self) -> list[str]: ...
    def score_rows(self, rows: Sequence[Any]) -> np.ndarray: ...


@runtime_checkable
class OnlineFeaturesLike(Protocol):
    def push(self, ts: float, service: str, metric: str, value: float) -> list[Any]: ...
    def forget(self, services: Iterable[str]) -> None: ...


@dataclass(frozen=True)
class Refused:
    """A feature row the stage could not score: its service and time, and why (for the dead letter)."""

    service: str
    ts: float
    reason: str
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "ts": self.ts, "reason": self.reason, "values": list(self.values)}


@dataclass
class Scored:
    """One tick through the stage: the scored rows in push order, with their scores and arrivals."""

    rows: list[Any] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    arrivals: list[float] = field(default_factory=list)
    points: int = 0
    latest: dict[tuple[str, str], float] = field(default_factory=dict)  # last value of each series
    refused: list[Refused] = field(default_factory=list)
    seconds: float = 0.0  # spent in the detector


class ScoringStage:
    """Online features and the detector; ``step`` scores one tick. One owner (not thread-safe)."""

    def __init__(self, scorer: RowScorer, features: OnlineFeaturesLike | None = None) -> None:
        if features is None:
            from engine.features import OnlineFeatures

            features = OnlineFeatures(scorer.feature_spec)
        self.scorer = scorer
        self.features = features

    def step(self, batches: Sequence[Batch]) -> Scored:
        """Push a tick's points in order, then score every feature row they closed as one batch."""
        push = self.features.push
        rows: list[Any] = []
        arrivals: list[float] = []
        latest: dict[tuple[str, str], float] = {}
        n = 0
        for arrival, points in batches:
            n += len(points)
            for ts, service, metric, value in points:
                latest[(service, metric)] = value
                closed = push(ts, service, metric, value)
                if closed:
                    rows.extend(closed)
                    arrivals.extend([arrival] * len(closed))
        out = Scored(points=n, latest=latest)
        if rows:
            started = time.perf_counter()
            out.rows, out.scores, out.arrivals, out.refused = self.score(rows, arrivals)
            out.seconds = time.perf_counter() - started
        return out

    def forget(self, services: Iterable[str]) -> None:
        """Drop the feature state of idle services (the engine's eviction, ``engine.runtime.intake``)."""
        self.features.forget(services)

    def score(
        self, rows: list[Any], arrivals: list[float]
    ) -> tuple[list[Any], np.ndarray, list[float], list[Refused]]:
        """Score ``rows``; those that cannot be scored are refused alone (module docstring)."""
        X = np.asarray([r.values for r in rows], dtype=np.float64)
        finite = np.isfinite(X).all(axis=1)
        refused: list[Refused] = []
        if not finite.all():
            names = self.scorer.feature_names
            for i in np.flatnonzero(~finite):
                bad = [names[j] for j in np.flatnonzero(~np.isfinite(X[i]))]
                refused.append(_refused(rows[i], f"non-finite feature value(s): {', '.join(bad)}"))
            keep = np.flatnonzero(finite).tolist()
            rows = [rows[i] for i in keep]
            arrivals = [arrivals[i] for i in keep]
        if not rows:
            return [], np.empty(0), [], refused
        ok = [True] * len(rows)
        parts = self._try(rows, 0, ok, refused)
        if all(ok):
            return rows, parts[0], arrivals, refused
        kept = [i for i, good in enumerate(ok) if good]
        scores = np.concatenate(parts) if parts else np.empty(0)
        return [rows[i] for i in kept], scores, [arrivals[i] for i in kept], refused

    def _try(self, rows: list[Any], offset: int, ok: list[bool], refused: list[Refused]) -> list[np.ndarray]:
        """Scores of ``rows`` (``rows[k]`` is row ``offset + k`` of the tick) in order, as parts;
        when the detector refuses them, the halves are tried until the rows at fault are found."""
        try:
            return [np.asarray(self.scorer.score_rows(rows), dtype=np.float64)]
        except Exception as exc:
            if len(rows) == 1:
                ok[offset] = False
                refused.append(_refused(rows[0], f"the detector refused the row: {exc}"))
                log.warning("%s at %s: the detector refused the row: %s", rows[0].service, rows[0].ts, exc)
                return []
        half = len(rows) // 2
        return self._try(rows[:half], offset, ok, refused) + self._try(
            rows[half:], offset + half, ok, refused
        )


def _refused(row: Any, reason: str) -> Refused:
    return Refused(str(row.service), float(row.ts), reason, tuple(float(v) for v in row.values))
