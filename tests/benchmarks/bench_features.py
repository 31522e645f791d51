"""Feature throughput: online push (one point at a time) vs batch_features on the same points.

The engine pushes every accepted point through ``OnlineFeatures`` (issue 5 targets >= 50,000
points/s end to end), so the figure is points/s through ``push`` for 200 series (50 services x 4
metrics) and a typical 6-feature spec; ``push_many`` is the micro-batch entry. The baseline,
measured in the same run, is ``batch_features`` over the same points (input points/s).
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl
from harness import Row

from engine.features import FeatureSpec, OnlineFeatures, batch_features

SERVICES = 50
METRICS = ("latency_p99_ms", "request_rate", "error_rate", "cpu_util")
BUCKETS = 1000  # 10 s apart -> 200,000 points
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z

SPEC = FeatureSpec.model_validate(
    {
        "interval": "10s",
        "lateness": "10s",
        "metrics": {
            "latency_p99_ms": {"transforms": ["raw", {"kind": "zscore", "window": 30}]},
            "request_rate": {"transforms": [{"kind": "ratio", "window": 30}]},
            "error_rate": {"transforms": ["diff"]},
            "cpu_util": {
                "transforms": [{"kind": "mean", "window": 6}, {"kind": "quantile", "window": 30, "q": 0.95}]
            },
        },
    }
)


def make_points(seed: int = 0) -> tuple[list[float], list[str], list[str], list[float]]:
    """Points in arrival order: every series reports every 10 s with up to 2 s of jitter."""
    rng = np.random.default_rng(seed)
    n = SERVICES * len(METRICS) * BUCKETS
    k = np.repeat(np.arange(BUCKETS), SERVICES * len(METRICS))
    ts = START + k * 10.0 + rng.integers(0, 2_000_000, n) / 1e6
    order = np.argsort(ts, kind="stable")
    svc = np.tile(np.repeat([f"svc-{i:02d}" for i in range(SERVICES)], len(METRICS)), BUCKETS)
    met = np.tile(np.array(METRICS * SERVICES), BUCKETS)
    value = rng.gamma(2.0, 50.0, n)
    return ts[order].tolist(), svc[order].tolist(), met[order].tolist(), value[order].tolist()


def _frame(ts: list[float], svc: list[str], met: list[str], value: list[float]) -> pl.DataFrame:
    us = np.round(np.asarray(ts) * 1e6).astype(np.int64)
    return pl.DataFrame({"ts": us, "service": svc, "metric": met, "value": value}).with_columns(
        pl.col("ts").cast(pl.Datetime("us"))
    )


def bench_online_push(repeats: int) -> list[Row]:
    ts, svc, met, value = make_points()
    frame = _frame(ts, svc, met, value)
    ts_a, svc_a, met_a, value_a = (np.asarray(c) for c in (ts, svc, met, value))  # a micro-batch as arrays
    n = len(ts)
    push_rates, many_rates, batch_rates = [], [], []
    rows_online = rows_batch = 0
    for _ in range(repeats):
        online = OnlineFeatures(SPEC)
        push = online.push
        t0 = time.perf_counter()
        emitted = 0
        for i in range(n):
            emitted += len(push(ts[i], svc[i], met[i], value[i]))
        emitted += len(online.flush())
        push_rates.append(n / (time.perf_counter() - t0))
        rows_online = emitted

        online = OnlineFeatures(SPEC)
        t0 = time.perf_counter()
        online.push_many(ts_a, svc_a, met_a, value_a)
        online.flush()
        many_rates.append(n / (time.perf_counter() - t0))

        t0 = time.perf_counter()
        rows_batch = batch_features(frame, SPEC).height
        batch_rates.append(n / (time.perf_counter() - t0))
    assert rows_online == rows_batch, (rows_online, rows_batch)
    note = f"{n:,} points, {SERVICES * len(METRICS)} series, {len(SPEC.feature_names)} features"
    return [
        Row(
            figure="features: online push points/s",
            unit="points/s",
            samples=push_rates,
            baseline="batch_features points/s",
            baseline_samples=batch_rates,
            target=">= 100,000",
            note=note,
        ),
        Row(
            figure="features: online push_many (numpy arrays) points/s",
            unit="points/s",
            samples=many_rates,
            baseline="batch_features points/s",
            baseline_samples=batch_rates,
            target=">= 100,000",
            note=note,
        ),
    ]


BENCHMARKS = [bench_online_push]
