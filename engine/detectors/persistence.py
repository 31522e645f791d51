"""Save and load fitted detectors (joblib), with the library versions that produced them.

A pickle is only as portable as the classes inside it: the file records the versions of selfheal,
PyOD, scikit-learn and numpy, and loading under different versions logs a warning naming them
(scores may differ). Load only files you trust: unpickling runs code. Bundles add hashing on top.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from engine.detectors.base import Detector
from engine.errors import DetectorError

__all__ = ["load_detector", "save_detector"]

log = logging.getLogger(__name__)

_FORMAT = "selfheal-detector"
_FORMAT_VERSION = 1
_PACKAGES = ("selfheal", "pyod", "scikit-learn", "numpy")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def save_detector(detector: Detector, path: Path | str) -> Path:
    """Write a (fitted or unfitted) detector to ``path``; returns the path."""
    import joblib  # imported here: it costs ~80 ms and most importers never save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "versions": _versions(),
        "detector": detector,
    }
    joblib.dump(payload, path, compress=3)
    return path


def load_detector(path: Path | str) -> Detector:
    """Read a detector written by ``save_detector``; scores equal those before saving."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise DetectorError(
            f"{path}: no saved detector there", hint="check the path or save one with save_detector"
        )
    try:
        payload = joblib.load(path)
    except Exception as exc:  # joblib/pickle raise many types for a corrupt or foreign file
        raise DetectorError(
            f"{path}: cannot be read as a saved detector: {exc}", hint="the file is corrupt or not a detector"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DetectorError(f"{path}: not a selfheal detector file", hint="save detectors with save_detector")
    if payload.get("format_version") != _FORMAT_VERSION:
        raise DetectorError(
            f"{path}: detector file format {payload.get('format_version')} is not supported "
            f"(this selfheal reads format {_FORMAT_VERSION})",
            hint="re-train and save the detector with this version",
        )
    saved, now = payload.get("versions", {}), _versions()
    changed = {k: (saved.get(k), now[k]) for k in now if saved.get(k) != now[k] and k != "selfheal"}
    if changed:
        log.warning("%s was saved under other library versions %s; scores may differ", path, changed)
    return payload["detector"]
