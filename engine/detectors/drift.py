"""Statistical drift: slow mean shifts (CUSUM), distribution shifts (PSI / KS) against a trailing reference.

Meant for slow decays that no single row betrays (retrieval precision sinking over hours, response
variability creeping up after a deploy). Both detectors compare the recent rows of each column with
a *trailing reference window* that ends ``gap`` rows earlier, so the reference is the service's own
recent past rather than a fixed line; with ``season`` set they work on seasonal differences
(x_t - x_{t-season}), so a daily pattern is not mistaken for drift.

* ``CUSUM``: two-sided Page CUSUM of z_t = (x_t - mean(reference)) / scale, winsorised to
  +-``clip``, with allowance ``drift`` (in scale units): S+ = min(cap, max(0, S+ + z - drift)),
  likewise S- with -z. The score is
  the largest sum; ``score_with_change`` also returns the change point (rows since the running sum
  last left zero, the classic CUSUM estimate of when the shift began).
* ``WindowShift``: population stability index (``psi``) or Kolmogorov-Smirnov distance (``ks``)
  between the histogram of the last ``window`` rows and of the reference window, on bins learned at
  fit (training quantiles, plus one bin below the training minimum and one above the maximum, so
  values never seen in training weigh heavily). Counts are integers, so batch == row by row exactly.

river's ``PageHinkley`` and ``ADWIN`` were the first choice; they do not fit the contract: they emit
a drift flag rather than a score, and their state (a running mean since the last detection, an
adaptive window) depends on the whole history, so it cannot be rebuilt from a bounded replay and a
saved detector scores differently after further use. The CUSUM here keeps its sums only until they
return to zero, which happens constantly on normal data; everything else is a bounded window.
"""

from __future__ import annotations

import logging
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import checked_input
from engine.detectors.core_constraints import Constraint, Interval, Options
from engine.detectors.registry import register_detector
from engine.detectors.sequence import (
    INT_GE0,
    INT_GE1,
    POSITIVE,
    SEASON_CONSTRAINT,
    TAIL_CONSTRAINT,
    SeasonalBuffer,
    SequenceDetector,
    max_over_columns,
    robust_scale,
    window_mean,
)

__all__ = ["CUSUM", "WindowShift"]

log = logging.getLogger(__name__)


class _TrailingReference(SequenceDetector):
    """Seasonal differencing (optional) and a ring buffer of the rows a trailing reference needs."""

    season: int | None
    reference: int
    gap: int

    def _buffer_rows(self) -> int:
        raise NotImplementedError  # pragma: no cover

    @property
    def memory_rows(self) -> int:
        return self._season_rows() + self._buffer_rows()

    SEASON_CLIP = 4.0
    """Cleaning of the seasonal buffer (see ``SeasonalBuffer``): an incident does not echo a season later."""

    def _season_rows(self) -> int:
        return self.season or 0

    def _deseason(self, rows: np.ndarray) -> np.ndarray:
        return self.seasonal_.residuals(rows) if self.season else rows

    def _start(self, arr: np.ndarray) -> np.ndarray:
        """Learn the seasonal buffer from the training rows; the (differenced) rows after the first season."""
        if not self.season:
            return arr
        self.seasonal_ = SeasonalBuffer(self.season, 1, self.SEASON_CLIP)
        return self.seasonal_.fit(arr)


class CUSUM(_TrailingReference):
    """Two-sided CUSUM against the mean of a trailing reference window, per column.

    Parameters: ``reference`` (rows in the reference window), ``gap`` (rows between the end of the
    reference and the row scored), ``drift`` (allowance k in scale units: shifts smaller than k are
    ignored), ``season`` (None, or rows per season to difference by), ``tail``.
    Learned: ``center_``/``scale_`` (median and 1.4826 MAD of x - reference mean on the training
    rows), ``buffer_``,
    ``upper_``/``lower_`` (the running sums) and ``run_`` (rows since each sum left zero).
    """

    name = "CUSUM"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "reference": 360,
        "gap": 0,
        "drift": 0.5,
        "clip": 4.0,
        "cap": 50.0,
        "season": None,
        "tail": "both",
    }
    CONSTRAINTS: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "reference": (INT_GE1,),
        "gap": (INT_GE0,),
        "drift": (Interval(Real, 0, None, "left"),),
        "clip": (POSITIVE,),
        "cap": (POSITIVE,),
        "season": SEASON_CONSTRAINT,
        "tail": TAIL_CONSTRAINT,
    }

    drift: float
    clip: float
    cap: float
    tail: Any

    def __init__(
        self,
        reference: int = 360,
        gap: int = 0,
        drift: float = 0.5,
        clip: float = 4.0,
        cap: float = 50.0,
        season: int | None = None,
        tail: Any = "both",
    ) -> None:
        super().__init__(
            reference=reference, gap=gap, drift=drift, clip=clip, cap=cap, season=season, tail=tail
        )

    def _buffer_rows(self) -> int:
        return self.reference + self.gap

    def _min_rows(self) -> int:
        return self._season_rows() + self._buffer_rows() + 16

    def _deviations(self, rows: np.ndarray) -> np.ndarray:
        """x_t minus the mean of the reference window of row t; advances the buffer."""
        n = rows.shape[0]
        stacked = np.vstack([self.buffer_, rows])
        ref = window_mean(stacked, self.reference, n)
        self.buffer_ = stacked[stacked.shape[0] - self._buffer_rows() :].copy()
        return rows - ref

    def _fit_state(self, arr: np.ndarray, names: list[str] | None) -> None:
        self.tails_ = self._tails(arr.shape[1], names)
        diffs = self._start(arr)
        b = self._buffer_rows()
        self.buffer_ = diffs[:b].copy()
        dev = self._deviations(diffs[b:])
        self.center_ = np.median(dev, axis=0)
        self.scale_ = robust_scale(dev)
        d = arr.shape[1]
        self.upper_ = np.zeros(d)
        self.lower_ = np.zeros(d)
        self.run_up_ = np.zeros(d, dtype=np.int64)
        self.run_down_ = np.zeros(d, dtype=np.int64)
        self.n_warmup_ = self._season_rows() + b
        self.train_scores_ = self._accumulate(dev)[0]

    def _accumulate(self, dev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the CUSUM recursion over the rows; scores and the change offset of each row."""
        z = np.clip((dev - self.center_) / self.scale_, -self.clip, self.clip)
        k, cap = float(self.drift), float(self.cap)
        n, d = z.shape
        up, down = self.upper_.copy(), self.lower_.copy()
        run_up, run_down = self.run_up_.copy(), self.run_down_.copy()
        ups = np.empty((n, d))
        downs = np.empty((n, d))
        runs_up = np.empty((n, d), dtype=np.int64)
        runs_down = np.empty((n, d), dtype=np.int64)
        for i in range(n):
            up = np.minimum(np.maximum(up + (z[i] - k), 0.0), cap)
            down = np.minimum(np.maximum(down + (-z[i] - k), 0.0), cap)
            run_up = np.where(up > 0.0, run_up + 1, 0)
            run_down = np.where(down > 0.0, run_down + 1, 0)
            ups[i], downs[i], runs_up[i], runs_down[i] = up, down, run_up, run_down
        self.upper_, self.lower_, self.run_up_, self.run_down_ = up, down, run_up, run_down
        use_up = self.tails_ >= 0
        use_down = self.tails_ <= 0
        per_col = np.where(use_up, ups, 0.0)
        per_col = np.maximum(per_col, np.where(use_down, downs, 0.0))
        scores, cols = max_over_columns(per_col)
        rows = np.arange(n)
        offset = np.where(
            ups[rows, cols] * use_up[cols] >= downs[rows, cols] * use_down[cols],
            runs_up[rows, cols],
            runs_down[rows, cols],
        )
        return scores, offset

    def _advance(self, arr: np.ndarray) -> np.ndarray:
        return self._accumulate(self._deviations(self._deseason(arr)))[0]

    def score_with_change(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Scores (as ``score``, advancing the state) and, per row, how many rows ago the current
        excursion began (0 = no excursion): the estimated change point is ``row - offset``."""
        arr = checked_input(self, X)
        scores, offset = self._accumulate(self._deviations(self._deseason(arr)))
        return np.ascontiguousarray(scores, dtype=np.float64), offset


class WindowShift(_TrailingReference):
    """PSI or KS distance between the last ``window`` rows and a trailing reference, per column.

    Parameters: ``statistic`` ("psi" or "ks"), ``window`` (recent rows, current included),
    ``reference`` (rows in the reference window), ``gap`` (rows between reference and recent
    window), ``bins`` (quantile bins inside the training range), ``season``.
    Learned: ``edges_`` (per column), ``codes_`` (bin codes of the last rows the windows need).
    """

    name = "WindowShift"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "statistic": "psi",
        "window": 60,
        "reference": 360,
        "gap": 0,
        "bins": 8,
        "season": None,
    }
    CONSTRAINTS: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "statistic": (Options(str, frozenset({"psi", "ks"})),),
        "window": (INT_GE1,),
        "reference": (INT_GE1,),
        "gap": (INT_GE0,),
        "bins": (Interval(Integral, 2, None, "left"),),
        "season": SEASON_CONSTRAINT,
    }

    statistic: str
    window: int
    bins: int

    SMOOTHING = 0.5
    """Pseudo-count per bin in the PSI (Jeffreys prior), so an empty bin gives a finite log ratio."""

    def __init__(
        self,
        statistic: str = "psi",
        window: int = 60,
        reference: int = 360,
        gap: int = 0,
        bins: int = 8,
        season: int | None = None,
    ) -> None:
        super().__init__(
            statistic=statistic, window=window, reference=reference, gap=gap, bins=bins, season=season
        )

    def _buffer_rows(self) -> int:
        return self.window + self.gap + self.reference - 1

    def _min_rows(self) -> int:
        return self._season_rows() + self._buffer_rows() + 16

    def _codes(self, rows: np.ndarray) -> np.ndarray:
        """Bin code of each value: 0 below the training min, bins+1 above the max, 1..bins inside."""
        out = np.empty(rows.shape, dtype=np.int64)
        for j in range(rows.shape[1]):
            out[:, j] = np.searchsorted(self.edges_[j], rows[:, j], side="right")
        return out

    def _statistic(self, codes: np.ndarray) -> np.ndarray:
        """Per-column statistic for every row after the buffer; advances the code buffer."""
        stacked = np.vstack([self.codes_, codes])
        n = codes.shape[0]
        k = self.bins + 2
        onehot = np.zeros((stacked.shape[0] + 1, stacked.shape[1], k), dtype=np.int64)
        np.put_along_axis(onehot[1:], stacked[:, :, None], 1, axis=2)
        cum = np.cumsum(onehot, axis=0)
        b = self.codes_.shape[0]  # row i of `codes` sits at index b + i of `stacked`
        end = np.arange(n) + b + 1
        recent = cum[end] - cum[end - self.window]
        ref_end = end - self.window - self.gap
        ref = cum[ref_end] - cum[ref_end - self.reference]
        self.codes_ = stacked[stacked.shape[0] - self._buffer_rows() :].copy()
        if self.statistic == "ks":
            p = np.cumsum(recent, axis=2) / self.window
            q = np.cumsum(ref, axis=2) / self.reference
            return np.abs(p - q).max(axis=2)
        a = self.SMOOTHING
        p = (recent + a) / (self.window + k * a)
        q = (ref + a) / (self.reference + k * a)
        return ((p - q) * np.log(p / q)).sum(axis=2)

    def _fit_state(self, arr: np.ndarray, names: list[str] | None) -> None:
        diffs = self._start(arr)
        inner = np.quantile(diffs, np.linspace(0.0, 1.0, self.bins + 1)[1:-1], axis=0)
        lo, hi = diffs.min(axis=0), diffs.max(axis=0)
        self.edges_ = [
            np.concatenate([[lo[j]], inner[:, j], [np.nextafter(hi[j], np.inf)]]) for j in range(arr.shape[1])
        ]
        codes = self._codes(diffs)
        b = self._buffer_rows()
        self.codes_ = codes[:b].copy()
        self.n_warmup_ = self._season_rows() + b
        self.train_scores_ = self._statistic(codes[b:]).max(axis=1)

    def _advance(self, arr: np.ndarray) -> np.ndarray:
        return self._statistic(self._codes(self._deseason(arr))).max(axis=1)


register_detector(CUSUM.name, CUSUM.from_params, replace=True)
register_detector(WindowShift.name, WindowShift.from_params, replace=True)
