"""The ScoringPipeline: feature spec + detector + calibrator + threshold, as one unit.

This is the thing experiments tune, MLflow stores (wrapped as a pyfunc in ``engine.tracking``),
bundles ship and the engine runs; one object so that the scores a notebook saw are the scores
production computes. It deliberately imports nothing from MLflow: a bundle runs without it.

Scoring accepts the three shapes the project produces: a batch feature frame from
``engine.features.batch_features`` (``ts, service, *feature_names``), a list of online
``FeatureRow`` micro-batches, or a plain matrix in ``feature_names`` order. Scores are calibrated to
[0, 1]; ``alarms`` applies the fitted threshold separately so that either can be retuned.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine.errors import DetectorError, FeatureMismatchError, NotFittedError

logger = logging.getLogger(__name__)

PICKLE_NAME = "pipeline.pkl"
MANIFEST_NAME = "pipeline.json"
FORMAT_VERSION = 1


class ScoringPipeline:
    """Features in, calibrated anomaly scores out (higher = more anomalous), plus a threshold.

    ``threshold`` is ``{"kind": "quantile", "q": 0.99}`` (a quantile of the calibrated training
    scores) or ``{"kind": "fixed", "value": 0.9}``.
    """

    def __init__(
        self,
        feature_spec: Any,
        detector: str,
        params: Mapping[str, Any] | None = None,
        *,
        calibration: str | None = None,
        threshold: Mapping[str, Any] | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.feature_spec = feature_spec
        self.detector = detector
        self.params = dict(params or {})
        self.calibration = calibration
        self.threshold = dict(threshold or {"kind": "quantile", "q": 0.99})
        self.random_state = random_state

    # ---------------------------------------------------------------------------------------- fit

    @property
    def feature_names(self) -> list[str]:
        return list(self.feature_spec.feature_names)

    def fit(self, features: pl.DataFrame | np.ndarray) -> ScoringPipeline:
        """Fit detector, calibrator and threshold on training features; returns self."""
        from engine.detectors import make_detector
        from engine.detectors.calibration import FixedThreshold, QuantileThreshold, ScoreCalibrator

        X = self._matrix(features)
        if len(X) == 0:
            raise DetectorError(
                "no training rows to fit on", hint="widen the training time range or check the feature spec"
            )
        det = make_detector(self.detector, self.params, random_state=self.random_state)
        det.fit(X, feature_names=self.feature_names)
        raw = det.score(X)
        cal = ScoreCalibrator(self.calibration) if self.calibration else ScoreCalibrator()
        cal.fit(raw)
        calibrated = cal.transform(raw)
        if self.threshold.get("kind", "quantile") == "fixed":
            thr = FixedThreshold(float(self.threshold["value"]))
            fit = getattr(thr, "fit", None)
            if callable(fit):
                fit(calibrated)
        else:
            thr = QuantileThreshold(q=float(self.threshold.get("q", 0.99))).fit(calibrated)
        self.detector_ = det
        self.calibrator_ = cal
        self.threshold_obj_ = thr
        self.threshold_ = float(thr.threshold_)
        self.n_train_ = len(X)
        logger.debug("fitted %s on %d rows; threshold %.4f", self.detector, len(X), self.threshold_)
        return self

    # -------------------------------------------------------------------------------------- score

    def score_matrix(self, X: np.ndarray) -> np.ndarray:
        """Calibrated scores in [0, 1] for rows in ``feature_names`` order."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise FeatureMismatchError(
                f"expected a matrix with {len(self.feature_names)} feature columns "
                f"({', '.join(self.feature_names)}), got shape {X.shape}",
                hint="build rows with the pipeline's feature spec",
            )
        if len(X) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(self.calibrator_.transform(self.detector_.score(X)), dtype=np.float64)

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated detector scores (for diagnostics; production uses calibrated scores)."""
        self._check_fitted()
        return np.asarray(self.detector_.score(np.asarray(X, dtype=np.float64)), dtype=np.float64)

    def score_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """Calibrated scores for a batch feature frame (``ts, service, *feature_names``)."""
        return self.score_matrix(self._matrix(frame))

    def score_rows(self, rows: Sequence[Any]) -> np.ndarray:
        """Calibrated scores for online ``FeatureRow``s, scored as one micro-batch across services."""
        if not rows:
            return np.empty(0, dtype=np.float64)
        return self.score_matrix(np.array([r.values for r in rows], dtype=np.float64))

    def alarms(self, scores: np.ndarray) -> np.ndarray:
        """Boolean alarms: calibrated score strictly above the fitted threshold."""
        self._check_fitted()
        return np.asarray(scores, dtype=np.float64) > self.threshold_

    # ------------------------------------------------------------------------------- persistence

    def describe(self) -> dict[str, Any]:
        """JSON-safe facts about the pipeline (written beside the pickle, logged to MLflow)."""
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "detector": self.detector,
            "params": _jsonable(self.params),
            "calibration": self.calibration,
            "threshold_policy": self.threshold,
            "random_state": self.random_state,
            "feature_names": self.feature_names,
            "feature_spec": self.feature_spec.model_dump(mode="json"),
        }
        if hasattr(self, "threshold_"):
            out["threshold"] = self.threshold_
            out["n_train"] = self.n_train_
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``pipeline.pkl`` and a readable ``pipeline.json`` into ``directory``; return it."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / PICKLE_NAME, "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        (directory / MANIFEST_NAME).write_text(json.dumps(self.describe(), indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ScoringPipeline:
        """Load a saved pipeline. The pickle runs code: only load what you (or a verified bundle) wrote."""
        path = Path(directory) / PICKLE_NAME
        if not path.is_file():
            raise DetectorError(f"{path} not found", hint="point at a folder written by ScoringPipeline.save")
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
        if not isinstance(obj, cls):
            raise DetectorError(f"{path} does not hold a ScoringPipeline (got {type(obj).__name__})")
        return obj

    # ---------------------------------------------------------------------------------- helpers

    def _matrix(self, features: pl.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(features, pl.DataFrame):
            missing = [c for c in self.feature_names if c not in features.columns]
            if missing:
                raise FeatureMismatchError(
                    f"feature frame lacks column(s) {', '.join(missing)}",
                    hint="compute it with engine.features.batch_features and the pipeline's feature spec",
                )
            return features.select(self.feature_names).to_numpy().astype(np.float64, copy=False)
        return np.asarray(features, dtype=np.float64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "detector_"):
            raise NotFittedError(f"ScoringPipeline({self.detector}) is not fitted", hint="call fit() first")

    def __repr__(self) -> str:
        state = f"threshold={self.threshold_:.4f}" if hasattr(self, "threshold_") else "unfitted"
        return f"ScoringPipeline({self.detector}, {self.params}, {state})"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
