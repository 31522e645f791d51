"""Anomaly likelihood: online post-processing that puts raw scores of every series on one scale.

Why: NAB (and any fleet of services) is scored with one threshold for all series, but a raw
detector score means different things on a noisy series and on a quiet one. Numenta's anomaly
likelihood (Ahmad et al., 2017) fixes that by asking how unusual the *recent* raw scores are for
*this* series: a short moving average of raw scores is compared with a Gaussian fitted to the
long-run distribution of that moving average, and the tail probability becomes the score. The
log scale (``log_likelihood``) spreads the interesting tail (0.99999 vs 0.999999) over [0, 1].

``ScorePostprocessor`` adds the two rules that matter when every alarm costs and only the first
alarm of an incident counts:

* a *spatial* rule (Numenta's NAB detector): a value beyond the range seen so far by more than
  ``spatial_tolerance`` of that range scores 1.0 at once, before any average catches up, whatever
  the model said. It watches every column it is given (the stream detector passes the columns its
  spec names) and its range may start from the range seen in training;
* *suppression*: after an alarm-level score, further alarm-level scores within ``suppress_rows``
  rows are capped (one incident, one alarm). Numenta's filter does this for one row.

Everything here is online (one ``update`` per row, O(1) memory per series apart from the bounded
history) so the NAB runner and the engine compute the same numbers. The whole state of a series is
a small value (``state()``/``restore()``: plain numbers and lists) so the engine can snapshot it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.errors import DetectorError, DetectorParamError

__all__ = ["AnomalyLikelihood", "PostprocessParams", "ScorePostprocessor", "log_likelihood"]

_NO_PARAMS = (math.nan, math.nan)

_LOG_1E_MINUS_10 = math.log(1.0 - 0.9999999999)


def log_likelihood(likelihood: float) -> float:
    """Numenta's log scaling: 0.5 -> 0.03, 0.999 -> 0.3, 0.99999 -> 0.5, 1 - 1e-10 -> 1.0."""
    return math.log(1.0000000001 - likelihood) / _LOG_1E_MINUS_10


def _tail(x: float, mean: float, std: float) -> float:
    """Two-sided Gaussian tail probability (Numenta folds values below the mean onto the upper tail)."""
    z = abs(x - mean) / std
    return 0.5 * math.erfc(z / 1.4142)


class AnomalyLikelihood:
    """Numenta's anomaly likelihood, online.

    ``update(raw, learning=True)`` only records history (returns 0.5). The first non-learning
    update estimates the distribution of the moving average (window ``average``) of raw scores,
    skipping the first half of the rows seen so far (the detector was still settling); it is
    re-estimated every ``reestimate`` rows over the last ``history`` moving averages. The mean and
    variance have floors (``mean_floor``, ``var_floor``) so a near-silent series does not turn its
    first blip into certainty. Consecutive "red" tail probabilities (<= ``red``) are demoted to
    ``yellow``: only the first row of a red run keeps its red score.
    """

    def __init__(
        self,
        average: int = 20,
        history: int = 8640,
        reestimate: int = 100,
        mean_floor: float = 0.03,
        var_floor: float = 0.0003,
        red: float = 1e-5,
        yellow: float = 1e-3,
    ) -> None:
        if average < 1 or history < 2 or reestimate < 1:
            raise DetectorParamError(
                f"AnomalyLikelihood needs average >= 1, history >= 2, reestimate >= 1; "
                f"got {average}, {history}, {reestimate}",
                hint="use the defaults (20, 8640, 100) unless you measured better",
            )
        self.average = average
        self.history = history
        self.reestimate = reestimate
        self.mean_floor = mean_floor
        self.var_floor = var_floor
        self.red = red
        self.yellow = yellow
        self._recent: deque[float] = deque(maxlen=average)
        self._averages: deque[float] = deque(maxlen=history)
        self._seen = 0
        self._skip_before = 0
        self._since_estimate = 0
        self._params: tuple[float, float] | None = None
        self._prev_red = False

    def _estimate(self) -> None:
        # the history holds rows [seen - len, seen); drop those still inside the skipped start
        first = self._seen - len(self._averages)
        values = np.array(self._averages, dtype=np.float64)[max(0, self._skip_before - first) :]
        if len(values) == 0:
            self._params = (0.5, 1e3)  # Numenta's null distribution: nothing is unusual
        else:
            mean = max(float(values.mean()), self.mean_floor)
            var = max(float(values.var()), self.var_floor)
            self._params = (mean, math.sqrt(var))
        self._since_estimate = 0

    def update(self, raw: float, *, learning: bool = False) -> float:
        """Add one raw score; return the likelihood in [0, 1] (0.5 while learning)."""
        self._recent.append(raw)
        avg = sum(self._recent) / len(self._recent)
        if learning:
            self._averages.append(avg)
            self._seen += 1
            return 0.5
        if self._params is None:
            self._skip_before = self._seen // 2
            self._estimate()
        elif self._since_estimate >= self.reestimate:
            self._estimate()
        mean, std = self._params  # type: ignore[misc]
        tail = _tail(avg, mean, std)
        red = tail <= self.red
        if red and self._prev_red:
            tail = self.yellow
        self._prev_red = red
        self._averages.append(avg)
        self._seen += 1
        self._since_estimate += 1
        return 1.0 - tail

    def state(self) -> dict[str, Any]:
        """Everything ``update`` reads and writes, as plain numbers and lists."""
        return {
            "recent": list(self._recent),
            "averages": list(self._averages),
            "seen": self._seen,
            "skip_before": self._skip_before,
            "since_estimate": self._since_estimate,
            "params": list(self._params if self._params is not None else _NO_PARAMS),
            "prev_red": self._prev_red,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()`` value (same parameters)."""
        self._recent = deque(state["recent"], maxlen=self.average)
        self._averages = deque(state["averages"], maxlen=self.history)
        self._seen = int(state["seen"])
        self._skip_before = int(state["skip_before"])
        self._since_estimate = int(state["since_estimate"])
        mean, std = state["params"]
        self._params = None if math.isnan(mean) else (float(mean), float(std))
        self._prev_red = bool(state["prev_red"])


class PointEnsemble(Protocol):
    """What the post-processing needs of point detectors on a series
    (``engine.detectors.point_ensemble.LikelihoodEnsemble``; not imported here, it imports this)."""

    def update(self, ts: float, values: Sequence[float], *, learning: bool = False) -> float: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class PostprocessParams:
    """Parameters of ``ScorePostprocessor`` (see the module docstring).

    ``likelihood`` off passes the [0, 1] score through (a calibrated detector fitted offline is
    already on one scale); ``spatial_tolerance`` None turns the spatial rule off and
    ``suppress_rows`` 0 turns suppression off.
    """

    squash: str = "clip"  # raw -> [0, 1]: "clip" (already a [0, 1] score) or "ratio" (r / (1 + r))
    likelihood: bool = True
    average: int = 20
    history: int = 8640
    reestimate: int = 100
    spatial_tolerance: float | None = 0.05
    suppress_rows: int = 50
    suppress_level: float = 0.5
    suppress_cap: float = 0.3
    sustain_rows: int = 0  # rows of final scores averaged for the sustained alarm (0: none)


class ScorePostprocessor:
    """A [0, 1] score (and the row's watched values) in, final anomaly score in [0, 1] out, per row.

    ``low``/``high`` start the spatial rule's range (e.g. the range of the training rows); without
    them it starts empty and the rule arms once two distinct values were seen.
    """

    def __init__(
        self,
        params: PostprocessParams | None = None,
        *,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        columns: int = 1,
        points: PointEnsemble | None = None,
        with_model: bool = True,
    ) -> None:
        self.params = params or PostprocessParams()
        self.points = points
        self.with_model = with_model
        if self.params.squash not in ("clip", "ratio"):
            raise DetectorParamError(
                f"unknown squash {self.params.squash!r}",
                hint="use 'clip' for [0, 1] raw scores, 'ratio' otherwise",
            )
        p = self.params
        self.likelihood = AnomalyLikelihood(p.average, p.history, p.reestimate) if p.likelihood else None
        self._min = list(low) if low is not None else [math.inf] * columns
        self._max = list(high) if high is not None else [-math.inf] * columns
        self._row = 0
        self._last_alarm: int | None = None
        self._recent: deque[float] = deque(maxlen=max(p.sustain_rows, 1))

    @property
    def sustained(self) -> float:
        """The mean final score of the last ``sustain_rows`` rows (0.0 until there are that many)."""
        n = self.params.sustain_rows
        return math.fsum(self._recent) / n if n and len(self._recent) == n else 0.0

    def squash(self, raw: float) -> float:
        """A raw detector score on [0, 1] (for detectors that are not calibrated)."""
        if self.params.squash == "clip":
            return min(max(raw, 0.0), 1.0)
        r = max(raw, 0.0)
        return r / (1.0 + r)

    def _spatial(self, values: Sequence[float]) -> bool:
        tol = self.params.spatial_tolerance
        hit = False
        lo, hi = self._min, self._max
        for j, value in enumerate(values):
            low, high = lo[j], hi[j]
            if tol is not None and high > low:
                margin = (high - low) * tol
                if value > high + margin or value < low - margin:
                    hit = True
            if value < low:
                lo[j] = value
            if value > high:
                hi[j] = value
        return hit

    def update(
        self,
        score: float,
        values: Sequence[float],
        *,
        warmup: bool = False,
        ts: float = 0.0,
        row: Sequence[float] = (),
    ) -> float:
        """One row: ``score`` in [0, 1] and the watched values; 0.0 during warm-up, else the score.

        With point detectors (``points``), the row's time and whole feature row feed them, and the
        score is the largest of the model's (unless ``with_model`` is false) and theirs.
        """
        p = self.params
        if self.likelihood is not None:
            score = log_likelihood(self.likelihood.update(score, learning=warmup))
        if self.points is not None:
            members = self.points.update(ts, row, learning=warmup)
            score = max(score, members) if self.with_model else members
        spatial = self._spatial(values)
        row = self._row
        self._row += 1
        if warmup:
            score = 0.0
        else:
            if spatial:
                score = 1.0
            if p.suppress_rows and score >= p.suppress_level:
                if self._last_alarm is not None and row - self._last_alarm <= p.suppress_rows:
                    score = min(score, p.suppress_cap)
                else:
                    self._last_alarm = row
        if p.sustain_rows:
            self._recent.append(score)
        return score

    def state(self) -> dict[str, Any]:
        """Everything ``update`` reads and writes, as plain numbers and lists."""
        return {
            "likelihood": self.likelihood.state() if self.likelihood is not None else None,
            "min": list(self._min),
            "max": list(self._max),
            "row": self._row,
            "last_alarm": -1 if self._last_alarm is None else self._last_alarm,
            "points": self.points.state() if self.points is not None else None,
            "recent": list(self._recent),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()`` value (same parameters)."""
        if self.likelihood is not None:
            self.likelihood.restore(state["likelihood"])
        self._min = [float(x) for x in state["min"]]
        self._max = [float(x) for x in state["max"]]
        self._row = int(state["row"])
        last = int(state["last_alarm"])
        self._last_alarm = None if last < 0 else last
        self._recent = deque((float(x) for x in state.get("recent", ())), maxlen=self._recent.maxlen)
        if self.points is not None:
            if state.get("points") is None:
                raise DetectorError(
                    "the state has no point detectors' state, this detector has point detectors",
                    hint="snapshots are only valid for the detector that wrote them",
                )
            self.points.restore(state["points"])
