"""A service's signature: how far, and which way, each of its metrics is from its own recent normal.

Why a baseline of its own rather than the detector's features: the diagnosis must read the same
signature whatever detector a bundle ships (its features, windows and transforms change with every
sweep), and it is trained offline on synthetic history where no detector runs. So each series keeps
an exponentially weighted mean and variance of its raw values, in time (``TAU_S``), updated only
while its service looks normal: a fault never becomes the normal it is measured against (a slow
creep would otherwise be absorbed while it grows).

The signature is the signed distance ``z = (x - mean) / spread`` of every platform metric the
service emits (a missing metric reads 0); ``features`` turns it into the classifier's input,
``sign(z) * log1p(|z|)``, so a fault twice as strong moves the input a little, not twice as far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.simulation.model import PLATFORM_METRICS

METRICS: tuple[str, ...] = PLATFORM_METRICS
"""The metrics a signature is made of, in this order (every metric the platform emits)."""

TAU_S = 1800.0
"""Time constant of the baselines (30 min): long against a fault's onset, short against a day."""
TREND_TAU_S = 3600.0
"""Time constant of each baseline's trend: the daily load cycle is followed, not lagged behind."""
HORIZON_S = 1800.0
"""A trend is extrapolated at most this far past the last normal row (a fault's time is skipped)."""
WARMUP_S = 900.0
"""A series gives no signature until it has been seen this long (its variance is not known yet)."""
QUIET_Z = 3.0
"""A service whose strongest |z| is below this is normal: its baselines learn from the row."""
MAX_FREEZE_S = 3 * 3600.0
"""A service away from normal longer than this has a new normal: its baselines learn again."""
REL_FLOOR = 0.02
"""The spread is at least 2% of the level: a near-constant series does not read its noise as a fault."""
ABS_FLOOR: dict[str, float] = {
    "error_rate": 0.002,
    "queue_depth": 1.0,
    "response_variability": 0.01,
    "cpu_util": 0.01,
    "memory_util": 0.01,
    "gpu_util": 0.01,
    "retrieval_hit_rate": 0.005,
    "retrieval_precision": 0.005,
}
"""Smallest spread per metric, in its unit: a queue that is always empty is not 10^6 sigmas off at 1."""
NO_TREND = frozenset({"memory_util", "retrieval_precision", "retrieval_hit_rate"})
"""Metrics that do not follow the load: a slope in them is a fault (a leak, an index going stale)."""
SLOW_TAU_S = 6 * 3600.0
"""Time constant of the ``NO_TREND`` metrics' baselines: a leak slower than ``TAU_S`` rises by less
than ``QUIET_Z`` spreads a row, so a 30-minute baseline learnt it as normal while it grew and the
leak's GC thrash then read as a slow service with normal memory (a latency creep's signature)."""


@dataclass
class _Series:
    level: float
    trend: float  # per second
    var: float
    first: float
    last: float  # the last row it learned from
    trended: bool = True

    def expected(self, ts: float) -> float:
        return self.level + self.trend * min(max(ts - self.last, 0.0), HORIZON_S)


@dataclass
class Baselines:
    """Per-series baselines (level, trend, variance) of every service it is shown, in time order."""

    series: dict[tuple[str, str], _Series] = field(default_factory=dict)
    away: dict[str, float] = field(default_factory=dict)  # service -> since when it is not quiet

    def signature(self, service: str, ts: float, values: Mapping[str, float]) -> np.ndarray:
        """The signed z of each of ``METRICS`` at ``ts`` (0 where unknown); learns if it is quiet."""
        z = np.zeros(len(METRICS))
        seen: list[tuple[_Series, float]] = []
        for j, metric in enumerate(METRICS):
            x = values.get(metric)
            if x is None or not math.isfinite(x):
                continue
            s = self.series.get((service, metric))
            if s is None:
                self.series[(service, metric)] = _Series(float(x), 0.0, 0.0, ts, ts, metric not in NO_TREND)
                continue
            seen.append((s, float(x)))
            if ts - s.first >= WARMUP_S:
                expected = s.expected(ts)
                floor = max(REL_FLOOR * abs(expected), ABS_FLOOR.get(metric, 0.0))
                z[j] = (x - expected) / math.sqrt(s.var + floor * floor)
        if strength(z) < QUIET_Z:
            self.away.pop(service, None)
        else:
            since = self.away.setdefault(service, ts)
            if ts - since < MAX_FREEZE_S:
                return z  # a fault is not learned as normal
        for s, x in seen:
            self._learn(s, ts, x)
        return z

    @staticmethod
    def _learn(s: _Series, ts: float, x: float) -> None:
        dt = max(ts - s.last, 0.0)
        age = max(ts - s.first, dt, 1e-9)
        # exact running moments while young (alpha = share of the time seen), then exponential
        alpha = max(1.0 - math.exp(-dt / (TAU_S if s.trended else SLOW_TAU_S)), dt / age)
        beta = 1.0 - math.exp(-dt / TREND_TAU_S)
        expected = s.expected(ts)
        error = x - expected
        level = expected + alpha * error
        if s.trended and dt > 0 and age > WARMUP_S:
            s.trend = (1.0 - beta) * s.trend + beta * (level - s.level) / dt
        s.level = level
        s.var = (1.0 - alpha) * (s.var + alpha * error * error)
        s.last = ts

    def forget(self, services: Sequence[str]) -> None:
        gone = set(services)
        for key in [k for k in self.series if k[0] in gone]:
            del self.series[key]
        for service in gone:
            self.away.pop(service, None)


def features(z: np.ndarray) -> np.ndarray:
    """The classifier's input from signatures (rows): sign(z) * log1p(|z|)."""
    return np.sign(z) * np.log1p(np.abs(z))


def strength(z: np.ndarray) -> float:
    """How far the service is from normal: its strongest |z|."""
    return float(np.max(np.abs(z), initial=0.0))


def top_metrics(z: np.ndarray, k: int = 3, minimum: float = QUIET_Z) -> tuple[tuple[str, float], ...]:
    """The ``k`` metrics furthest from normal (signed z, rounded), strongest first, above ``minimum``."""
    order = np.argsort(-np.abs(z))[:k]
    return tuple((METRICS[j], round(float(z[j]), 2)) for j in order if abs(z[j]) >= minimum)
