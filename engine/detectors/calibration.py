"""Calibration of raw scores to [0, 1], and thresholds: separate, serialisable, retunable pieces.

Raw scores of different detectors live on different scales (IForest around 0, KNN in distance units,
ECOD in -log probabilities). A ``ScoreCalibrator`` fitted on training scores maps them to [0, 1] so
detectors can be compared, combined and thresholded alike. Every method is monotone, so a calibrated
score ranks rows exactly as the raw score does:

* ``"ecdf"`` (default): the training scores' empirical CDF, linearly interpolated between knots and
  with exponential tails beyond the training range, so it is strictly increasing everywhere (no
  plateau at 1.0 for every score above the training maximum: a larger excess stays larger). The
  knots are at most ``max_knots`` quantiles, which bounds memory and the serialised size.
* ``"gaussian"``: z-score against the training mean and standard deviation, through the normal CDF.
* ``"minmax"``: robust min-max between the ``q_low`` and ``q_high`` training quantiles, clipped to
  [0, 1] (monotone but flat beyond the quantiles).

Thresholds work on calibrated (or raw) scores: ``QuantileThreshold(q)`` learns the q-quantile of
training scores, ``FixedThreshold(value)`` is a fixed line. A row alarms when its score is strictly
above the threshold. All pieces round-trip through ``to_dict``/``from_dict`` (JSON-friendly, for
MLflow and bundles) and retune with ``set_params`` + ``fit`` without refitting the detector.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import ndtr

from engine.errors import DetectorParamError, NotFittedError

__all__ = [
    "CALIBRATION_METHODS",
    "FixedThreshold",
    "QuantileThreshold",
    "ScoreCalibrator",
    "threshold_from_dict",
]

CALIBRATION_METHODS = ("ecdf", "gaussian", "minmax")


def _scores(values: Any, who: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise DetectorParamError(f"{who}: scores contain NaN or inf", hint="score only complete feature rows")
    return arr


class ScoreCalibrator:
    """Monotone map of raw scores to [0, 1], learned from training scores."""

    def __init__(
        self, method: str = "ecdf", *, max_knots: int = 1024, q_low: float = 0.01, q_high: float = 0.99
    ) -> None:
        self.method = method
        self.max_knots = max_knots
        self.q_low = q_low
        self.q_high = q_high

    def get_params(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "max_knots": self.max_knots,
            "q_low": self.q_low,
            "q_high": self.q_high,
        }

    def set_params(self, **params: Any) -> ScoreCalibrator:
        for key, value in params.items():
            if key not in self.get_params():
                raise DetectorParamError(
                    f"{key!r} is not a parameter of ScoreCalibrator",
                    hint=f"valid: {sorted(self.get_params())}",
                )
            setattr(self, key, value)
        return self

    def _validate(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise DetectorParamError(
                f"The 'method' parameter of ScoreCalibrator must be a str among "
                f"{{{', '.join(repr(m) for m in CALIBRATION_METHODS)}}}. Got {self.method!r} instead."
            )
        if not (isinstance(self.max_knots, int) and self.max_knots >= 2):
            raise DetectorParamError(
                f"The 'max_knots' parameter of ScoreCalibrator must be an int in the range [2, inf). "
                f"Got {self.max_knots!r} instead."
            )
        if not (0.0 <= self.q_low < self.q_high <= 1.0):
            raise DetectorParamError(
                f"ScoreCalibrator needs 0 <= q_low < q_high <= 1. Got q_low={self.q_low!r}, "
                f"q_high={self.q_high!r} instead."
            )

    def fit(self, train_scores: Any) -> ScoreCalibrator:
        """Learn the map from the detector's scores of (mostly normal) training rows."""
        self._validate()
        s = _scores(train_scores, "ScoreCalibrator.fit")
        if s.size < 2:
            raise DetectorParamError(
                "ScoreCalibrator needs at least 2 training scores", hint="fit on more rows"
            )
        # A spread below float resolution at the scores' magnitude (e.g. a subnormal one) is no
        # spread at all: dividing by it overflows. Such spreads fall back like a zero one.
        floor = float(np.finfo(np.float64).eps) * max(1.0, float(np.abs(s).max()))

        def usable(value: float) -> float:
            return value if value > floor else 0.0

        spread = usable(float(np.subtract(*np.quantile(s, [0.75, 0.25])))) or usable(float(s.std())) or 1.0
        self.scale_ = spread
        if self.method == "ecdf":
            uniq = np.unique(s)
            # ECDF at each unique score, smoothed to (rank) / (n + 1) so it never reaches 0 or 1.
            ranks = np.searchsorted(np.sort(s), uniq, side="right")
            probs = ranks / (s.size + 1.0)
            if uniq.size > self.max_knots:
                idx = np.unique(np.linspace(0, uniq.size - 1, self.max_knots).round().astype(int))
                uniq, probs = uniq[idx], probs[idx]
            if uniq.size == 1:  # constant training scores: a single knot at probability 1/2
                probs = np.array([0.5])
            self.knots_x_ = uniq
            self.knots_p_ = probs
        elif self.method == "gaussian":
            self.mean_ = float(s.mean())
            self.std_ = usable(float(s.std())) or spread
        else:
            lo, hi = np.quantile(s, [self.q_low, self.q_high])
            self.low_ = float(lo)
            self.high_ = float(hi) if usable(float(hi - lo)) else float(lo) + spread
        return self

    def transform(self, scores: Any) -> np.ndarray:
        """Calibrated scores in [0, 1]; ranks exactly as the raw scores (monotone)."""
        if not hasattr(self, "scale_"):
            raise NotFittedError("ScoreCalibrator is not fitted", hint="call fit(train_scores) first")
        s = _scores(scores, "ScoreCalibrator.transform")
        if self.method == "ecdf":
            x, p = self.knots_x_, self.knots_p_
            # np.interp's rounding can land a hair above its segment's right knot (0.0 and -4.5e-24
            # came out in the wrong order): capped at that knot, the map stays monotone
            right = np.minimum(np.searchsorted(x, s, side="right"), len(x) - 1)
            out = np.minimum(np.interp(s, x, p), p[right])
            below, above = s < x[0], s > x[-1]
            out[below] = p[0] * np.exp((s[below] - x[0]) / self.scale_)
            out[above] = 1.0 - (1.0 - p[-1]) * np.exp(-(s[above] - x[-1]) / self.scale_)
            return out
        if self.method == "gaussian":
            return ndtr((s - self.mean_) / self.std_)
        return np.clip((s - self.low_) / (self.high_ - self.low_), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Parameters and learned state as plain JSON types."""
        state: dict[str, Any] = {"kind": "ScoreCalibrator", "params": self.get_params()}
        for key in ("scale_", "mean_", "std_", "low_", "high_"):
            if hasattr(self, key):
                state[key] = getattr(self, key)
        for key in ("knots_x_", "knots_p_"):
            if hasattr(self, key):
                state[key] = getattr(self, key).tolist()
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ScoreCalibrator:
        cal = cls(**state["params"])
        for key, value in state.items():
            if key.endswith("_"):
                setattr(cal, key, np.asarray(value, dtype=np.float64) if isinstance(value, list) else value)
        return cal


class QuantileThreshold:
    """Alarm above the q-quantile of the training scores (expected alarm rate ~ 1 - q on normal data)."""

    def __init__(self, q: float = 0.99) -> None:
        self.q = q

    def get_params(self) -> dict[str, Any]:
        return {"q": self.q}

    def set_params(self, **params: Any) -> QuantileThreshold:
        if set(params) - {"q"}:
            raise DetectorParamError(f"QuantileThreshold has only the parameter 'q'; got {sorted(params)}")
        self.q = params.get("q", self.q)
        return self

    def fit(self, train_scores: Any) -> QuantileThreshold:
        q = self.q
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0 or math.isnan(q):
            raise DetectorParamError(
                "The 'q' parameter of QuantileThreshold must be a float in the range (0.0, 1.0). "
                f"Got {q!r} instead."
            )
        s = _scores(train_scores, "QuantileThreshold.fit")
        if s.size == 0:
            raise DetectorParamError(
                "QuantileThreshold needs training scores", hint="fit on a non-empty array"
            )
        self.threshold_ = float(np.quantile(s, q))
        return self

    def apply(self, scores: Any) -> np.ndarray:
        """Boolean alarms: score strictly above the threshold."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError("QuantileThreshold is not fitted", hint="call fit(train_scores) first")
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kind": "QuantileThreshold", "params": self.get_params()}
        if hasattr(self, "threshold_"):
            state["threshold_"] = self.threshold_
        return state


class FixedThreshold:
    """Alarm above a fixed value (e.g. 0.95 on calibrated scores); ``fit`` is a no-op for uniformity."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def get_params(self) -> dict[str, Any]:
        return {"value": self.value}

    def set_params(self, **params: Any) -> FixedThreshold:
        if set(params) - {"value"}:
            raise DetectorParamError(f"FixedThreshold has only the parameter 'value'; got {sorted(params)}")
        self.value = params.get("value", self.value)
        return self

    def fit(self, train_scores: Any = None) -> FixedThreshold:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise DetectorParamError(
                f"The 'value' parameter of FixedThreshold must be a finite float. Got {v!r} instead."
            )
        return self

    @property
    def threshold_(self) -> float:
        return float(self.value)

    def apply(self, scores: Any) -> np.ndarray:
        self.fit()
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "FixedThreshold", "params": self.get_params(), "threshold_": self.threshold_}


def threshold_from_dict(state: dict[str, Any]) -> QuantileThreshold | FixedThreshold:
    """Rebuild a threshold saved with ``to_dict``."""
    kind = state.get("kind")
    if kind == "FixedThreshold":
        return FixedThreshold(**state["params"])
    if kind == "QuantileThreshold":
        thr = QuantileThreshold(**state["params"])
        if "threshold_" in state:
            thr.threshold_ = float(state["threshold_"])
        return thr
    raise DetectorParamError(
        f"unknown threshold kind {kind!r}", hint="expected QuantileThreshold or FixedThreshold"
    )
