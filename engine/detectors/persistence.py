"""Save and load fitted detectors with skops: a format that cannot run code when it is read.

Why not pickle: unpickling runs whatever the file says, so a tampered model file is a tampered
host. skops stores an object as a schema plus arrays and rebuilds it without calling anything the
file names; it refuses every type it is not told to trust. We trust exactly the types a detector
is made of: our detectors (``engine.detectors``), PyOD's models and the scikit-learn and numpy
types inside them. A file naming any other type (``os.system``, ``builtins.eval``, a class of
some other package) is refused before anything is built, with the types it named.

The payload records the versions of selfheal, PyOD, scikit-learn and numpy; loading under other
versions logs a warning naming them (scores may differ; bundles also replay probe rows).
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from engine.detectors.base import Detector
from engine.errors import DetectorError

__all__ = ["TRUSTED_MODULES", "detector_from_bytes", "detector_to_bytes", "load_detector", "save_detector"]

log = logging.getLogger(__name__)

_FORMAT = "selfheal-detector"
_FORMAT_VERSION = 2
_PACKAGES = ("selfheal", "pyod", "scikit-learn", "numpy")

TRUSTED_MODULES = ("engine.detectors.", "pyod.models.", "sklearn.", "numpy.")
"""Module prefixes of the types a saved detector may contain (everything else is refused)."""


def _versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def detector_to_bytes(detector: Detector) -> bytes:
    """A (fitted or unfitted) detector as skops bytes, with the library versions that made it."""
    import skops.io as sio

    payload: dict[str, Any] = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "versions": _versions(),
        "detector": detector,
    }
    return sio.dumps(payload)


def detector_from_bytes(data: bytes, *, source: str = "<bytes>") -> Detector:
    """The detector in ``data`` (``detector_to_bytes``); refuses any type outside ``TRUSTED_MODULES``."""
    import skops.io as sio

    try:
        types = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises several types for a file that is not a skops archive
        raise DetectorError(
            f"{source}: cannot be read as a saved detector: {exc}",
            hint="the file is corrupt or not a detector",
        ) from exc
    refused = sorted(t for t in types if not t.startswith(TRUSTED_MODULES))
    if refused:
        raise DetectorError(
            f"{source}: refusing to load types a detector is not made of: {', '.join(refused)}",
            hint="only load detectors saved by selfheal; rebuild the file from its MLflow run",
        )
    try:
        payload = sio.loads(data, trusted=types)
    except Exception as exc:
        raise DetectorError(
            f"{source}: cannot be read as a saved detector: {exc}",
            hint="the file is corrupt or not a detector",
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise DetectorError(
            f"{source}: not a selfheal detector file", hint="save detectors with save_detector"
        )
    if payload.get("format_version") != _FORMAT_VERSION:
        raise DetectorError(
            f"{source}: detector file format {payload.get('format_version')} is not supported "
            f"(this selfheal reads format {_FORMAT_VERSION})",
            hint="re-train and save the detector with this version",
        )
    saved, now = payload.get("versions", {}), _versions()
    changed = {k: (saved.get(k), now[k]) for k in now if saved.get(k) != now[k] and k != "selfheal"}
    if changed:
        log.warning("%s was saved under other library versions %s; scores may differ", source, changed)
    return payload["detector"]


def save_detector(detector: Detector, path: Path | str) -> Path:
    """Write a (fitted or unfitted) detector to ``path`` (skops); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(detector_to_bytes(detector))
    return path


def load_detector(path: Path | str) -> Detector:
    """Read a detector written by ``save_detector``; scores equal those before saving."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(
            f"{path}: no saved detector there", hint="check the path or save one with save_detector"
        )
    return detector_from_bytes(path.read_bytes(), source=str(path))
