"""SeasonalProfile: daily and weekly patterns learnt from the stream, the residual is the score.

Why: many service metrics (traffic, tweets, CPU of a batch job) repeat by hour of day and day of
week; a value that is normal at 14:00 on a Tuesday can be an anomaly at 03:00 on a Sunday. The
detector keeps an exponentially weighted mean and variance per time slot of the day (``slot``
seconds wide) and of the week, learnt online (Holt-Winters-style seasonal indices without a
trend term; Winters 1960), and scores a point by its z-score against its slot: the week's slot
once it has ``min_count`` observations, else the day's, else the series' overall level. A slot's
variance is floored at a fraction of the overall variance so a slot seen twice does not call
everything an anomaly.

Score: ``min(1, |x - mean| / std / zscale)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from engine.detectors.pointwise import PointDetector

DAY = 86_400.0
WEEK = 7 * DAY


class _Moments:
    """Exponentially weighted mean and variance of many slots (West 1979's incremental form)."""

    def __init__(self, n: int) -> None:
        self.mean = [0.0] * n
        self.var = [0.0] * n
        self.count = [0] * n

    def update(self, i: int, x: float, alpha: float) -> None:
        c = self.count[i]
        if c == 0:
            self.mean[i] = x
        else:
            a = max(alpha, 1.0 / (c + 1))  # plain averages until 1/alpha points were seen
            d = x - self.mean[i]
            self.mean[i] += a * d
            self.var[i] = (1 - a) * (self.var[i] + a * d * d)
        self.count[i] = c + 1

    def state(self) -> list[list[float]]:
        return [self.mean, self.var, [float(c) for c in self.count]]

    def restore(self, value: list[list[float]]) -> None:
        self.mean = [float(x) for x in value[0]]
        self.var = [float(x) for x in value[1]]
        self.count = [int(x) for x in value[2]]


class SeasonalProfile(PointDetector):
    """z-score of a point against the learnt mean and spread of its weekly (else daily) time slot."""

    name: ClassVar[str] = "SeasonalProfile"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "slot": 3600.0,
        "alpha": 0.1,
        "min_count": 2,
        "zscale": 4.0,
        "var_floor": 0.05,
    }

    def _check(self) -> None:
        p = self.params
        self._need(isinstance(p["slot"], int | float) and 60 <= p["slot"] <= DAY, "slot must be 60..86400 s")
        self._need(isinstance(p["alpha"], int | float) and 0 < p["alpha"] <= 1, "alpha must be in (0, 1]")
        self._need(isinstance(p["min_count"], int) and p["min_count"] >= 1, "min_count must be >= 1")
        self._need(isinstance(p["zscale"], int | float) and p["zscale"] > 0, "zscale must be > 0")
        self._need(isinstance(p["var_floor"], int | float) and p["var_floor"] > 0, "var_floor must be > 0")
        self._day = _Moments(max(1, round(DAY / p["slot"])))
        self._week = _Moments(max(1, round(WEEK / p["slot"])))
        self._all = _Moments(1)

    def update(self, ts: float, value: float) -> float:
        p = self.params
        d = int((ts % DAY) // p["slot"]) % len(self._day.mean)
        w = int((ts % WEEK) // p["slot"]) % len(self._week.mean)
        overall = self._all
        if self._week.count[w] >= p["min_count"]:
            mean, var = self._week.mean[w], self._week.var[w]
        elif self._day.count[d] >= p["min_count"]:
            mean, var = self._day.mean[d], self._day.var[d]
        else:
            mean, var = overall.mean[0], overall.var[0]
        floor = p["var_floor"] * overall.var[0]
        spread = math.sqrt(max(var, floor))
        score = 0.0
        if overall.count[0] >= 2 and spread > 0:
            score = min(abs(value - mean) / spread / p["zscale"], 1.0)
        alpha = p["alpha"]
        self._day.update(d, value, alpha)
        self._week.update(w, value, alpha)
        overall.update(0, value, alpha / 10)
        return score

    def state(self) -> dict[str, Any]:
        return {"day": self._day.state(), "week": self._week.state(), "all": self._all.state()}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._day.restore(state["day"])
        self._week.restore(state["week"])
        self._all.restore(state["all"])
