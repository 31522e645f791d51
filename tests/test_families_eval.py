"""The per-kind comparison of detector families on synthetic platform data (engine.evaluation.families)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from engine.errors import EvaluationError
from engine.evaluation.events import alarm_events
from engine.evaluation.families import (
    DEFAULT_FAMILIES,
    Family,
    compare_families,
    event_rate_threshold,
    log_comparison,
    merge,
    run_default_comparison,
)
from engine.telemetry.synth import generate, load_config

DAY_1M = 1440
SMALL = (
    Family("IForest (raw)", "IForest", {"n_estimators": 25}),
    Family("SeasonalResidual", "SeasonalResidual", {"season": DAY_1M, "smooth": 5, "window": 5}),
    Family("CUSUM", "CUSUM", {"reference": 60, "drift": 0.5}, ("retrieval_*",)),
)


@pytest.fixture(scope="module")
def small_data():
    return generate(load_config(), days=4, services=3, seed=11)


@pytest.fixture(scope="module")
def small_comparison(small_data):
    return compare_families(
        small_data.points, small_data.incidents, families=SMALL, train_days=1.5, interval="1m"
    )


def test_comparison_counts_every_test_incident_for_every_family(small_data, small_comparison) -> None:
    cut = small_data.points["ts"].min() + timedelta(days=1.5)
    expected = small_data.incidents.filter(pl.col("start") >= cut)
    assert len(expected) > 0
    by_kind = expected.group_by("kind").len()
    for kind, n in by_kind.iter_rows():
        for family in small_comparison.families:
            r = small_comparison.results[(family, kind)]
            assert r.n == n
            assert 0 <= r.detected <= n and len(r.delays_s) == r.detected
            assert all(d >= 0 for d in r.delays_s)  # alarms count at the end of their bucket
    # CUSUM watches retrieval metrics only: services without them give it nothing to alarm on
    assert small_comparison.false_alarms_per_day["CUSUM"] >= 0.0


def test_table_is_markdown_with_one_row_per_kind(small_comparison) -> None:
    table = small_comparison.table()
    lines = table.splitlines()
    assert lines[0] == "| incident kind (n) | IForest (raw) | SeasonalResidual | CUSUM |"
    assert lines[1] == "|---|---|---|---|"
    assert len(lines) == 2 + len(small_comparison.kinds) + 1
    assert lines[-1].startswith("| false alarms / day |")
    for kind in small_comparison.kinds:
        assert any(line.startswith(f"| {kind} (") for line in lines)


def test_merge_pools_incidents_and_weights_false_alarms(small_comparison) -> None:
    pooled = merge([small_comparison, small_comparison])
    for key, r in small_comparison.results.items():
        assert pooled.results[key].n == 2 * r.n
        assert pooled.results[key].recall == pytest.approx(r.recall) if r.n else True
    for family, rate in small_comparison.false_alarms_per_day.items():
        assert pooled.false_alarms_per_day[family] == pytest.approx(rate)
    with pytest.raises(EvaluationError):
        merge([])


def test_event_rate_threshold_meets_the_budget_and_no_more() -> None:
    rng = np.random.default_rng(0)
    ts = np.datetime64("2026-01-05T00:00:00", "us") + np.arange(4 * 8640) * np.timedelta64(10, "s")
    scores = rng.normal(size=ts.size)
    scores[1000:1050] += 5  # one burst: a single event
    ts_us = ts.astype(np.int64)
    thresholds = []
    for per_day in (0.5, 2.0, 10.0):
        thr = event_rate_threshold(ts, scores, per_day, merge_gap_s=600)
        assert len(alarm_events(ts_us, scores > thr, 600)) <= per_day * 4
        thresholds.append(thr)
    assert (scores[1000:1050] > thresholds[0]).any()  # one event fits a budget of two: not silenced
    assert thresholds[0] >= thresholds[1] >= thresholds[2]
    assert len(alarm_events(ts_us, scores > thresholds[2], 600)) > 2 * 4  # it uses the larger budget


def test_sequence_family_needs_contiguous_rows() -> None:
    ts = [datetime(2026, 1, 5) + timedelta(minutes=m) for m in (*range(100), *range(200, 300))]
    points = pl.DataFrame(
        {"ts": ts, "service": "svc", "metric": "latency_p50_ms", "value": np.ones(len(ts))}
    ).with_columns(pl.col("ts").cast(pl.Datetime("us")))
    incidents = pl.DataFrame(
        schema={"service": pl.Utf8, "kind": pl.Utf8, "start": pl.Datetime("us"), "end": pl.Datetime("us")}
    )
    with pytest.raises(EvaluationError, match="not consecutive"):
        compare_families(points, incidents, families=SMALL[:1], train_days=0.05, interval="1m")


def test_log_comparison_to_mlflow(small_comparison, tmp_path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    # artifacts in tmp_path too (MLflow's default for a sqlite store is ./mlruns in the working dir)
    client.create_experiment("families-test", artifact_location=(tmp_path / "artifacts").as_uri())
    parent_id = log_comparison(small_comparison, tracking_uri=uri, experiment="families-test")
    parent = client.get_run(parent_id)
    assert parent.data.params["interval"] == "1m"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(r.info.run_name for r in children) == sorted(small_comparison.families)
    some_kind = small_comparison.kinds[0]
    for run in children:
        r = small_comparison.results[(run.info.run_name, some_kind)]
        assert run.data.metrics[f"{some_kind}.recall"] == pytest.approx(r.recall)
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"per_kind_delay.md", "per_kind.json", "settings.json"} <= artifacts


def test_default_families_are_valid_detectors() -> None:
    from engine.detectors import make_detector
    from engine.detectors.base import Detector

    for family in DEFAULT_FAMILIES:
        assert isinstance(make_detector(family.detector, family.params), Detector)


def _caught_earlier_than_iforest(comp, kind: str, contenders: tuple[str, ...]) -> bool:
    """The README's claim for one kind: some contender's median delay beats IForest's (or IForest misses)."""
    base = comp.results[("IForest (raw)", kind)]
    best = min(comp.results[(f, kind)].median_delay_s for f in contenders if comp.results[(f, kind)].detected)
    return math.isnan(base.median_delay_s) or best < base.median_delay_s


def test_stale_index_is_caught_earlier_by_forecast_or_drift_than_by_iforest() -> None:
    """The README's claim, fast: the vector DB alone, 6 days (4 to train), one seed that puts its
    stale index in the test days; the default family configurations at the native 10 s interval."""
    wanted = ("IForest (raw)", "SeasonalResidual", "CUSUM")
    families = [f for f in DEFAULT_FAMILIES if f.label in wanted]
    data = generate(load_config(), days=6, services=1, seed=8)
    comp = compare_families(data.points, data.incidents, families=families, train_days=4.0)
    assert comp.results[("IForest (raw)", "stale_index")].n == 1  # the seed still places one in the test days
    assert _caught_earlier_than_iforest(comp, "stale_index", ("SeasonalResidual", "CUSUM"))


@pytest.mark.slow
def test_slow_kinds_are_caught_earlier_by_forecast_or_drift_than_by_iforest() -> None:
    """The README's claim on one held-out seed (the README pools seeds 1-3)."""
    comp = run_default_comparison(seeds=(2,))
    for kind in ("latency_creep", "stale_index"):
        assert _caught_earlier_than_iforest(comp, kind, ("SeasonalResidual", "CUSUM", "Ensemble (max)")), kind
