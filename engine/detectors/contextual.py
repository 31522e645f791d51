"""ContextNovelty: is the current context of quantised recent values one this series has seen?

In the spirit of CAD OSE (Smirnov, "Contextual Anomaly Detector", NAB 2016, numenta/NAB
``nab/detectors/context_ose``): a value is quantised into ``bins`` levels (CAD OSE uses 3 bits, 8
levels) over the range seen so far, the last ``depth`` levels form contexts of lengths 1..depth,
and the score is the fraction of those contexts never seen before on this series. A series that
keeps repeating its patterns scores 0; a new shape (a new level, a new up-down rhythm) scores high
at its first points, which is where NAB rewards a detection.

Unlike CAD OSE in NAB, the range is the one seen so far (NAB hands CAD OSE the whole file's
minimum and maximum, a look-ahead a live stream cannot have). Memory is bounded: when
``max_contexts`` contexts are known, the counts start afresh (CAD OSE bounds its context store too).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from engine.detectors.pointwise import PointDetector


class ContextNovelty(PointDetector):
    """Fraction of the current contexts (lengths 1..depth of quantised values) never seen before."""

    name: ClassVar[str] = "ContextNovelty"
    DEFAULTS: ClassVar[dict[str, Any]] = {"bins": 8, "depth": 4, "max_contexts": 50_000}

    def _check(self) -> None:
        p = self.params
        self._need(isinstance(p["bins"], int) and 2 <= p["bins"] <= 64, "bins must be an integer in [2, 64]")
        self._need(isinstance(p["depth"], int) and 1 <= p["depth"] <= 8, "depth must be an integer in [1, 8]")
        self._need(
            isinstance(p["max_contexts"], int) and p["max_contexts"] >= 16, "max_contexts must be >= 16"
        )
        self._low = math.inf
        self._high = -math.inf
        self._recent: deque[int] = deque(maxlen=p["depth"])
        self._counts: dict[int, int] = {}

    def _level(self, value: float) -> int:
        bins = self.params["bins"]
        if not self._high > self._low:
            return 0
        return min(int((value - self._low) / (self._high - self._low) * bins), bins - 1)

    def update(self, ts: float, value: float) -> float:
        self._low = min(self._low, value)
        self._high = max(self._high, value)
        self._recent.append(self._level(value))
        bins = self.params["bins"]
        key = 0
        new = 0
        counts = self._counts
        for length, level in enumerate(reversed(self._recent), start=1):
            # the context of this length, as one integer: its levels in base bins, plus its length
            key = key * bins + level
            ctx = key * 16 + length
            seen = counts.get(ctx, 0)
            if seen == 0:
                new += 1
            counts[ctx] = seen + 1
        if len(counts) > self.params["max_contexts"]:
            counts.clear()
        return new / self.params["depth"]

    def state(self) -> dict[str, Any]:
        return {
            "low": self._low,
            "high": self._high,
            "recent": list(self._recent),
            "counts": [[k, v] for k, v in self._counts.items()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self._low = float(state["low"])
        self._high = float(state["high"])
        self._recent = deque((int(x) for x in state["recent"]), maxlen=self.params["depth"])
        self._counts = {int(k): int(v) for k, v in state["counts"]}
