"""Features: one declared spec, two executions that agree bitwise.

``FeatureSpec`` declares the resample interval, aggregation, allowed lateness and per-metric
transforms; ``batch_features`` computes them over history and ``OnlineFeatures`` one point at a
time. The policy for gaps, late and out-of-order points is in ``engine.features.online``; the
exact formulas are in ``engine.features.definitions``.
"""

from __future__ import annotations

from engine.features.batch import batch_features, empty_features
from engine.features.frames import rows_to_frame
from engine.features.online import FeatureRow, OnlineFeatures
from engine.features.spec import FeatureSpec, MetricSpec, parse_duration

__all__ = [
    "FeatureRow",
    "FeatureSpec",
    "MetricSpec",
    "OnlineFeatures",
    "batch_features",
    "empty_features",
    "parse_duration",
    "rows_to_frame",
]
