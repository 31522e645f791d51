"""The point detectors' registry and their ensemble of likelihoods (see ``engine.detectors.pointwise``).

Apart from the base class so that the detector modules, which import the base, and the registry,
which imports them, do not import each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from engine.detectors.changepoint import LevelShift
from engine.detectors.contextual import ContextNovelty
from engine.detectors.likelihood import AnomalyLikelihood, log_likelihood
from engine.detectors.pointwise import STATE_FORMAT, PointDetector
from engine.detectors.seasonal import SeasonalProfile
from engine.detectors.spectral_residual import SpectralResidual
from engine.errors import DetectorError, DetectorParamError

__all__ = [
    "LikelihoodEnsemble",
    "available_point_detectors",
    "make_point_detector",
    "point_detector_from_bytes",
]

POINT_DETECTORS: dict[str, type[PointDetector]] = {
    c.name: c for c in (ContextNovelty, SeasonalProfile, LevelShift, SpectralResidual)
}


def available_point_detectors() -> list[str]:
    return sorted(POINT_DETECTORS)


def make_point_detector(name: str, params: Mapping[str, Any] | None = None) -> PointDetector:
    """A fresh point detector by name; an unknown name or parameter fails with the known ones."""
    registry = POINT_DETECTORS
    if name not in registry:
        raise DetectorParamError(f"unknown point detector {name!r}", hint=f"choose among {sorted(registry)}")
    return registry[name](**dict(params or {}))


def point_detector_from_bytes(blob: bytes) -> PointDetector:
    """A detector written by ``to_bytes``, continuing from its state."""
    try:
        doc = json.loads(blob)
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError("not a point-detector state of this format")
        det = make_point_detector(doc["name"], doc["params"])
        det.restore(doc["state"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DetectorError(
            f"point detector state cannot be read: {exc}", hint="discard the snapshot"
        ) from exc
    return det


class LikelihoodEnsemble:
    """Point detectors on one series, each raw score through its own anomaly likelihood; the
    combined score is the largest log-likelihood (the most surprised member decides).

    Why likelihoods and not raw scores: members' raw scores live on different scales and differ
    from series to series; a likelihood asks how unusual the recent scores are for this member on
    this series, so one threshold serves them all. Member ``i`` reads column ``columns[i]`` of the
    values it is given (default: every member reads column 0). The stream detector keeps one in
    each series' post-processing state (``ScorePostprocessor``), where the model's own score joins
    the maximum.
    """

    def __init__(
        self,
        members: Sequence[PointDetector],
        *,
        columns: Sequence[int] | None = None,
        average: int = 20,
        history: int = 8640,
        reestimate: int = 100,
    ) -> None:
        self.members = list(members)
        self.columns = list(columns) if columns is not None else [0] * len(self.members)
        if len(self.columns) != len(self.members):
            raise DetectorParamError(
                f"{len(self.members)} member(s) but {len(self.columns)} column(s)",
                hint="give one column per member",
            )
        self._likelihoods = [AnomalyLikelihood(average, history, reestimate) for _ in self.members]

    def update(self, ts: float, values: Sequence[float], *, learning: bool = False) -> float:
        """One row (time, values): the combined score in [0, 1] (0.0 while learning; members learn
        throughout)."""
        best = 0.0
        for member, column, lik in zip(self.members, self.columns, self._likelihoods, strict=True):
            raw = member.update(ts, values[column])
            p = lik.update(min(max(raw, 0.0), 1.0), learning=learning)
            if not learning:
                best = max(best, log_likelihood(p))
        return best

    def state(self) -> dict[str, Any]:
        """Every member's and every likelihood's state (plain numbers and lists)."""
        return {
            "members": [m.state() for m in self.members],
            "likelihoods": [lik.state() for lik in self._likelihoods],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()`` value (same members, parameters and columns)."""
        members, likelihoods = state["members"], state["likelihoods"]
        if len(members) != len(self.members) or len(likelihoods) != len(self._likelihoods):
            raise DetectorError(
                f"the state holds {len(members)} point detector(s), this ensemble has {len(self.members)}",
                hint="snapshots are only valid for the detector that wrote them",
            )
        for member, value in zip(self.members, members, strict=True):
            member.restore(value)
        for lik, value in zip(self._likelihoods, likelihoods, strict=True):
            lik.restore(value)
