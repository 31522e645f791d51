"""Online rows as a frame shaped like ``batch_features`` output (for comparisons and scoring)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from engine.features.batch import empty_features
from engine.features.online import FeatureRow
from engine.features.spec import FeatureSpec


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


def rows_to_frame(
    rows: Sequence[FeatureRow], spec: FeatureSpec, *, with_windows: bool = False
) -> pl.DataFrame:
    """``ts, service, *spec.feature_names`` (+ windows) from online rows, sorted by service, ts."""
    if not rows:
        return empty_features(spec, with_windows=with_windows)
    names = spec.feature_names
    data: dict[str, list] = {
        "ts": [_us(r.ts) for r in rows],
        "service": [r.service for r in rows],
    }
    for i, name in enumerate(names):
        data[name] = [r.values[i] for r in rows]
    if with_windows:
        data["window_start"] = [_us(r.window_start) for r in rows]
        data["window_end"] = [_us(r.window_end) for r in rows]
    frame = pl.DataFrame(data, schema_overrides={n: pl.Float64 for n in names})
    casts = [pl.col("ts").cast(pl.Datetime("us"))]
    if with_windows:
        casts += [pl.col(c).cast(pl.Datetime("us")) for c in ("window_start", "window_end")]
    return frame.with_columns(casts).sort(["service", "ts"])
