"""A fitted stream detector as files: readable JSON plus one skops file per fitted model.

Layout of the folder (what MLflow stores under ``artifacts/detector`` and a bundle ships under
``detector/``)::

    detector.json          format, versions, the StreamConfig, and what fit learned per group
                           (calibrator knots, feature ranges, training rows), per role of several
                           groups (its calibrator) and the threshold
    models/<group>.skops   the group's fitted model (absent when the model is refitted per series)

Nothing here runs code at load: the JSON is data, and models go through
``engine.detectors.persistence`` (skops, with only the detector's own types trusted). ``from_files``
takes the bytes themselves, so a bundle loader hands over exactly the bytes it verified.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.detectors.persistence import _versions, detector_from_bytes, detector_to_bytes
from engine.detectors.stream import StreamDetector
from engine.detectors.stream_config import StreamConfig
from engine.errors import DetectorError

__all__ = [
    "DETECTOR_JSON",
    "FORMAT",
    "FORMAT_VERSION",
    "detector_json",
    "from_files",
    "load_detector_dir",
    "save_detector_dir",
    "to_files",
]

FORMAT = "selfheal-stream-detector"
FORMAT_VERSION = 2
DETECTOR_JSON = "detector.json"
MODELS_DIR = "models"


def to_files(det: StreamDetector) -> dict[str, bytes]:
    """Relative path -> bytes of every file of the artifact."""
    files = {path: detector_to_bytes(det._groups[name].model) for name, path in _model_paths(det).items()}
    files[DETECTOR_JSON] = detector_json(det)
    return files


def _model_paths(det: StreamDetector) -> dict[str, str]:
    return {name: f"{MODELS_DIR}/{name}.skops" for name, g in det._groups.items() if g.model is not None}


def detector_json(det: StreamDetector) -> bytes:
    """The artifact's ``detector.json``: everything but the models' bytes (what a snapshot of
    per-series states is valid for, ``engine.runtime.states``)."""
    det._check_fitted()
    paths = _model_paths(det)
    groups: dict[str, Any] = {}
    for name, group in det._groups.items():
        entry: dict[str, Any] = {
            "calibrator": group.calibrator.to_dict() if group.calibrator is not None else None,
            "low": group.low,
            "high": group.high,
            "n_train": group.n_train,
            "model": paths.get(name),
        }
        groups[name] = entry
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "config": det.config.model_dump(mode="json", by_alias=True),
        "threshold": det.threshold_,
        "sustained_threshold": None if math.isinf(det.sustained_threshold_) else det.sustained_threshold_,
        "groups": groups,
        "roles": {key: cal.to_dict() for key, cal in sorted(det.role_calibrations().items())},
        "describe": det.describe(),
    }
    # key order is meaning here: a feature spec's metrics order is the column order of its rows
    return (json.dumps(doc, indent=2) + "\n").encode()


def from_files(files: Mapping[str, bytes], *, source: str = "<detector>") -> StreamDetector:
    """The detector in ``files`` (``to_files``); errors name ``source`` and the file at fault."""
    from engine.detectors.calibration import ScoreCalibrator

    raw = files.get(DETECTOR_JSON)
    if raw is None:
        raise DetectorError(
            f"{source}: no {DETECTOR_JSON}", hint="point at a folder written by save_detector_dir"
        )
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise DetectorError(
            f"{source}/{DETECTOR_JSON}: not JSON: {exc}", hint="rebuild the artifact"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DetectorError(f"{source}/{DETECTOR_JSON}: not a selfheal stream detector", hint="rebuild it")
    if doc.get("format_version") != FORMAT_VERSION:
        raise DetectorError(
            f"{source}/{DETECTOR_JSON}: detector format {doc.get('format_version')!r}, this selfheal reads "
            f"{FORMAT_VERSION}",
            hint="re-run the experiment that made it with this selfheal",
        )
    det = StreamDetector(StreamConfig.model_validate(doc["config"]))
    det.threshold_ = float(doc["threshold"])
    if det.config.threshold.sustained is not None:
        if doc.get("sustained_threshold") is None:
            raise DetectorError(
                f"{source}/{DETECTOR_JSON}: its config has threshold.sustained but no sustained_threshold",
                hint="re-run the experiment that made it with this selfheal",
            )
        det.sustained_threshold_ = float(doc["sustained_threshold"])
    for name, entry in doc["groups"].items():
        group = det._groups.get(name)
        if group is None:
            raise DetectorError(f"{source}/{DETECTOR_JSON}: groups.{name} is not a group of its config")
        if entry["model"] is not None:
            blob = files.get(entry["model"])
            if blob is None:
                raise DetectorError(f"{source}: {entry['model']} is missing", hint="rebuild the artifact")
            group.model = detector_from_bytes(blob, source=f"{source}/{entry['model']}")
        if entry["calibrator"] is not None:
            group.calibrator = ScoreCalibrator.from_dict(entry["calibrator"])
        group.low = entry["low"]
        group.high = entry["high"]
        group.n_train = int(entry["n_train"])
    for key, entry in doc["roles"].items():
        if any(name not in det._groups for name in key.split("+")):
            raise DetectorError(f"{source}/{DETECTOR_JSON}: roles.{key} names a group its config lacks")
        det._role_by_key(key).calibrator = ScoreCalibrator.from_dict(entry)
    return det


def save_detector_dir(det: StreamDetector, directory: str | Path) -> Path:
    """Write the artifact's files into ``directory`` (created); returns it."""
    directory = Path(directory)
    for rel, data in to_files(det).items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def load_detector_dir(directory: str | Path) -> StreamDetector:
    """Read an artifact folder written by ``save_detector_dir``."""
    directory = Path(directory)
    if not (directory / DETECTOR_JSON).is_file():
        raise DetectorError(
            f"{directory}: no {DETECTOR_JSON} there", hint="point at a folder written by save_detector_dir"
        )
    files = {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    return from_files(files, source=str(directory))
