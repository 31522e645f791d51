"""Point detectors: score one series a point at a time, with explicit serialisable state.

Why a second protocol beside ``Detector`` (fit on rows, score rows): the detectors here learn as
the stream advances (context counts, seasonal profiles, cumulative sums, a sliding spectrum), so
there is nothing to fit offline and everything they know is per-series state. The protocol is
small so the streaming scorer, the engine and a test drive them the same way::

    from engine.detectors.point_ensemble import make_point_detector, point_detector_from_bytes

    det = make_point_detector("ContextNovelty", {"bins": 8})
    raw = det.update(ts, value)            # a raw score in [0, 1], higher = more surprising
    blob = det.to_bytes()                  # name, params and state as JSON: numbers and lists only
    det = point_detector_from_bytes(blob)  # continues exactly where it stopped

This module holds their base class; ``engine.detectors.point_ensemble`` their registry and the
ensemble. Each detector sees another side of an anomaly; ``LikelihoodEnsemble`` puts their raw
scores on one scale (each through its own Numenta anomaly likelihood, Ahmad et al. 2017) and keeps
the most surprised one. The members: ``ContextNovelty`` (contexts of quantised recent values, after CAD
OSE), ``SeasonalProfile`` (daily/weekly profiles learnt from the stream), ``LevelShift`` (two-sided
CUSUM, Page 1954) and ``SpectralResidual`` (Ren et al. 2019).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from engine.errors import DetectorParamError

__all__ = ["PointDetector"]

STATE_FORMAT = 1


class PointDetector:
    """Base of the point detectors: parameters checked at construction, state as plain values.

    Subclasses set ``name`` and ``DEFAULTS`` (every parameter with its default), implement
    ``_check`` (raise ``DetectorParamError`` on a bad value), ``update``, ``state`` and ``restore``.
    """

    name: ClassVar[str]
    DEFAULTS: ClassVar[dict[str, Any]]

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise DetectorParamError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}",
                hint=f"parameters are {sorted(self.DEFAULTS)}",
            )
        self.params = {**self.DEFAULTS, **params}
        self._check()

    def _check(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def _need(self, ok: bool, what: str) -> None:
        if not ok:
            raise DetectorParamError(f"{self.name}: {what}", hint=f"defaults: {self.DEFAULTS}")

    def update(self, ts: float, value: float) -> float:
        """One point (epoch seconds, value): its raw score in [0, 1], then learn from it."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """Everything ``update`` reads and writes, as JSON-safe numbers and lists."""
        raise NotImplementedError

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()`` value (same parameters)."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Name, parameters and state: what ``point_detector_from_bytes`` needs (no code)."""
        doc = {"format": STATE_FORMAT, "name": self.name, "params": self.params, "state": self.state()}
        return json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
