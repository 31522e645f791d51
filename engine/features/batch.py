"""Batch features over history: the online policy applied to a whole frame at once.

Polars does the relational part (filter, codes, joins); the per-window arithmetic is numpy,
vectorised across all series, with the same operations in the same order as the online path (see
``engine.features.definitions``), so the two agree bitwise on the same accepted points. Batch sees
every point, so it is equal to online when no point was late; to compare with an online run that
dropped late points, pass batch only the points online accepted.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from engine.errors import InputError
from engine.features.definitions import VALUE_LIMIT, batch_kernel, sorted_segment_sums
from engine.features.spec import FeatureSpec

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("ts", "service", "metric", "value")


def empty_features(spec: FeatureSpec, *, with_windows: bool = False) -> pl.DataFrame:
    """The schema of ``batch_features`` with no rows."""
    schema: dict[str, pl.DataType] = {"ts": pl.Datetime("us"), "service": pl.Utf8()}
    schema.update({name: pl.Float64() for name in spec.feature_names})
    if with_windows:
        schema.update({"window_start": pl.Datetime("us"), "window_end": pl.Datetime("us")})
    return pl.DataFrame(schema=schema)


def batch_features(points: pl.DataFrame, spec: FeatureSpec, *, with_windows: bool = False) -> pl.DataFrame:
    """Complete feature rows ``ts, service, *spec.feature_names`` for every (service, bucket).

    ``points`` is long-format telemetry (``ts`` Datetime, ``service``, ``metric``, ``value``), in any
    order. ``ts`` is the bucket start; rows are sorted by service, then ts. ``with_windows`` adds
    ``window_start``/``window_end``: the input time range behind each row, as online rows carry it.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in points.columns]
    if missing:
        raise InputError(
            f"points lack column(s) {', '.join(missing)} (have {', '.join(points.columns) or 'none'})",
            hint="pass long-format telemetry: ts, service, metric, value (as TelemetryStore.points returns)",
        )
    if not isinstance(points.schema["ts"], pl.Datetime):
        raise InputError(
            f"points.ts must be a Datetime column, got {points.schema['ts']}",
            hint="convert with pl.col('ts').str.to_datetime() or pl.from_epoch(..., time_unit='s')",
        )
    metrics = spec.metric_names
    ts = pl.col("ts")
    if getattr(points.schema["ts"], "time_zone", None):
        ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    df = points.lazy().select(
        ts.cast(pl.Datetime("us")).dt.epoch("us").alias("ts_us"),
        pl.col("service").cast(pl.Utf8),
        pl.col("metric").cast(pl.Utf8),
        pl.col("value").cast(pl.Float64),
    )
    kinds = [spec.aggregation_of(m) for m in metrics]
    df = df.filter(
        pl.col("metric").is_in(metrics)
        & pl.col("value").is_finite()
        & pl.col("ts_us").is_not_null()
        & pl.col("service").is_not_null()
    ).collect()
    if df.height == 0:
        return empty_features(spec, with_windows=with_windows)
    services = sorted(df["service"].unique().to_list())
    df = _sort_for_aggregation(df, services, metrics, kinds, spec.interval_us)
    seg_svc, seg_met, seg_bucket, seg_value = _aggregate(
        kinds,
        df["svc"].to_numpy(),
        df["met"].to_numpy(),
        df["bucket"].to_numpy(),
        df["value"].to_numpy(),
    )
    frames = [
        _metric_features(spec, m, seg_svc[sel], seg_bucket[sel], seg_value[sel])
        for m, sel in ((m, seg_met == i) for i, m in enumerate(metrics))
    ]
    rows = frames[0]
    for frame in frames[1:]:
        rows = rows.join(frame, on=["_svc", "_bucket"], how="inner")
    if rows.height == 0:
        return empty_features(spec, with_windows=with_windows)
    rows = rows.sort(["_svc", "_bucket"])
    interval_us = spec.interval_us
    out = [
        (pl.col("_bucket") * interval_us).cast(pl.Datetime("us")).alias("ts"),
        pl.col("_svc").replace_strict(dict(enumerate(services)), return_dtype=pl.Utf8).alias("service"),
        *spec.feature_names,
    ]
    if with_windows:
        out += [
            (pl.min_horizontal([f"_ws{i}" for i in range(len(metrics))]) * interval_us)
            .cast(pl.Datetime("us"))
            .alias("window_start"),
            ((pl.col("_bucket") + 1) * interval_us).cast(pl.Datetime("us")).alias("window_end"),
        ]
    result = rows.select(out)
    logger.debug("batch features: %d points -> %d rows", points.height, result.height)
    return result


def _sort_for_aggregation(
    df: pl.DataFrame, services: list[str], metrics: list[str], kinds: list[str], interval_us: int
) -> pl.DataFrame:
    """Points with codes ``svc``/``met``/``bucket``, sorted by them and then as online aggregates.

    Within a bucket: by value (mean/sum add in ascending order, min/max are the ends), or for
    ``last`` by ts then value (the latest point wins; equal ts -> the larger value, as online).
    One composite integer key sorts much faster than five columns when it fits in 62 bits.
    """
    last_codes = [i for i, kind in enumerate(kinds) if kind == "last"]
    df = df.with_columns(
        pl.col("service")
        .replace_strict({s: i for i, s in enumerate(services)}, return_dtype=pl.Int64)
        .alias("svc"),
        pl.col("metric")
        .replace_strict({m: i for i, m in enumerate(metrics)}, return_dtype=pl.Int64)
        .alias("met"),
        (pl.col("ts_us") // interval_us).alias("bucket"),
    ).with_columns(
        pl.when(pl.col("met").is_in(last_codes)).then(pl.col("ts_us")).otherwise(0).alias("tiebreak"),
    )
    first, last = df["bucket"].min(), df["bucket"].max()
    span = int(last) - int(first) + 1  # type: ignore[arg-type]
    if len(services) * len(metrics) * span < 2**62:
        key = (pl.col("svc") * len(metrics) + pl.col("met")) * span + (pl.col("bucket") - first)
        return df.with_columns(key.alias("_key")).sort(["_key", "tiebreak", "value"])
    return df.sort(["svc", "met", "bucket", "tiebreak", "value"])  # pragma: no cover - > 2**62 cells


def _aggregate(
    kinds: list[str], svc: np.ndarray, met: np.ndarray, bucket: np.ndarray, value: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One value per (service, metric, bucket) from points sorted by those keys then as online adds them."""
    n = len(value)
    new = np.ones(n, dtype=bool)
    new[1:] = (svc[1:] != svc[:-1]) | (met[1:] != met[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, n))
    ends = starts + counts - 1
    seg_met = met[starts]
    seg_value = np.empty(len(starts))
    with np.errstate(over="ignore"):  # a sum of huge finite points may overflow: clamped below
        sums = sorted_segment_sums(value, starts, counts) if {"mean", "sum"} & set(kinds) else None
    for i, kind in enumerate(kinds):
        sel = seg_met == i
        if kind == "mean":
            seg_value[sel] = sums[sel] / counts[sel]  # type: ignore[index]
        elif kind == "sum":
            seg_value[sel] = sums[sel]  # type: ignore[index]
        elif kind == "min":
            seg_value[sel] = value[starts[sel]]
        elif kind in ("max", "last"):
            seg_value[sel] = value[ends[sel]]
        else:  # count
            seg_value[sel] = counts[sel].astype(np.float64)
    np.clip(seg_value, -VALUE_LIMIT, VALUE_LIMIT, out=seg_value)  # as online's clamp (definitions)
    return svc[starts], seg_met, bucket[starts], seg_value


def _metric_features(
    spec: FeatureSpec, metric: str, svc: np.ndarray, bucket: np.ndarray, value: np.ndarray
) -> pl.DataFrame:
    """The metric's feature columns at the buckets where its full span of history exists."""
    mspec = spec.metrics[metric]
    span = mspec.span
    n = len(value)
    idx = np.arange(n)
    new = np.ones(n, dtype=bool)
    new[1:] = svc[1:] != svc[:-1]
    pos = idx - np.maximum.accumulate(np.where(new, idx, 0))
    valid = pos >= span - 1
    m = spec.metric_names.index(metric)
    columns: dict[str, np.ndarray] = {
        "_svc": svc[valid],
        "_bucket": bucket[valid],
        f"_ws{m}": bucket[idx[valid] - (span - 1)],
    }
    for t in mspec.transforms:
        columns[f"{metric}__{t.suffix}"] = batch_kernel(t, value)[valid]
    return pl.DataFrame(columns)
