"""LevelShift: online two-sided CUSUM for level shifts (change points in the mean).

Why our own and not ``ruptures``: ruptures (Truong et al. 2020) segments a whole signal at once, a
batch method; a stream needs a statistic updated per point. Page's CUSUM (Page 1954, "Continuous
inspection schemes") is that statistic: with z the point's deviation from the reference level in
units of the reference spread, ``S+ = max(0, S+ + z - drift)`` and ``S- = max(0, S- - z - drift)``
grow while the level stays away from the reference and return to 0 otherwise. The score is
``min(1, max(S+, S-) / threshold)``; once it reaches 1 the change is taken as real and the
reference restarts at the new level (as the Page-Hinkley test restarts after an alarm), so a
shift scores high at its start, not forever.

The reference is an exponentially weighted mean and variance of the points (rate ``alpha``); a
point far from it moves the variance by at most ``clip`` spreads so a shift does not hide itself by
inflating the spread it is measured in. The first ``1 / alpha`` points only build the reference
(its spread from a few dozen points made the CUSUM fire on plain noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from engine.detectors.pointwise import PointDetector


class LevelShift(PointDetector):
    """Two-sided CUSUM of standardised deviations from an exponentially weighted reference level."""

    name: ClassVar[str] = "LevelShift"
    DEFAULTS: ClassVar[dict[str, Any]] = {"drift": 0.5, "threshold": 8.0, "alpha": 0.01, "clip": 3.0}

    def _check(self) -> None:
        p = self.params
        for key in ("drift", "threshold", "alpha", "clip"):
            self._need(isinstance(p[key], int | float) and p[key] > 0, f"{key} must be a number > 0")
        self._need(p["alpha"] <= 1, "alpha must be in (0, 1]")
        self._mean = 0.0
        self._var = 0.0
        self._n = 0
        self._up = 0.0
        self._down = 0.0

    def update(self, ts: float, value: float) -> float:
        p = self.params
        if self._n == 0:
            self._mean, self._n = value, 1
            return 0.0
        spread = math.sqrt(self._var)
        score = 0.0
        d = value - self._mean
        if self._n * p["alpha"] >= 1 and spread > 1e-12 * max(1.0, abs(self._mean)):
            z = d / spread
            self._up = max(0.0, self._up + z - p["drift"])
            self._down = max(0.0, self._down - z - p["drift"])
            score = min(max(self._up, self._down) / p["threshold"], 1.0)
            if score >= 1.0:  # the change is real: restart the reference at the new level
                self._mean, self._up, self._down = value, 0.0, 0.0
                return score
            d = max(-p["clip"] * spread, min(p["clip"] * spread, d))
        a = max(p["alpha"], 1.0 / (self._n + 1))
        self._mean += a * d
        self._var = (1 - a) * (self._var + a * d * d)
        self._n += 1
        return score

    def state(self) -> dict[str, Any]:
        return {"mean": self._mean, "var": self._var, "n": self._n, "up": self._up, "down": self._down}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._mean = float(state["mean"])
        self._var = float(state["var"])
        self._n = int(state["n"])
        self._up = float(state["up"])
        self._down = float(state["down"])
