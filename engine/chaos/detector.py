"""The detector a chaos run uses when it is given no bundle: fitted on clean synthetic history.

Why train here at all: ``selfheal chaos run EXPERIMENT`` must work on a fresh clone, before any
sweep or promotion exists. The pipeline is the project's own ``ScoringPipeline`` (the same class a
bundle ships), fitted on incident-free stretches of ``generate`` history of the very platform model
the simulation runs, over the metrics every service emits (a feature row needs all of them).
Z-scores against trailing windows rather than ratios: after a fault ends, a ratio against a
window that still holds the fault's values reads as a new anomaly for the window's length (an
"echo" that fails verification), while a z-score's inflated spread reads it as normal. Long
(4-hour) windows keep a slow fault visible on its plateau; the warm-up is four hours of history.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from engine.simulation.config import SynthConfig

log = logging.getLogger(__name__)

DEFAULT_FEATURES: dict[str, Any] = {
    "interval": "1m",
    "aggregation": "mean",
    "metrics": {
        "request_rate": {"transforms": [{"kind": "zscore", "window": 30, "min_std": 1.0}]},
        "latency_p50_ms": {
            "transforms": [
                {"kind": "zscore", "window": 30, "min_std": 1.0},
                {"kind": "zscore", "window": 240, "min_std": 1.0},
            ]
        },
        "latency_p99_ms": {
            "transforms": [
                {"kind": "zscore", "window": 30, "min_std": 1.0},
                {"kind": "zscore", "window": 240, "min_std": 1.0},
            ]
        },
        # errors trigger rollbacks, so only sudden error changes should stand out: the mean (the
        # per-minute max of a lognormal rate is spiky) against the last ten minutes, which absorb the
        # slow error drift a latency creep causes while a bad deploy or an outage jumps out of it
        "error_rate": {"transforms": [{"kind": "zscore", "window": 10, "min_std": 0.002}]},
        "cpu_util": {"transforms": [{"kind": "zscore", "window": 30, "min_std": 0.01}]},
        "memory_util": {
            "transforms": [
                "raw",
                {"kind": "zscore", "window": 30, "min_std": 0.005},
                {"kind": "zscore", "window": 60, "min_std": 0.005},
                {"kind": "zscore", "window": 240, "min_std": 0.005},
            ]
        },
    },
}
#: Several features each for latency and memory: the engine names an event's three strongest
#: features as its contributing metrics, and policies match on them. When a fault moves one signal,
#: its three features fill those slots instead of leaving one to whichever other feature is noisiest.
#: PCA's score (a Mahalanobis-like distance) keeps growing with a feature's deviation; IForest's and
#: HBOS's saturate, which made slow faults (a creep, a leak) flicker around the threshold.
DEFAULT_DETECTOR = "PCA"
DEFAULT_PARAMS: dict[str, Any] = {}
TRAIN_START = datetime(2025, 12, 1)
MARGIN = timedelta(hours=1)  # around labeled incidents: cascades and recoveries are not normal


def warmup_seconds(feature_spec: Any) -> float:
    """Platform time an online feature state needs before its first complete row (plus slack)."""
    span = max(m.span for m in feature_spec.metrics.values())
    return (span + 3) * float(feature_spec.interval)


def train_default_pipeline(
    config: SynthConfig | None = None,
    *,
    days: float = 2.0,
    seed: int = 0,
    features: dict[str, Any] | None = None,
) -> Any:
    """Fit the default chaos pipeline on ``days`` of synthetic history with incidents cut out."""
    from engine.detectors.pipeline import ScoringPipeline
    from engine.features import FeatureSpec, batch_features
    from engine.telemetry.synth import generate, load_config

    cfg = config or load_config()
    data = generate(cfg, days=days, seed=seed, start=TRAIN_START)
    spec = FeatureSpec.model_validate(features or DEFAULT_FEATURES)
    frame = batch_features(data.points, spec)
    for row in data.incidents.iter_rows(named=True):
        frame = frame.filter(~pl.col("ts").is_between(row["start"] - MARGIN, row["end"] + MARGIN))
    pipeline = ScoringPipeline(
        spec,
        DEFAULT_DETECTOR,
        DEFAULT_PARAMS,
        calibration="ecdf",
        threshold={"kind": "quantile", "q": 0.995},
        random_state=seed,
    ).fit(frame)
    log.info(
        "default chaos pipeline: %s on %d clean rows, threshold %.3f",
        DEFAULT_DETECTOR,
        frame.height,
        pipeline.threshold_,
    )
    return pipeline
