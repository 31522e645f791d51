"""NabZScore: the largest absolute z-score of a row against statistics of the rows it was fitted on.

The raw detector behind our best NAB configuration. It is deliberately simple: the work of putting
every series on one scale is done afterwards by the anomaly likelihood
(``engine.detectors.likelihood``), which only needs a raw score that rises with surprise. Fitted
on a trailing window of past rows and refitted as the stream advances, it is a rolling z-score that
keeps the Detector protocol (``fit`` on past rows, ``score`` new rows, nothing learned while
scoring), so the NAB runner and the engine drive it exactly like any PyOD detector.

Score of a row: ``min(1, max_j |x_j - mean_j| / std_j / zscale)``; a column that was constant in the
fitted rows contributes 0 (it has no scale to be surprising against).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np

from engine.detectors.base import check_matrix, checked_input
from engine.detectors.core_constraints import Constraint, Interval, IsNone, ParamsMixin
from engine.detectors.registry import register_detector
from engine.errors import DetectorError

__all__ = ["NabZScore"]

logger = logging.getLogger(__name__)


class NabZScore(ParamsMixin):
    """Max |z| over the columns, divided by ``zscale`` and capped at 1.

    Parameters: ``zscale`` (the |z| that maps to 1.0), ``window`` (fit on the last ``window`` rows
    of X only; None = all rows). Learned: ``mean_``, ``scale_`` (0 where a column was constant),
    ``n_features_in_``, ``feature_names_in_``.
    """

    name = "NabZScore"
    DEFAULTS: ClassVar[dict[str, Any]] = {"zscale": 4.0, "window": None}
    CONSTRAINTS: ClassVar[dict[str, tuple[Constraint, ...]]] = {
        "zscale": (Interval(Real, 0.0, None, closed="neither"),),
        "window": (IsNone(), Interval(Integral, 2, None)),
    }

    def __init__(self, zscale: float = 4.0, window: int | None = None) -> None:
        self.zscale = zscale
        self.window = window

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> NabZScore:
        """Learn per-column mean and standard deviation (ddof 0) of the last ``window`` rows."""
        self.validate_params()
        arr, names = check_matrix(X, feature_names, who=self.name)
        if arr.shape[0] < 2:
            raise DetectorError(
                f"{self.name} needs at least 2 training rows, got {arr.shape[0]}", hint="fit on more rows"
            )
        if self.window is not None:
            arr = arr[-self.window :]
        mean = arr.mean(axis=0)
        std = np.sqrt(np.maximum((arr * arr).mean(axis=0) - mean * mean, 0.0))
        # a constant column (up to rounding) has no scale: its z is 0, as in engine.features' zscore
        self.scale_ = np.where(std > 1e-10 * np.abs(mean), std, 0.0)
        self.mean_ = mean
        self.feature_names_in_ = names
        self.n_features_in_ = arr.shape[1]
        return self

    def score(self, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Raw scores in [0, 1], float64, higher = more anomalous."""
        arr = checked_input(self, X, feature_names)
        if arr.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(self.scale_ > 0, np.abs(arr - self.mean_) / self.scale_, 0.0)
        return np.minimum(z.max(axis=1) / float(self.zscale), 1.0)


# deterministic: the registry's random_state is not used
register_detector(NabZScore.name, NabZScore.from_params, replace=True)
