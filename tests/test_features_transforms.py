"""Each transform and aggregation against a hand-computed value, in both executions.

Every case runs through ``batch_features`` and through ``OnlineFeatures.push`` (one point at a
time, then ``flush``), so a wrong formula in either execution fails here, not only in the parity test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
import pytest

from engine.errors import InputError
from engine.features import FeatureRow, FeatureSpec, OnlineFeatures, batch_features, rows_to_frame

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a multiple of every interval used here

Point = tuple[float, str, str, float]


def frame(points: Sequence[Point]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [round(p[0] * 1e6) for p in points],
            "service": [p[1] for p in points],
            "metric": [p[2] for p in points],
            "value": [p[3] for p in points],
        },
        schema={"ts": pl.Int64, "service": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64},
    ).with_columns(pl.col("ts").cast(pl.Datetime("us")))


def online_frame(points: Sequence[Point], spec: FeatureSpec) -> pl.DataFrame:
    online = OnlineFeatures(spec)
    rows: list[FeatureRow] = []
    for p in points:
        rows.extend(online.push(*p))
    rows.extend(online.flush())
    return rows_to_frame(rows, spec)


EXECUTIONS = {
    "batch": lambda points, spec: batch_features(frame(points), spec),
    "online": online_frame,
}


def series(
    values: Sequence[float], metric: str = "x", service: str = "svc", step: float = 1.0
) -> list[Point]:
    return [(T0 + i * step, service, metric, float(v)) for i, v in enumerate(values)]


def single(
    transform: dict | str, values: Sequence[float], execution: str, **spec_extra: object
) -> list[float]:
    spec = FeatureSpec.model_validate(
        {"interval": "1s", "metrics": {"x": {"transforms": [transform]}}, **spec_extra}
    )
    out = EXECUTIONS[execution](series(values), spec)
    return out[spec.feature_names[0]].to_list()


X = [1.0, 2.0, 4.0, 7.0, 11.0]


@pytest.fixture(params=sorted(EXECUTIONS))
def execution(request: pytest.FixtureRequest) -> str:
    return request.param


def test_raw(execution: str) -> None:
    assert single("raw", X, execution) == X


def test_rolling_mean_includes_the_current_bucket(execution: str) -> None:
    got = single({"kind": "mean", "window": 3}, X, execution)
    assert got == pytest.approx([7 / 3, 13 / 3, 22 / 3], abs=1e-12)  # rows start once 3 buckets exist


def test_rolling_std_is_the_population_std(execution: str) -> None:
    got = single({"kind": "std", "window": 2}, X, execution)
    assert got == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=1e-12)


def test_zscore_against_the_window_before_the_current_bucket(execution: str) -> None:
    got = single({"kind": "zscore", "window": 3}, X, execution)
    # x=7 against [1, 2, 4]: mean 7/3, population var ((4/3)^2 + (1/3)^2 + (5/3)^2)/3 = 42/27
    # x=11 against [2, 4, 7]: mean 13/3, var ((7/3)^2 + (1/3)^2 + (8/3)^2)/3 = 114/27
    assert got == pytest.approx(
        [(7 - 7 / 3) / math.sqrt(42 / 27), (11 - 13 / 3) / math.sqrt(114 / 27)], abs=1e-12
    )


def test_zscore_of_a_constant_window_is_zero_unless_min_std(execution: str) -> None:
    flat = [0.1] * 6 + [0.5]
    assert single({"kind": "zscore", "window": 5}, flat, execution) == [0.0, 0.0]
    got = single({"kind": "zscore", "window": 5, "min_std": 0.05}, flat, execution)
    assert got == pytest.approx([0.0, 8.0], abs=1e-9)


def test_diff(execution: str) -> None:
    assert single("diff", X, execution) == [1.0, 2.0, 3.0, 4.0]
    assert single({"kind": "diff", "lag": 2}, X, execution) == [3.0, 5.0, 7.0]


def test_rolling_quantile_is_numpys_linear(execution: str) -> None:
    got = single({"kind": "quantile", "window": 4, "q": 0.9}, X, execution)
    # [1, 2, 4, 7]: position 0.9*3 = 2.7 -> 4 + 0.7*3 = 6.1; [2, 4, 7, 11] -> 7 + 0.7*4 = 9.8
    assert got == pytest.approx([6.1, 9.8], abs=1e-12)
    rng = np.random.default_rng(3)
    values = rng.normal(size=40).round(1)  # repeated values too
    for q in (0.0, 0.1, 0.25, 0.5, 0.73, 0.95, 1.0):
        got = single({"kind": "quantile", "window": 7, "q": q}, values, execution)
        want = [np.quantile(values[i - 6 : i + 1], q) for i in range(6, len(values))]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), q


def test_ratio_to_the_trailing_baseline(execution: str) -> None:
    assert single({"kind": "ratio", "window": 2, "eps": 0}, X, execution) == pytest.approx(
        [4 / 1.5, 7 / 3, 11 / 5.5], abs=1e-12
    )
    zeros = [0.0, 0.0, 0.0, 0.01]
    got = single({"kind": "ratio", "window": 2}, zeros, execution)  # default eps 1e-9
    assert got == pytest.approx([1.0, (0.01 + 1e-9) / 1e-9], rel=1e-12)
    assert single({"kind": "ratio", "window": 2, "eps": 0}, zeros, execution) == [1.0, 1.0]  # 0/0 -> 1.0


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("mean", 2.0), ("sum", 6.0), ("min", 1.0), ("max", 3.0), ("last", 1.0), ("count", 3.0)],
)
def test_aggregations_within_a_bucket(aggregation: str, expected: float, execution: str) -> None:
    spec = FeatureSpec.model_validate(
        {
            "interval": "10s",
            "lateness": "10s",
            "aggregation": aggregation,
            "metrics": {"x": {"transforms": ["raw"]}},
        }
    )
    # arrival order differs from time order; the latest point (t=9s) has value 1
    points = [(T0 + 5, "s", "x", 3.0), (T0 + 9, "s", "x", 1.0), (T0 + 2, "s", "x", 2.0)]
    out = EXECUTIONS[execution](points, spec)
    assert out["x__raw"].to_list() == [expected]
    assert out["ts"].dt.epoch("us").to_list() == [round(T0 * 1e6)]  # labelled with the bucket start


def test_last_breaks_ts_ties_by_the_larger_value(execution: str) -> None:
    spec = FeatureSpec.model_validate(
        {"interval": "10s", "aggregation": "last", "metrics": {"x": {"transforms": ["raw"]}}}
    )
    points = [(T0 + 5, "s", "x", 3.0), (T0 + 5, "s", "x", 8.0), (T0 + 5, "s", "x", 4.0)]
    assert EXECUTIONS[execution](points, spec)["x__raw"].to_list() == [8.0]


def test_gaps_are_skipped_and_incomplete_buckets_emit_nothing(execution: str) -> None:
    spec = FeatureSpec.model_validate(
        {"interval": "1s", "metrics": {"a": {"transforms": ["diff"]}, "b": {"transforms": ["raw"]}}}
    )
    # bucket 2 is missing for both metrics; bucket 4 has `a` but not `b`
    points = sorted(
        [
            *[(T0 + k, "s", "a", float(10 * k)) for k in (0, 1, 3, 4, 5)],
            *[(T0 + k + 0.5, "s", "b", float(k)) for k in (0, 1, 3, 5)],
        ]
    )
    out = EXECUTIONS[execution](points, spec)
    assert out["ts"].dt.epoch("s").to_list() == [int(T0) + 1, int(T0) + 3, int(T0) + 5]
    # the diff spans the gap (30 - 10) and bucket 4 still entered a's history (50 - 40)
    assert out["a__diff_1"].to_list() == [10.0, 20.0, 10.0]
    assert out["b__raw"].to_list() == [1.0, 3.0, 5.0]


def test_warm_up_and_window_range_of_online_rows() -> None:
    spec = FeatureSpec.model_validate(
        {
            "interval": "10s",
            "metrics": {"a": {"transforms": [{"kind": "zscore", "window": 3}]}, "b": {"transforms": ["raw"]}},
        }
    )
    online = OnlineFeatures(spec)
    points: list[Point] = []
    for k in range(6):
        points += [(T0 + 10 * k, "s", "a", float(k * k)), (T0 + 10 * k + 1, "s", "b", float(k))]
    rows: list[FeatureRow] = []
    for p in points:
        rows += online.push(*p)
    rows += online.flush()
    assert [r.ts for r in rows] == [T0 + 30, T0 + 40, T0 + 50]  # the first row needs 3 + 1 buckets of `a`
    first = rows[0]
    assert (first.window_start, first.window_end) == (T0, T0 + 40)
    assert first.service == "s" and len(first.values) == 2 and first.values[1] == 3.0
    assert batch_features(frame(points), spec).height == 3


def test_batch_reports_the_same_window_range() -> None:
    spec = FeatureSpec.model_validate(
        {"interval": "10s", "metrics": {"a": {"transforms": [{"kind": "mean", "window": 2}]}}}
    )
    points = series([1, 2, 3], metric="a", step=10.0)
    out = batch_features(frame(points), spec, with_windows=True)
    assert out["window_start"].dt.epoch("s").to_list() == [int(T0), int(T0) + 10]
    assert out["window_end"].dt.epoch("s").to_list() == [int(T0) + 20, int(T0) + 30]


def test_batch_accepts_timezone_aware_and_other_units() -> None:
    spec = FeatureSpec.model_validate({"interval": "1s", "metrics": {"x": {"transforms": ["diff"]}}})
    naive = frame(series(X))
    aware = naive.with_columns(pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris"))
    millis = naive.with_columns(pl.col("ts").cast(pl.Datetime("ms")))
    assert batch_features(aware, spec).equals(batch_features(naive, spec))
    assert batch_features(millis, spec).equals(batch_features(naive, spec))


def test_batch_rejects_frames_it_cannot_read() -> None:
    spec = FeatureSpec.model_validate({"interval": "1s", "metrics": {"x": {"transforms": ["raw"]}}})
    with pytest.raises(InputError, match="lack column"):
        batch_features(pl.DataFrame({"ts": [1.0], "value": [1.0]}), spec)
    with pytest.raises(InputError, match="must be a Datetime"):
        batch_features(pl.DataFrame({"ts": [1.0], "service": ["s"], "metric": ["x"], "value": [1.0]}), spec)


def test_empty_and_irrelevant_input_give_the_schema() -> None:
    spec = FeatureSpec.model_validate({"interval": "1s", "metrics": {"x": {"transforms": ["raw", "diff"]}}})
    out = batch_features(frame(series(X, metric="other")), spec)
    assert out.height == 0
    assert out.schema == {
        "ts": pl.Datetime("us"),
        "service": pl.Utf8,
        "x__raw": pl.Float64,
        "x__diff_1": pl.Float64,
    }
