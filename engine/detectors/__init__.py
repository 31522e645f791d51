"""Anomaly detectors: one small protocol, a registry, PyOD behind an adapter.

Importing this package is cheap: PyOD is imported only when a PyOD detector is built, and the
registry loads its plugin modules on first use.

    >>> import numpy as np
    >>> from engine.detectors import make_detector
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> det = make_detector("HBOS").fit(X, feature_names=["a", "b", "c"])
    >>> bool(det.score(X[:1] + 10.0)[0] > np.median(det.score(X)))
    True
"""

from __future__ import annotations

from engine.detectors.base import Detector
from engine.detectors.persistence import load_detector, save_detector
from engine.detectors.registry import available_detectors, make_detector, register_detector

__all__ = [
    "Detector",
    "available_detectors",
    "load_detector",
    "make_detector",
    "register_detector",
    "save_detector",
]
