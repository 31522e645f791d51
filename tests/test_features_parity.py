"""Online == batch on the same accepted points (to 1e-9; in fact bitwise), and the online policy.

Policy under test (engine.features.online): a bucket closes when the service's watermark (max ts
seen minus lateness) reaches its end; a point for a closed bucket is late, dropped and counted;
batch over the points online accepted must give exactly the rows online emitted.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.features import FeatureRow, FeatureSpec, OnlineFeatures, batch_features, rows_to_frame

T0 = 1_767_225_600.0
Point = tuple[float, str, str, float]

ALL_TRANSFORMS = [
    "raw",
    {"kind": "mean", "window": 3},
    {"kind": "std", "window": 3},
    {"kind": "zscore", "window": 4},
    {"kind": "zscore", "window": 2, "min_std": 0.5, "name": "z2floor"},
    "diff",
    {"kind": "diff", "lag": 3},
    {"kind": "quantile", "window": 5, "q": 0.9},
    {"kind": "quantile", "window": 5, "q": 0.25},
    {"kind": "quantile", "window": 2, "q": 0.5},
    {"kind": "ratio", "window": 3},
]


def make_spec(lateness: float = 25.0, aggregation: str = "mean", other: str = "max") -> FeatureSpec:
    return FeatureSpec.model_validate(
        {
            "interval": "10s",
            "lateness": lateness,
            "aggregation": aggregation,
            "metrics": {
                "lat": {"transforms": ALL_TRANSFORMS},
                "err": {"aggregation": other, "transforms": ["raw", {"kind": "zscore", "window": 3}, "diff"]},
            },
        }
    )


def run_online(points: Sequence[Point], spec: FeatureSpec) -> tuple[list[FeatureRow], list[Point], int]:
    """Push in order; return rows, the points online accepted, and how many were late."""
    online = OnlineFeatures(spec)
    rows: list[FeatureRow] = []
    accepted: list[Point] = []
    for p in points:
        before = (online.late_points, online.ignored_points, online.invalid_points)
        rows += online.push(*p)
        if (online.late_points, online.ignored_points, online.invalid_points) == before:
            accepted.append(p)
    rows += online.flush()
    assert online.accepted_points == len(accepted)
    return rows, accepted, online.late_points


def to_frame(points: Sequence[Point]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [round(p[0] * 1e6) for p in points],
            "service": [p[1] for p in points],
            "metric": [p[2] for p in points],
            "value": [p[3] for p in points],
        },
        schema={"ts": pl.Int64, "service": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64},
    ).with_columns(pl.col("ts").cast(pl.Datetime("us")))


def assert_parity(rows: list[FeatureRow], accepted: Sequence[Point], spec: FeatureSpec) -> pl.DataFrame:
    online = rows_to_frame(rows, spec, with_windows=True)
    batch = batch_features(to_frame(accepted), spec, with_windows=True)
    keys = ["service", "ts", "window_start", "window_end"]
    assert online.select(keys).equals(batch.select(keys)), "different rows or input windows"
    a = online.select(spec.feature_names).to_numpy()
    b = batch.select(spec.feature_names).to_numpy()
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert np.abs(a - b).max(initial=0.0) <= 1e-9  # the contract
    assert np.array_equal(a, b)  # what the shared definitions give: the same operations, bitwise
    return online


def synthetic_stream(
    seed: int, *, services: int = 3, buckets: int = 400, max_delay: float = 20.0
) -> list[Point]:
    """Multi-point buckets, missing buckets and metrics, repeated values, shuffled arrival."""
    rng = random.Random(seed)
    points: list[Point] = []
    for s in range(services):
        level = 10.0 ** rng.randint(-2, 6)  # values from 0.01 to 1e6 in scale
        for k in range(buckets):
            if rng.random() < 0.08:
                continue  # a gap: nothing for this service in this bucket
            for metric in ("lat", "err", "noise"):
                if rng.random() < 0.05:
                    continue  # this metric alone is missing
                for _ in range(rng.choice((1, 1, 1, 2, 3))):
                    value = (
                        round(rng.gauss(level, level / 10), 1)
                        if rng.random() < 0.3
                        else rng.gauss(level, 1.0)
                    )
                    ts = T0 + 10 * k + rng.randrange(10_000) / 1000
                    points.append((ts, f"svc{s}", metric, value))
    arrival = [p[0] + rng.uniform(0, max_delay) for p in points]
    return [p for _, p in sorted(zip(arrival, points, strict=True), key=lambda x: x[0])]


def test_online_equals_batch_with_gaps_shuffles_and_late_points() -> None:
    spec = make_spec(lateness=10.0)
    points = synthetic_stream(1, max_delay=25.0)  # delays beyond 10 s of lateness: some points are late
    rows, accepted, late = run_online(points, spec)
    assert late > 50  # the scenario really exercises lateness
    out = assert_parity(rows, accepted, spec)
    assert out.height > 600


def test_online_equals_batch_on_every_point_when_nothing_is_late() -> None:
    spec = make_spec(lateness=30.0, aggregation="sum", other="last")
    points = synthetic_stream(2, max_delay=20.0)
    rows, accepted, late = run_online(points, spec)
    assert late == 0
    assert len(accepted) == sum(p[2] != "noise" for p in points)
    # batch on the full frame (unrelated metrics included) equals online: nothing was dropped
    online = rows_to_frame(rows, spec)
    assert online.equals(batch_features(to_frame(points), spec))


@pytest.mark.parametrize("aggregation", ["mean", "sum", "min", "max", "last", "count"])
def test_parity_for_every_aggregation(aggregation: str) -> None:
    spec = make_spec(lateness=5.0, aggregation=aggregation, other=aggregation)
    rows, accepted, _ = run_online(synthetic_stream(3, services=2, buckets=150, max_delay=12.0), spec)
    assert_parity(rows, accepted, spec)


def test_long_series_do_not_drift() -> None:
    """Windows are recomputed, not updated: the last window of a long series is still exact."""
    spec = FeatureSpec.model_validate(
        {
            "interval": "1s",
            "metrics": {
                "x": {
                    "transforms": [
                        {"kind": "mean", "window": 10},
                        {"kind": "std", "window": 10},
                        {"kind": "zscore", "window": 10},
                    ]
                }
            },
        }
    )
    rng = np.random.default_rng(7)
    n = 20_000
    values = np.where(rng.random(n) < 0.01, 1e12, 1e6 + rng.normal(size=n))  # huge spikes, then small noise
    values[-11:] = 1e6 + rng.normal(size=11)
    points = [(T0 + i, "s", "x", float(v)) for i, v in enumerate(values)]
    rows, accepted, _ = run_online(points, spec)
    assert_parity(rows, accepted, spec)
    last = rows[-1].values
    window = values[-10:]
    assert last[0] == pytest.approx(window.mean(), rel=1e-15, abs=1e-9)
    assert last[1] == pytest.approx(window.std(), rel=1e-9)
    base = values[-11:-1]
    assert last[2] == pytest.approx((values[-1] - base.mean()) / base.std(), rel=1e-8)


# --------------------------------------------------------------------------------------- Hypothesis


@st.composite
def streams(draw: st.DrawFn) -> tuple[float, list[Point]]:
    lateness = draw(st.sampled_from([0.0, 10.0, 25.0]))
    n_services = draw(st.integers(1, 2))
    values = st.one_of(
        st.integers(-3, 3).map(float),  # ties and constant windows
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    )
    points: list[tuple[float, float, Point]] = []
    for s in range(n_services):
        buckets = draw(st.lists(st.integers(0, 60), min_size=0, max_size=45, unique=True))
        for k in buckets:
            for metric in draw(st.lists(st.sampled_from(["lat", "err", "noise"]), min_size=1, max_size=4)):
                offset_ms = draw(st.integers(0, 9_999))
                delay = draw(st.sampled_from([0.0, 0.0, 3.0, 9.0, 17.0, 40.0]))  # some beyond the lateness
                ts = T0 + 10 * k + offset_ms / 1000
                points.append((ts + delay, ts, (ts, f"s{s}", metric, draw(values))))
    points.sort(key=lambda x: (x[0], x[1]))
    return lateness, [p for _, _, p in points]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(streams(), st.sampled_from(["mean", "sum", "last"]))
def test_property_online_equals_batch(stream: tuple[float, list[Point]], aggregation: str) -> None:
    lateness, points = stream
    spec = make_spec(lateness=lateness, aggregation=aggregation)
    rows, accepted, _ = run_online(points, spec)
    assert_parity(rows, accepted, spec)


@settings(max_examples=40, deadline=None)
@given(streams())
def test_property_push_many_equals_push(stream: tuple[float, list[Point]]) -> None:
    lateness, points = stream
    spec = make_spec(lateness=lateness)
    rows, _, late = run_online(points, spec)
    online = OnlineFeatures(spec)
    many = online.push_many(*zip(*points, strict=True)) if points else []
    many += online.flush()
    assert many == rows
    assert online.late_points == late


def test_push_many_with_numpy_arrays_equals_push() -> None:
    spec = make_spec(lateness=10.0)
    points = synthetic_stream(4, services=2, buckets=200, max_delay=25.0)
    rows, _, late = run_online(points, spec)
    online = OnlineFeatures(spec)
    ts, service, metric, value = (np.asarray(c) for c in zip(*points, strict=True))
    many = online.push_many(ts, service, metric, value) + online.flush()
    assert many == rows and online.late_points == late > 0
    assert all(type(v) is float for r in many for v in r.values) and all(type(r.service) is str for r in many)


# --------------------------------------------------------------------------------------- policy


def _simple_spec(lateness: str = "10s") -> FeatureSpec:
    return FeatureSpec.model_validate(
        {"interval": "10s", "lateness": lateness, "metrics": {"x": {"transforms": ["raw"]}}}
    )


def test_late_points_are_counted_and_dropped() -> None:
    online = OnlineFeatures(_simple_spec("10s"))
    assert online.push(T0 + 1, "s", "x", 1.0) == []
    assert online.push(T0 + 12, "s", "x", 2.0) == []
    rows = online.push(T0 + 35, "s", "x", 3.0)  # watermark 25 s: buckets ending <= 20 s close
    assert [(r.ts, r.values) for r in rows] == [(T0, (1.0,)), (T0 + 10, (2.0,))]
    assert online.push(T0 + 19.9, "s", "x", 9.0) == []  # its bucket [10, 20) closed: late
    assert online.late_points == 1
    assert online.push(T0 + 21, "s", "x", 4.0) == []  # [20, 30) is still open: accepted
    assert online.late_points == 1
    assert [(r.ts, r.values) for r in online.flush()] == [(T0 + 20, (4.0,)), (T0 + 30, (3.0,))]
    stats = online.stats()
    assert stats["late_points"] == 1 and stats["accepted_points"] == 4 and stats["rows_emitted"] == 4


def test_watermarks_are_per_service() -> None:
    online = OnlineFeatures(_simple_spec("0s"))
    online.push(T0 + 100, "a", "x", 1.0)
    assert online.push(T0 + 5, "b", "x", 2.0) == []  # service b has its own, earlier watermark
    assert online.late_points == 0
    assert online.push(T0 + 15, "b", "x", 3.0)[0].service == "b"


def test_flush_closes_now_so_a_live_replay_gets_each_row_at_once() -> None:
    """push + flush per point (as a NAB replay does) gives each point's row with no look-ahead."""
    online = OnlineFeatures(_simple_spec("0s"))
    for k in range(5):
        assert online.push(T0 + 300 * k, "s", "x", float(k)) == []
        (row,) = online.flush()
        assert row.ts == T0 + 300 * k and row.values == (float(k),)
    assert online.push(T0 + 1200 + 1, "s", "x", 9.0) == []  # its bucket was flushed: late
    assert online.late_points == 1


def test_ignored_and_invalid_points_are_counted_and_do_not_move_the_watermark() -> None:
    online = OnlineFeatures(_simple_spec("0s"))
    online.push(T0, "s", "x", 1.0)
    assert online.push(T0 + 1000, "s", "other", 1.0) == []
    assert online.push(T0 + 1000, "s", "x", float("nan")) == []
    assert online.push(float("inf"), "s", "x", 1.0) == []
    assert online.push(T0 + 2, "s", "x", 2.0) == []  # bucket 0 still open: the ignored points moved nothing
    assert online.stats()["ignored_points"] == 1
    assert online.stats()["invalid_points"] == 2
    assert [r.values for r in online.flush()] == [(1.5,)]


def test_memory_stays_bounded_per_series() -> None:
    spec = make_spec(lateness=25.0)
    spans = max(m.span for m in spec.metrics.values())
    online = OnlineFeatures(spec)
    open_limit = int(spec.lateness // spec.interval) + 2
    for i, p in enumerate(synthetic_stream(5, services=4, buckets=1500, max_delay=30.0)):
        online.push(*p)
        if i % 97 == 0:
            stats = online.stats()
            assert stats["max_history"] <= spans
            assert stats["max_sorted_window"] <= 5  # the largest quantile window
            assert stats["max_open_buckets"] <= open_limit
    stats = online.stats()
    assert stats["max_history"] == spans and stats["max_sorted_window"] == 5
    assert stats["rows_emitted"] > 4000
