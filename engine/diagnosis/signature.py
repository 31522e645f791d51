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

Beside each row's signature the baselines keep how it developed: ``recent``, an exponentially
weighted mean in time (``RECENT_TAU_S``) of the latency metrics' z over every row, quiet or not.
A latency creep's first rows move latency alone, as noise does; what tells them apart is that a
creep has been pushing latency up for many minutes (its mean z is well above 0) where noise is a
one-off (its mean is near 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
"""The spread is at least 2% of the level: a near-constant series does not read its noise as a fault.
A series that was always exactly 0 (with no ``ABS_FLOOR``) has no spread at all: a value away from
0 then reads as 1/REL_FLOOR = 50 spreads, and 0 as none."""
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


RECENT: tuple[str, ...] = ("latency_p50_ms", "latency_p99_ms")
"""Metrics whose recent mean z is a signature's second part (``Baselines.signatures``)."""
RECENT_TAU_S = 1200.0
"""Time constant of that mean (20 min): a creep's minutes add up, a one-off row fades. Chosen by
cross-validation over the training seeds among 5-60 minutes and other metric sets (README)."""

RECENT_INDEX = np.array([METRICS.index(m) for m in RECENT], dtype=np.intp)
"""Where ``RECENT`` are in ``METRICS``."""


class Baselines:
    """Per-series baselines (level, trend, variance) of every service it is shown, in time order.

    Why arrays: the engine shows it every scored row of every service, and a loop over each row's
    metrics in Python cost more than everything else between an anomaly and its decision. A
    service owns one slot of ``state`` (a row of level, trend, variance, first and last time seen
    per metric; NaN times: never seen); a batch of rows is computed with numpy over all its
    services at once, in rounds where a service has several rows (its rows stay in order). Every
    figure is the one ``_learn``'s formulas give per series, bit for bit: the exponentials go
    through ``math.exp`` (numpy's vectorised exp differs from it in the last bit).
    """

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self._free: list[int] = []
        self.state = np.full((0, len(_FIELDS), len(METRICS)), np.nan)
        self.away = np.zeros(0)  # per slot: since when the service is not quiet (NaN: it is)
        self.recent = np.zeros((0, len(RECENT)))  # per slot: the mean z of ``RECENT``
        self.recent_at = np.zeros(0)  # per slot: the time of its last row (NaN: none yet)

    def baseline(self, service: str, metric: str) -> dict[str, float] | None:
        """One series' level, trend (per second), variance, first and last time; None if never seen."""
        slot = self.slots.get(service)
        j = METRICS.index(metric)
        if slot is None or math.isnan(self.state[slot, _FIRST, j]):
            return None
        return {name: float(self.state[slot, i, j]) for i, name in enumerate(_FIELDS)}

    def signature(
        self, service: str, ts: float, values: Mapping[str, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The signed z of each of ``METRICS`` at ``ts`` (0 where unknown), and the service's mean
        z of each of ``RECENT`` up to this row; learns if it is quiet."""
        row = np.array([[values.get(m, math.nan) for m in METRICS]], dtype=np.float64)
        z, recent = self.signatures([service], np.array([ts], dtype=np.float64), row)
        return z[0], recent[0]

    def signatures(
        self, services: Sequence[str], ts: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``signature`` of many rows at once (``values``: a row per entry of ``services``,
        ``METRICS`` columns, NaN where missing); a service's rows are taken in their order.
        Returns the z (a row per row, ``METRICS`` columns) and the recent means (``RECENT``)."""
        n = len(services)
        z = np.zeros((n, len(METRICS)))
        recent = np.zeros((n, len(RECENT)))
        get = self.slots.get
        slots = [get(s) for s in services]
        if None in slots:
            slots = [self._slot(s) for s in services]
        at = np.asarray(slots, dtype=np.intp)
        if len(set(slots)) == n:
            self._round(np.arange(n), at, ts, values, z, recent)
            return z, recent
        count: dict[int, int] = {}  # a service's second row learns from its first: a round each
        nth = []
        for slot in slots:
            count[slot] = k = count.get(slot, -1) + 1
            nth.append(k)
        rounds = np.asarray(nth)
        order = np.argsort(rounds, kind="stable")
        for rows in np.split(order, np.flatnonzero(np.diff(rounds[order])) + 1):
            self._round(rows, at, ts, values, z, recent)
        return z, recent

    def _round(
        self,
        rows: np.ndarray,
        at: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        out: np.ndarray,
        out_recent: np.ndarray,
    ) -> None:
        """Rows of distinct services: their signatures into ``out`` and ``out_recent``; the quiet
        ones learn."""
        slots, x = at[rows], values[rows]
        t = ts[rows]
        tc = t[:, None]
        state = self.state[slots]  # a copy, written back at the end
        level, trend, var, first, last = (state[:, i] for i in range(len(_FIELDS)))
        valid = np.isfinite(x)
        known = ~np.isnan(first)
        seen = valid & known
        with np.errstate(all="ignore"):  # entries of unseen series are computed, then dropped
            dt = np.maximum(tc - last, 0.0)
            expected = level + trend * np.minimum(dt, HORIZON_S)
            floor = np.maximum(REL_FLOOR * np.abs(expected), _ABS_FLOOR)
            spread = np.sqrt(var + floor * floor)
            spread = np.where(spread > 0, spread, REL_FLOOR * np.abs(x))  # a series always at 0
            z = np.where(seen & (tc - first >= WARMUP_S) & (spread > 0), (x - expected) / spread, 0.0)
        out[rows] = z
        out_recent[rows] = self._remember(slots, t, z[:, RECENT_INDEX])
        quiet = np.max(np.abs(z), axis=1, initial=0.0) < QUIET_Z
        away = self.away[slots]
        since = np.where(quiet, np.nan, np.where(np.isnan(away), t, away))
        self.away[slots] = since
        with np.errstate(invalid="ignore"):
            learn = seen & (quiet | (t - since >= MAX_FREEZE_S))[:, None]  # a fault is not learned
        if learn.any():
            _learn(state, learn, tc, x, dt, expected)
        new = valid & ~known  # a series seen for the first time starts at its value
        if new.any():
            np.copyto(level, x, where=new)
            np.copyto(trend, 0.0, where=new)
            np.copyto(var, 0.0, where=new)
            np.copyto(first, tc, where=new)
            np.copyto(last, tc, where=new)
        self.state[slots] = state

    def _remember(self, slots: np.ndarray, t: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The slots' recent means moved towards ``z`` at ``t`` (and stored): with ``dt`` the time
        since the service's last row, ``mean' = mean + (1 - exp(-dt / RECENT_TAU_S)) * (z - mean)``
        (its first row: ``mean' = z``)."""
        since = self.recent_at[slots]
        later = ~np.isnan(since)
        gaps = np.maximum(t[later] - since[later], 0.0)
        weight = np.ones((len(slots), 1))
        weight[later, 0] = 1.0 - _exps(gaps, (RECENT_TAU_S,))[:, 0]
        mean = self.recent[slots]
        mean = mean + weight * (z - mean)
        self.recent[slots] = mean
        self.recent_at[slots] = t
        return mean

    def _slot(self, service: str) -> int:
        slot = self.slots.get(service)
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self.slots)
            if slot >= len(self.away):
                size = max(8, 2 * len(self.away))
                state = np.full((size, *self.state.shape[1:]), np.nan)
                state[: len(self.state)] = self.state
                away = np.full(size, np.nan)
                away[: len(self.away)] = self.away
                recent = np.zeros((size, len(RECENT)))
                recent[: len(self.recent)] = self.recent
                recent_at = np.full(size, np.nan)
                recent_at[: len(self.recent_at)] = self.recent_at
                self.state, self.away, self.recent, self.recent_at = state, away, recent, recent_at
        self.slots[service] = slot
        return slot

    def forget(self, services: Sequence[str]) -> None:
        for service in services:
            slot = self.slots.pop(service, None)
            if slot is not None:
                self.state[slot] = np.nan
                self.away[slot] = np.nan
                self.recent[slot] = 0.0
                self.recent_at[slot] = np.nan
                self._free.append(slot)


_FIELDS = ("level", "trend", "var", "first", "last")
_FIRST = _FIELDS.index("first")
_ABS_FLOOR = np.array([ABS_FLOOR.get(m, 0.0) for m in METRICS])
_TRENDED = np.array([m not in NO_TREND for m in METRICS])


def _learn(
    state: np.ndarray, learn: np.ndarray, tc: np.ndarray, x: np.ndarray, dt: np.ndarray, expected: np.ndarray
) -> None:
    """The series where ``learn`` learn from ``x`` at ``tc``, ``dt`` after they last did, ``age``
    after they were first seen (in place, in ``state``)::

        alpha = max(1 - exp(-dt / tau), dt / age)  # exact moments while young, then exponential
        beta = 1 - exp(-dt / TREND_TAU_S)
        error = x - expected;  level' = expected + alpha * error
        trend' = (1 - beta) * trend + beta * (level' - level) / dt  # trended, dt > 0, age > WARMUP_S
        var' = (1 - alpha) * (var + alpha * error * error)

    ``tau`` is ``TAU_S``, or ``SLOW_TAU_S`` for the ``NO_TREND`` metrics."""
    level, trend, var, first, last = (state[:, i] for i in range(len(_FIELDS)))
    decay, trend_decay = _decays(dt, learn)
    with np.errstate(all="ignore"):
        age = np.maximum(np.maximum(tc - first, dt), 1e-9)
        alpha = np.maximum(1.0 - decay, dt / age)
        beta = 1.0 - trend_decay
        error = x - expected
        new_level = expected + alpha * error
        steer = learn & _TRENDED & (dt > 0) & (age > WARMUP_S)
        np.copyto(trend, (1.0 - beta) * trend + beta * (new_level - level) / dt, where=steer)
        np.copyto(var, (1.0 - alpha) * (var + alpha * error * error), where=learn)
    np.copyto(level, new_level, where=learn)
    np.copyto(last, tc, where=learn)


def _decays(dt: np.ndarray, learn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``exp(-dt / tau)`` per metric and ``exp(-dt / TREND_TAU_S)`` where ``learn`` (1 elsewhere)."""
    each = _exps(dt[learn], (TAU_S, SLOW_TAU_S, TREND_TAU_S))
    decay, trend_decay = np.ones(dt.shape), np.ones(dt.shape)
    decay[learn] = np.where(np.broadcast_to(_TRENDED, dt.shape)[learn], each[:, 0], each[:, 1])
    trend_decay[learn] = each[:, 2]
    return decay, trend_decay


def _exps(gaps: np.ndarray, taus: tuple[float, ...]) -> np.ndarray:
    """``exp(-gap / tau)`` for each of ``gaps`` (rows) and ``taus`` (columns), with ``math.exp``
    once per distinct gap: a tick's rows share one or a few."""
    if len(gaps) and gaps.min() == gaps.max():
        d = float(gaps[0])
        return np.broadcast_to(np.array([math.exp(-d / tau) for tau in taus]), (len(gaps), len(taus)))
    distinct, inverse = np.unique(gaps, return_inverse=True)
    table = np.array([[math.exp(-d / tau) for tau in taus] for d in distinct.tolist()])
    return table.reshape(-1, len(taus))[inverse]


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
