"""Shared machinery of the stateful detectors (forecasting and drift): rows are consecutive buckets.

A *sequence detector* reads X as consecutive time buckets of one entity (one service): row i+1 is
the bucket after row i, columns are that service's series. ``fit`` learns constants (scales, bin
edges) from the history and leaves the detector in the state reached at the end of it; ``score``
continues from there and advances the state row by row, so the live engine can call it on each new
row and an offline evaluation on a whole test period, with identical numbers.

Every state here has *finite memory*: it is a pure function of the last ``memory_rows`` rows (a ring
buffer of at most one season plus the detector's windows) and of the constants frozen at fit. Three
properties follow, and the conformance suite checks the first two:

* batch == one row at a time (each row's arithmetic is elementwise, in a fixed order, whatever the
  batch size: window sums are explicit adds, never a reduction numpy may reorder);
* save/load/replay: a detector that has seen the same last ``memory_rows`` rows is in the same state,
  so a restarted engine that replays one memory of history scores exactly as the one it replaces;
* no look-ahead: a row's score uses that row and earlier ones only.

Two deliberate exceptions to strict finite memory: a value clipped by the ``SeasonalBuffer``
cleaning carries its forecast into the next season (on normal data nothing is clipped and the
buffer is the raw last season), and the CUSUM sums of ``engine.detectors.drift`` carry over until
they return to zero, which forgets everything before.

They are ``stateful``: not for the stream detector's shared model slot (an experiment's sweep),
which fits one model per role on the rows of all its services and scores any batch of rows. Drive
sequence detectors per service on contiguous rows (``engine.evaluation.families`` does, and a
stream detector that refits per series does), and calibrate on ``train_scores_`` (the one-step-ahead
scores of the fit pass, for the rows after ``n_warmup_``).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import check_matrix, checked_input
from engine.detectors.core_constraints import (
    Constraint,
    InstanceOf,
    Interval,
    IsNone,
    Options,
    ParamsMixin,
)
from engine.errors import DetectorError, DetectorParamError

__all__ = [
    "INT_GE0",
    "INT_GE1",
    "POSITIVE",
    "SEASON_CONSTRAINT",
    "TAILS",
    "TAIL_CONSTRAINT",
    "SeasonalBuffer",
    "SequenceDetector",
    "max_over_columns",
    "robust_scale",
    "tail_transform",
    "window_mean",
]

log = logging.getLogger(__name__)

TAILS = ("both", "upper", "lower")
"""Which deviations count: both directions, only increases, or only decreases."""

INT_GE1 = Interval(Integral, 1, None, "left")
INT_GE0 = Interval(Integral, 0, None, "left")
TAIL_CONSTRAINT: tuple[Constraint, ...] = (Options(str, frozenset(TAILS)), InstanceOf(dict))
SEASON_CONSTRAINT: tuple[Constraint, ...] = (IsNone(), INT_GE1)
POSITIVE = Interval(Real, 0, None, "neither")


def window_mean(a: np.ndarray, width: int, n: int) -> np.ndarray:
    """``out[i] = mean(a[i : i + width])`` for i < n, summed left to right in every case.

    An explicit elementwise loop rather than a reduction: numpy may sum a strided reduction in
    another order depending on the array's shape, and then one row would not equal a batch bitwise.
    """
    total = a[0:n].copy()
    for j in range(1, width):
        total += a[j : j + n]
    return total / width


class SeasonalBuffer:
    """One season of (cleaned) rows and the seasonal-naive forecast they give: the forecasters' memory.

    The forecast of row t is the mean of rows t-season .. t-season+smooth-1. What is stored for row
    t is the row itself, *cleaned*: a value whose residual exceeds ``clip`` residual scales is
    stored as forecast +- clip * scale (the robust Holt-Winters cleaning of Gelper, Fried and Croux,
    2010). Without it, an incident today becomes tomorrow's forecast and its recovery raises a false
    alarm one season later (the "echo"); with it, the echo is at most ``clip`` scales. A value that is
    not clipped is stored exactly, so on normal data the buffer holds the raw last season.

    Rows are processed in chunks of ``season - smooth + 1``: within one, every forecast reads only
    rows stored before the chunk, so a chunk is vectorised and still equals one row at a time.
    """

    def __init__(self, season: int, smooth: int = 1, clip: float | None = None) -> None:
        self.season = season
        self.smooth = smooth
        self.clip = clip
        self.scale: np.ndarray | None = None

    def start(self, rows: np.ndarray) -> np.ndarray:
        """Take the first season of ``rows`` as the buffer; return the rows after it."""
        self.rows = rows[: self.season].copy()
        return rows[self.season :]

    def residuals(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` minus their seasonal forecasts, in order; advances (and cleans) the buffer."""
        n = rows.shape[0]
        out = np.empty_like(rows)
        step = self.season - self.smooth + 1
        for lo in range(0, n, step):
            chunk = rows[lo : lo + step]
            forecast = window_mean(self.rows, self.smooth, chunk.shape[0])
            resid = chunk - forecast
            stored = chunk
            if self.clip is not None and self.scale is not None:
                limit = self.clip * self.scale
                stored = np.where(np.abs(resid) <= limit, chunk, forecast + np.sign(resid) * limit)
            self.rows = np.vstack([self.rows, stored])[-self.season :]
            out[lo : lo + chunk.shape[0]] = resid
        return out

    def fit(self, rows: np.ndarray) -> np.ndarray:
        """Learn the cleaning scale from a first pass, then run the cleaning pass; its residuals."""
        rest = self.start(rows)
        if self.clip is not None:
            self.scale = robust_scale(self.residuals(rest))
            rest = self.start(rows)
        return self.residuals(rest)


def robust_scale(values: np.ndarray) -> np.ndarray:
    """Per-column 1.4826 * MAD (a standard deviation under normality), falling back to the std and
    then to a tiny relative floor, so a constant training column still has a finite scale."""
    med = np.median(values, axis=0)
    mad = 1.4826 * np.median(np.abs(values - med), axis=0)
    std = values.std(axis=0)
    floor = 1e-9 * (1.0 + np.abs(med))
    return np.where(mad > floor, mad, np.maximum(std, floor))


def tail_transform(z: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """Signed deviations -> non-negative surprise per column: |z|, max(z, 0) or max(-z, 0)."""
    out = np.abs(z)
    upper = tails == 1
    lower = tails == -1
    if upper.any():
        out[:, upper] = np.maximum(z[:, upper], 0.0)
    if lower.any():
        out[:, lower] = np.maximum(-z[:, lower], 0.0)
    return out


class SequenceDetector(ParamsMixin):
    """Base of the stateful detectors: input checks and the fit/score skeleton.

    Subclasses declare ``name``, ``DEFAULTS`` (every parameter and its default) and ``CONSTRAINTS``
    (the ``ParamsMixin`` contract), and implement ``_min_rows``, ``_fit_state`` (learn constants,
    run the fit pass, set the state and ``train_scores_``) and ``_advance`` (score rows and advance
    the state).

    Learned: ``n_features_in_``, ``feature_names_in_``, ``train_scores_`` (scores of the training
    rows after the warm-up, computed one step ahead as ``score`` would have) and ``n_warmup_`` (the
    number of leading training rows without a score).
    """

    name: ClassVar[str] = "SequenceDetector"
    stateful: ClassVar[bool] = True
    """Rows must be consecutive buckets of one entity; ``score`` advances the state."""

    def __init__(self, **params: Any) -> None:
        for key, value in self.DEFAULTS.items():
            setattr(self, key, value)
        self.set_params(**params)

    # -- helpers for subclasses -----------------------------------------------------------------

    def _tails(self, n_features: int, names: list[str] | None) -> np.ndarray:
        """``tail`` as one code per column: 0 both, 1 upper, -1 lower.

        A mapping's keys are feature names or ``fnmatch`` patterns (``latency_*``); the first key that
        matches a column gives its tail, columns no key matches use "both".
        """
        codes = {"both": 0, "upper": 1, "lower": -1}
        tail = self.tail  # type: ignore[attr-defined]
        if isinstance(tail, str):
            return np.full(n_features, codes[tail], dtype=np.int64)
        if names is None:
            raise DetectorParamError(
                f"{self.name}: a per-feature 'tail' mapping needs feature names at fit",
                hint="pass feature_names to fit, or give one tail ('both', 'upper', 'lower') for all columns",
            )
        bad_values = {k: v for k, v in tail.items() if v not in codes}
        if bad_values:
            raise DetectorParamError(
                f"The 'tail' parameter of {self.name}: values must be one of {list(TAILS)}, got {bad_values}",
                hint="e.g. tail: {'latency_*': upper, 'retrieval_precision__*': lower}",
            )
        out = np.zeros(n_features, dtype=np.int64)
        for j, feature in enumerate(names):
            # the first matching key wins; unmatched keys are fine (one spec, services with other metrics)
            match = next((v for k, v in tail.items() if fnmatch.fnmatchcase(feature, k)), "both")
            out[j] = codes[match]
        return out

    # -- fit / score ----------------------------------------------------------------------------

    def _min_rows(self) -> int:
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def _fit_state(self, arr: np.ndarray, names: list[str] | None) -> None:
        raise NotImplementedError  # pragma: no cover

    def _advance(self, arr: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover

    @property
    def memory_rows(self) -> int:
        """Rows of history the state is a function of (a replay of this many rows rebuilds it,
        up to the exceptions in the module docstring)."""
        raise NotImplementedError  # pragma: no cover - every subclass overrides

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> SequenceDetector:
        """Learn from consecutive rows of X (oldest first); the state ends at X's last row."""
        self.validate_params()
        arr, names = check_matrix(X, feature_names, who=self.name)
        need = self._min_rows()
        if arr.shape[0] < need:
            raise DetectorError(
                f"{self.name} needs at least {need} consecutive training rows with {self._describe_need()}, "
                f"got {arr.shape[0]}",
                hint="fit on a longer history or shorten the season/windows",
            )
        self._fit_state(arr, names)
        self.feature_names_in_ = names
        self.n_features_in_ = arr.shape[1]
        log.debug("fitted %s on %d rows x %d features", self.name, *arr.shape)
        return self

    def _describe_need(self) -> str:
        return ", ".join(
            f"{k}={getattr(self, k)}" for k in self.DEFAULTS if isinstance(getattr(self, k), int)
        )

    def score(self, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Scores of the rows that follow the ones seen so far (float64, higher = more anomalous)."""
        arr = checked_input(self, X, feature_names)
        if arr.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        return np.ascontiguousarray(self._advance(arr), dtype=np.float64)


def max_over_columns(per_column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row score = the most surprised column; also which column it was (for explanations)."""
    col = per_column.argmax(axis=1)
    return per_column[np.arange(per_column.shape[0]), col], col
