"""Forecasting residuals: a seasonal forecast per series, scored by its robustly scaled residual.

``SeasonalResidual`` forecasts each column (one series of one service) by the same time one season
earlier (seasonal naive, smoothed over ``smooth`` buckets), averages the residuals of the last
``window`` buckets and divides by the residual scale learned at fit (1.4826 MAD, so ~1 is normal
noise). The row's score is the largest scaled residual over its columns (direction per ``tail``).

Why seasonal naive and not Holt-Winters: a forecaster that keeps adapting its level (Holt-Winters,
statsmodels' ``ExponentialSmoothing``) absorbs exactly the slow creeps we want to catch, its state has
infinite memory (it cannot be rebuilt from a bounded replay) and statsmodels refits rather than
updates. Comparing with yesterday at the same time removes the daily pattern and keeps any drift of
the last hours fully visible; averaging ``window`` residuals lowers the noise so a creep crosses the
threshold early. Memory per series: a ring buffer of one season of buckets plus ``window - 1``
residuals (``engine.detectors.sequence`` explains the finite-memory contract); statsmodels is not
needed for a seasonal-naive forecast.

An incident today would be tomorrow's forecast, and its recovery would then look anomalous a
season later (the "echo"); the buffer stores values clipped to ``clip`` residual scales from their
forecast (robust Holt-Winters cleaning), which bounds the echo. ``tail`` per feature ignores the
harmless direction (``{"latency_*": "upper", "retrieval_*": "lower"}``). Known limit: weekly
patterns (weekend load) are not modelled by a daily season; watch health metrics (latency, errors,
quality), not load metrics, with it.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import checked_input
from engine.detectors.core_constraints import Constraint, IsNone
from engine.detectors.registry import register_detector
from engine.detectors.sequence import (
    INT_GE1,
    POSITIVE,
    TAIL_CONSTRAINT,
    SeasonalBuffer,
    SequenceDetector,
    max_over_columns,
    robust_scale,
    tail_transform,
    window_mean,
)
from engine.errors import DetectorParamError

__all__ = ["SeasonalResidual"]

log = logging.getLogger(__name__)


class SeasonalResidual(SequenceDetector):
    """Residual of a seasonal-naive forecast, averaged over ``window`` rows, in robust-scale units.

    Parameters: ``season`` (rows per season: 1440 for a daily season of 1-minute buckets),
    ``smooth`` (the forecast of row t is the mean of rows t-season .. t-season+smooth-1),
    ``window`` (residuals averaged over the last ``window`` rows), ``clip`` (values further than
    ``clip`` residual scales from their forecast are stored clipped, so an incident does not echo
    a season later; None stores raw values), ``tail`` ("both", "upper", "lower", or a mapping
    feature name -> tail).
    Learned: ``center_`` (median windowed residual per column), ``scale_`` (its 1.4826 MAD),
    ``history_`` (the ``SeasonalBuffer``: last ``season`` cleaned rows), ``residuals_`` (last
    ``window - 1`` residuals).

    >>> import numpy as np
    >>> day = np.sin(np.arange(96) * 2 * np.pi / 24)[:, None]          # 4 "days" of 24 rows
    >>> det = SeasonalResidual(season=24, smooth=1, window=1).fit(day + 0.01 * np.cos(np.arange(96))[:, None])
    >>> scores = det.score(day[:4] + np.array([[0.0], [0.0], [0.0], [1.0]]))
    >>> bool(scores[3] > 10 * scores[:3].max())
    True
    """

    name = "SeasonalResidual"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "season": 1440,
        "smooth": 1,
        "window": 10,
        "clip": 4.0,
        "tail": "both",
    }
    CONSTRAINTS: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "season": (INT_GE1,),
        "smooth": (INT_GE1,),
        "window": (INT_GE1,),
        "clip": (POSITIVE, IsNone()),
        "tail": TAIL_CONSTRAINT,
    }

    season: int
    smooth: int
    window: int
    clip: float | None
    tail: Any

    def __init__(
        self,
        season: int = 1440,
        smooth: int = 1,
        window: int = 10,
        clip: float | None = 4.0,
        tail: Any = "both",
    ) -> None:
        super().__init__(season=season, smooth=smooth, window=window, clip=clip, tail=tail)

    def _check_params_together(self) -> None:
        if self.smooth > self.season:
            raise DetectorParamError(
                f"The 'smooth' parameter of {self.name} must be <= season ({self.season}). "
                f"Got {self.smooth!r} instead.",
                hint="the forecast averages rows of the previous season only (no look-ahead)",
            )

    @property
    def memory_rows(self) -> int:
        return self.season + self.window - 1

    def _min_rows(self) -> int:
        # one season to forecast from, `window` residuals for the first score, and a few more for a scale
        return self.season + self.window + 8

    def _windowed(self, residuals: np.ndarray) -> np.ndarray:
        """Mean of the last ``window`` residuals at each row; keeps the last window-1 for the next call."""
        n = residuals.shape[0]
        stacked = np.vstack([self.residuals_, residuals])
        out = window_mean(stacked, self.window, n)
        self.residuals_ = stacked[stacked.shape[0] - (self.window - 1) :].copy()
        return out

    def _fit_state(self, arr: np.ndarray, names: list[str] | None) -> None:
        self.tails_ = self._tails(arr.shape[1], names)
        self.history_ = SeasonalBuffer(self.season, self.smooth, self.clip)
        residuals = self.history_.fit(arr)
        k = self.window - 1
        self.residuals_ = residuals[:k].copy()
        windowed = self._windowed(residuals[k:])
        self.center_ = np.median(windowed, axis=0)
        self.scale_ = robust_scale(windowed)
        self.n_warmup_ = self.season + k
        self.train_scores_ = self._to_scores(windowed)

    def _to_scores(self, windowed: np.ndarray) -> np.ndarray:
        z = (windowed - self.center_) / self.scale_
        return max_over_columns(tail_transform(z, self.tails_))[0]

    def _advance(self, arr: np.ndarray) -> np.ndarray:
        return self._to_scores(self._windowed(self.history_.residuals(arr)))

    def explain(self, X: Any) -> list[dict[str, float | str]]:
        """Score rows like ``score`` (advancing the state) and say which column drove each score."""
        arr = checked_input(self, X)
        z = (self._windowed(self.history_.residuals(arr)) - self.center_) / self.scale_
        scores, cols = max_over_columns(tail_transform(z, self.tails_))
        names = self.feature_names_in_ or [f"column {i}" for i in range(self.n_features_in_)]
        return [
            {"score": float(s), "feature": names[c], "z": float(z[i, c])}
            for i, (s, c) in enumerate(zip(scores, cols, strict=True))
        ]


register_detector(SeasonalResidual.name, SeasonalResidual.from_params, replace=True)
