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
from typing import Any

import numpy as np

from engine.detectors.base import check_columns, check_matrix
from engine.detectors.core_constraints import Interval, IsNone, check_params
from engine.detectors.registry import register_detector
from engine.errors import DetectorError, NotFittedError

__all__ = ["NabZScore"]

logger = logging.getLogger(__name__)

NAME = "NabZScore"

_DEFAULTS: dict[str, Any] = {"zscale": 4.0, "window": None}
_CONSTRAINTS = {
    "zscale": [Interval(Real, 0.0, None, closed="neither")],
    "window": [IsNone(), Interval(Integral, 2, None)],
}


class NabZScore:
    """Max |z| over the columns, divided by ``zscale`` and capped at 1.

    Parameters: ``zscale`` (the |z| that maps to 1.0), ``window`` (fit on the last ``window`` rows
    of X only; None = all rows). Learned: ``mean_``, ``scale_`` (0 where a column was constant),
    ``n_features_in_``, ``feature_names_in_``.
    """

    name = NAME

    def __init__(self, zscale: float = 4.0, window: int | None = None) -> None:
        self.zscale = zscale
        self.window = window

    def __repr__(self) -> str:
        return f"NabZScore(zscale={self.zscale!r}, window={self.window!r})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"zscale": self.zscale, "window": self.window}

    def set_params(self, **params: Any) -> NabZScore:
        """Change parameters (unknown names fail now, values at the next fit); returns self."""
        unknown = {k: v for k, v in params.items() if k not in _DEFAULTS}
        if unknown:
            check_params(NAME, unknown, _DEFAULTS, _CONSTRAINTS)
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def validate_params(self) -> None:
        check_params(NAME, self.get_params(), _DEFAULTS, _CONSTRAINTS)

    def fit(self, X: Any, feature_names: Sequence[str] | None = None) -> NabZScore:
        """Learn per-column mean and standard deviation (ddof 0) of the last ``window`` rows."""
        self.validate_params()
        arr, names = check_matrix(X, feature_names, who=NAME)
        if arr.shape[0] < 2:
            raise DetectorError(
                f"{NAME} needs at least 2 training rows, got {arr.shape[0]}", hint="fit on more rows"
            )
        if self.window is not None:
            arr = arr[-self.window :]
        mean = arr.mean(axis=0)
        std = np.sqrt(np.maximum((arr * arr).mean(axis=0) - mean * mean, 0.0))
        # a constant column (up to rounding) has no scale: its z is 0, as in engine.features' zscore
        self.scale_ = np.where(std > 1e-10 * np.abs(mean), std, 0.0)
        self.mean_ = mean
        self.n_features_in_ = arr.shape[1]
        self.feature_names_in_ = names
        return self

    def score(self, X: Any, feature_names: Sequence[str] | None = None) -> np.ndarray:
        """Raw scores in [0, 1], float64, higher = more anomalous."""
        if not hasattr(self, "mean_"):
            raise NotFittedError(f"{NAME} is not fitted yet", hint="call fit(X) before score(X)")
        arr, names = check_matrix(X, feature_names, who=NAME)
        check_columns(
            arr.shape[1], names, fitted_n=self.n_features_in_, fitted_names=self.feature_names_in_, who=NAME
        )
        if arr.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(self.scale_ > 0, np.abs(arr - self.mean_) / self.scale_, 0.0)
        return np.minimum(z.max(axis=1) / float(self.zscale), 1.0)


def _build(params: dict[str, Any], random_state: int | None) -> NabZScore:
    """Registry factory (the detector is deterministic: ``random_state`` is not used)."""
    return NabZScore().set_params(**params)


register_detector(NAME, _build, replace=True)
